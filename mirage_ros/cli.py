"""`mirage` command line: demo, benchmarks, replay.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so `mirage --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Benchmarks are nested under `mirage bench`.
COMMANDS = {
    "demo": ("mirage_ros.demo", "run the memory loop on the built-in synthetic scene (no weights, no GPU)"),
    "replay": ("mirage_ros.ros.replay", "run the node logic over a rosbag2 and write the results to an MCAP bag"),
    "data": ("mirage_ros.training.cli_data", "make a training dataset (LMDB) from the simulator or a rosbag2"),
    "train": ("mirage_ros.training.cli_train", "train a world model (flow matching; accelerate / torchrun)"),
    "ship": ("mirage_ros.training.ship", "package a training run's model (float16 weights, recipe, log, hashes)"),
}
BENCHMARKS = {
    "memory": ("mirage_ros.bench.memory", "latent memory vs RGB point-cloud cache (paper Fig. 5), scaling, growth"),
    "rollout": ("mirage_ros.bench.rollout", "world-model rollout timings per chunk and stage"),
    "perception": ("mirage_ros.bench.perception", "depth and mask providers, ms per frame; scale alignment"),
    "node": ("mirage_ros.bench.node", "ROS node latency, sustained input rate, PointCloud2 build time"),
    "train": ("mirage_ros.bench.train", "training throughput of mirage train: steps/s, samples/s, peak memory"),
    "imagine": ("mirage_ros.bench.imagine", "closed-loop ablation on held-out scenes: latent vs RGB cache vs no "
                                            "memory"),
    "multi": ("mirage_ros.bench.multi", "several robots in one mirage_multi_node sharing one model: RSS and latency "
                                        "per extra robot"),
    "network": ("mirage_ros.bench.network", "robot and GPU host in two network namespaces over a tc-tbf link: latency, "
                                            "fps, bytes on the wire"),
    "compression": ("mirage_ros.bench.compression", "CompressedImage (jpeg, png, compressedDepth): bytes per frame, "
                                                    "encode/decode ms"),
    "candidates": ("mirage_ros.bench.candidates", "K candidate trajectories per request with the shipped model: "
                                                  "seconds for K = 1, 4, 8"),
    "gpu": ("mirage_ros.bench.gpu", "full-size Mirage and Spatia layouts on a GPU (random bf16 weights): s/frame, peak "
                                    "memory, readout/update"),
    "spatia": ("mirage_ros.bench.spatia", "Spatia's RGB point-cloud memory vs the latent memory: bytes, insert and "
                                          "readout time, renderer, H.264 round trip"),
    "plan": ("mirage_ros.bench.plan", "planning by imagination on held-out scenes with a known answer: success rate "
                                      "per arm"),
}


def _add(sub, name, module, help_):
    p = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(_module=module)
    try:
        importlib.import_module(module).add_arguments(p)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("mirage_ros"):
            p.set_defaults(_missing=str(exc))
        else:
            raise
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mirage", description="Mirage latent spatial memory for video world models")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        _add(sub, name, module, help_)
    bench = sub.add_parser("bench", help="benchmarks that write JSON and a PNG plot")
    bsub = bench.add_subparsers(dest="benchmark", required=True)
    for name, (module, help_) in BENCHMARKS.items():
        _add(bsub, name, module, help_)
    return parser


def command_table(parser: argparse.ArgumentParser = None) -> str:
    """Every subcommand of the argparse tree (``build_parser``) and its help, as a Markdown table
    (docs/cli.md; ``scripts/gen_docs.py`` writes it, a test keeps it in sync)."""
    rows = ["| command | what it does |", "| --- | --- |"]

    def walk(p, prefix):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, child in action.choices.items():
                    if any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
                        walk(child, f"{prefix}{name} ")
                    else:
                        rows.append(f"| `{prefix}{name}` | {helps.get(name) or ''} |")

    walk(parser or build_parser(), "mirage ")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"mirage: this command is not available in this build ({args._missing})", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
