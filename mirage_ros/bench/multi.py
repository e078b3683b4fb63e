"""`mirage bench multi`: several robots on one GPU host, one process (``mirage_multi_node``).

For each robot count N (``--robots``, default 1, 2, 4) it starts ``mirage_multi_node`` with N robot
namespaces sharing one loaded model (and, for the counts in ``--unshared``, with
``share_model:=false``: a model per robot, for comparison), then from a second rclpy process
(this one, the shared probe) per robot:
- waits until every robot publishes memory/stats, reads the process's resident memory (VmRSS,
  /proc/<pid>/status) -> ``rss_ready_mb``;
- gives each robot one observation of its own (the seed-0 room from a different pose per robot)
  -> ``rss_observed_mb``;
- sequential goals: one robot at a time, ``--frames`` frames each -> goal accepted -> first
  imagined frame at the probe, and the node's own total;
- concurrent goals: every robot at once (they take turns on the shared model one chunk at a
  time) -> the same per robot, and the wall time until all are done;
- ``rss_peak_mb`` (VmHWM) at the end.
Derived: resident memory per extra robot (shared and unshared), the model's parameter bytes, and
the latency cost of each extra robot under concurrent goals. Writes strict JSON and a PNG.

Models: ``--model shipped`` (the trained small model in mirage_ros/models/mirage_small, default
where present), ``small`` (its size, random weights), ``readout`` (no generative model).
All DDS traffic stays on loopback (the tests' UDP profile).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..util import HELP_RES, dumps_json, parse_resolution, write_json

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/multi_robot.json", help="output JSON path (a PNG is written beside "
                                                                         "it)")
    p.add_argument("--robots", default="1,2,4", help="robot counts to measure")
    p.add_argument("--unshared", default="2", help="robot counts also measured with a model per robot (share_model "
                                                   "false)")
    p.add_argument("--model", choices=("shipped", "small", "readout"), default=None,
                   help="shipped (default where present) | small (random weights, the shipped size) | readout")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the shipped model's 10; small: "
                                                           "2)")
    p.add_argument("--frames", type=int, default=4, help="frames per goal")
    p.add_argument("--goals", type=int, default=3, help="timed rounds: sequential (each robot in turn) and concurrent")
    p.add_argument("--resolution", type=parse_resolution, default=(128, 224),
                   help=HELP_RES.replace("256x448", "128x224"))
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the robots / a goal")


def _rss(pid: int) -> dict:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0]) / 1024.0  # kB -> MiB
    return vals


def _params(model: str, steps: int, frames: int) -> dict:
    from ..world_model.backend import SHIPPED_MODEL

    p = {"chunk_size": max(1, frames), "viz.stats_period": 0.2, "viz.cloud_period": 1.0,
         "imagined.feedback_frames": False,
         "goals.max_queued": 10}
    if model == "readout":
        p["backend"] = "readout"
    else:
        p.update({"backend": "mirage", "steps": int(steps)})
        if model == "shipped":
            p["weights_dir"] = str(SHIPPED_MODEL)
        else:
            p["mirage.config"] = "small"
    return p


def measure(probe, n: int, share: bool, params: dict, args, tmp: Path, log) -> dict:
    from .. import sim
    from ..ros.probe import interrupt, write_params

    tag = f"{os.getpid()}_{n}{'s' if share else 'u'}"
    robots = [f"/bench_multi_{tag}_r{i}" for i in range(n)]
    pf = write_params(tmp / f"params_{tag}.yaml", params)
    cmd = [sys.executable, "-m", "mirage_ros.ros.multi_node", "--ros-args", "-p",
           f"robots:=[{', '.join(r.strip('/') for r in robots)}]", "-p", f"share_model:={str(share).lower()}",
           "--params-file", str(pf)]
    logf = open(tmp / f"multi_{tag}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=str(ROOT))
    H, W = args.resolution
    row = {"robots": n, "share_model": share}
    try:
        t0 = time.perf_counter()
        for ns in robots:
            probe.watch(ns)
        for ns in robots:
            probe.stats(ns, timeout=args.timeout)
        row["startup_s"] = time.perf_counter() - t0
        time.sleep(1.0)
        row["rss_ready_mb"] = _rss(proc.pid)["VmRSS"]

        scene = sim.make_scene("room", 0)
        traj = sim.scene_trajectory(scene, "loop", 16)
        cams = [sim.default_camera(H, W).with_pose(E) for E in traj]
        for i, ns in enumerate(robots):  # each robot its own view (pose i of the loop)
            cam = cams[(2 * i) % len(cams)]
            frame = sim.render(scene, cam, 0.0)
            for k in range(200):
                probe.publish_set(ns, cam, frame, 10**9 + 1000 * i + k)
                try:
                    probe.wait_stats(ns, lambda s: s.num_points > 0, timeout=1.0)
                    break
                except TimeoutError:
                    continue
            else:
                raise TimeoutError(f"{ns}: no observation")
        time.sleep(1.0)
        row["rss_observed_mb"] = _rss(proc.pid)["VmRSS"]

        def goal(i, ns, stamp0):
            path = probe.path([cams[(2 * i + 1 + j) % len(cams)] for j in range(args.frames)],
                              [stamp0 + j * 10**8 for j in range(args.frames)])
            t_call = time.perf_counter()
            r = probe.imagine(ns, path, expect_frames=args.frames, chunk_size=params["chunk_size"],
                              timeout=args.timeout)
            res = r["result"]
            return {"robot": i, "status": int(res.status), "frames": len(r["images"]),
                    "first_frame_ms": 1e3 * (r["t_first_image"] - r["t_accept"]) if r["t_first_image"] else None,
                    "node_first_frame_ms": 1e3 * res.first_frame_latency, "node_total_ms": 1e3 * res.total_time,
                    "call_ms": 1e3 * (time.perf_counter() - t_call)}

        for i, ns in enumerate(robots):  # warm-up: each robot's first rollout pays one-time set-up
            probe.action_client(ns)
            goal(i, ns, (40 + i) * 10**9)
        row["sequential"] = [goal(i, ns, (100 + 10 * g + i) * 10**9) for g in range(args.goals)
                             for i, ns in enumerate(robots)]
        row["concurrent"], walls = [], []
        for g in range(args.goals):
            out = [None] * n
            t0 = time.perf_counter()
            threads = [threading.Thread(
                target=lambda i=i, ns=ns: out.__setitem__(i, goal(i, ns, (500 + 10 * g + i) * 10**9)))
                for i, ns in enumerate(robots)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.timeout)
            walls.append(1e3 * (time.perf_counter() - t0))
            if any(o is None for o in out):
                raise RuntimeError("a concurrent goal did not finish")
            row["concurrent"] += out
        row["concurrent_wall_ms_median"] = statistics.median(walls)
        m = _rss(proc.pid)
        row["rss_end_mb"], row["rss_peak_mb"] = m["VmRSS"], m["VmHWM"]
        for key in ("sequential", "concurrent"):
            rows = row[key]
            row[f"{key}_all_succeeded"] = all(r["status"] == 0 and r["frames"] == args.frames for r in rows)
            row[f"{key}_first_frame_ms_median"] = statistics.median(r["first_frame_ms"] for r in rows)
            row[f"{key}_first_frame_ms_max"] = max(r["first_frame_ms"] for r in rows)
            row[f"{key}_first_frame_ms_p90"] = sorted(r["first_frame_ms"] for r in rows)[int(0.9 * (len(rows) - 1))]
            row[f"{key}_node_total_ms_median"] = statistics.median(r["node_total_ms"] for r in rows)
        log(f"{n} robot(s), {'one shared model' if share else 'a model each'}: RSS ready {row['rss_ready_mb']:.0f} "
            f"MiB, "
            f"observed {row['rss_observed_mb']:.0f} MiB; first frame sequential "
            f"{row['sequential_first_frame_ms_median']:.0f} ms, "
            f"concurrent median {row['concurrent_first_frame_ms_median']:.0f} / max "
            f"{row['concurrent_first_frame_ms_max']:.0f} ms")
    finally:
        interrupt(proc, 30)
        logf.close()
        row["exit_code"] = proc.returncode
        row["log_tail"] = (tmp / f"multi_{tag}.log").read_text(errors="replace")[-600:]
    return row


def _model_bytes(model: str) -> int:
    """Parameter bytes of the model the robots share, as loaded (0 for readout)."""
    if model == "readout":
        return 0
    import torch

    from ..world_model.backend import SHIPPED_MODEL, make_backend

    if model == "shipped":
        b = make_backend("mirage", weights=str(SHIPPED_MODEL))
    else:
        b = make_backend("mirage", config="small")
    mods = [m for m in vars(b.model).values() if isinstance(m, torch.nn.Module)]
    return int(sum(p.numel() * p.element_size() for m in mods for p in m.parameters()))


def derive(rows: list) -> dict:
    shared = {r["robots"]: r for r in rows if r["share_model"]}
    unshared = {r["robots"]: r for r in rows if not r["share_model"]}
    out = {}
    ns = sorted(shared)
    if len(ns) > 1:
        a, b = ns[0], ns[-1]
        out["rss_per_extra_robot_mb_shared"] = (shared[b]["rss_observed_mb"] - shared[a]["rss_observed_mb"]) / (b - a)
        out["concurrent_first_frame_ms_per_extra_robot"] = (
            (shared[b]["concurrent_first_frame_ms_median"] - shared[a]["concurrent_first_frame_ms_median"]) / (b - a))
        out["concurrent_wall_ms_per_extra_robot"] = (
            (shared[b]["concurrent_wall_ms_median"] - shared[a]["concurrent_wall_ms_median"]) / (b - a))
    for k, r in unshared.items():
        if k in shared and 1 in shared and k > 1:
            extra = r["rss_observed_mb"] - shared[1]["rss_observed_mb"]
            out[f"rss_per_extra_robot_mb_unshared_at_{k}"] = extra / (k - 1)
            out[f"rss_saved_by_sharing_mb_at_{k}"] = r["rss_observed_mb"] - shared[k]["rss_observed_mb"]
    return out


def plot(result: dict, path: Path) -> None:
    from ..viz import plt

    pyplot = plt()
    rows = result["rows"]
    fig, ax = pyplot.subplots(1, 2, figsize=(12, 4))
    for share, style in ((True, "o-"), (False, "s--")):
        rs = sorted((r for r in rows if r["share_model"] == share), key=lambda r: r["robots"])
        if rs:
            ax[0].plot([r["robots"] for r in rs], [r["rss_observed_mb"] for r in rs], style,
                       label="one shared model" if share else "a model per robot")
    ax[0].set(xlabel="robots in one process", ylabel="resident memory (MiB)", title="process RSS after one observation "
                                                                                    "each")
    ax[0].legend(fontsize=8)
    rs = sorted((r for r in rows if r["share_model"]), key=lambda r: r["robots"])
    x = [r["robots"] for r in rs]
    ax[1].plot(x, [r["sequential_first_frame_ms_median"] for r in rs], "o-", label="one goal at a time")
    ax[1].plot(x, [r["concurrent_first_frame_ms_median"] for r in rs], "s-", label="all robots at once: median")
    ax[1].plot(x, [r["concurrent_first_frame_ms_max"] for r in rs], "^:", label="all robots at once: slowest")
    ax[1].plot(x, [r["concurrent_wall_ms_median"] for r in rs], "k--", lw=0.8, label="all robots at once: until all "
                                                                                     "done")
    ax[1].set(xlabel="robots (shared model)", ylabel="ms", title=f"goal accepted -> first frame ({result['frames']} "
                                                                 f"frames)")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"{result['model']} model, {result['resolution'][0]}x{result['resolution'][1]}, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def run(args) -> int:
    from .node import _loopback_env

    _loopback_env("udp")
    from ..ros.probe import Probe, ros_unavailable
    from ..world_model.backend import SHIPPED_MODEL

    why = ros_unavailable()
    if why is not None:
        print(f"mirage bench multi: ROS 2 is not usable here ({why})", file=sys.stderr)
        return 2
    model = args.model or ("shipped" if (SHIPPED_MODEL / "model_index.json").is_file() else "small")
    steps = args.steps or (10 if model == "shipped" else 2)
    params = _params(model, steps, args.frames)
    counts = [int(x) for x in args.robots.split(",") if x.strip()]
    unshared = {int(x) for x in args.unshared.split(",") if x.strip()}
    def log(m):
        print(m, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="mirage_bench_multi_"))
    probe = Probe("mirage_bench_multi_probe", threads=2)
    rows = []
    try:
        for n in counts:
            rows.append(measure(probe, n, True, params, args, tmp, log))
            if n in unshared and n > 1:
                rows.append(measure(probe, n, False, params, args, tmp, log))
    finally:
        probe.close()
    import torch

    result = {"model": model, "steps": steps, "frames": args.frames, "resolution": list(args.resolution),
              "node_params": params, "model_param_bytes": _model_bytes(model),
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "python": sys.version.split()[0]},
              "rows": rows, **derive(rows)}
    path = Path(args.json)
    write_json(path, result)
    plot(result, path.with_suffix(".png"))
    log(dumps_json({k: v for k, v in result.items() if k not in ("rows", "node_params", "machine")}))
    log(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
