"""``mirage data sim | bag | fit-codec`` and ``mirage train``: argument parsing only.

The work lives in ``sim_data``, ``bag_data``, ``codec_fit`` and ``trainer``; errors that a user can
fix (bad paths, foreign datasets, mismatched runs) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..util import parse_resolution as _resolution

# -- mirage data -----------------------------------------------------------------------------------

def add_data_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True)

    s = sub.add_parser("sim", help="clips from the procedural scenes", description="Training clips from the procedural "
                       "scenes: closed loops and forward paths, memory built as Algorithm 1 builds it.")
    s.add_argument("--out", required=True, help="dataset folder (LMDB)")
    s.add_argument("--scenes", type=int, required=True, help="number of clips (one scene each)")
    s.add_argument("--frames", type=int, default=41, help="RGB frames per clip (default 41: 5 chunks of 8 new frames)")
    s.add_argument("--resolution", type=_resolution, default=(128, 224), help="HxW (default 128x224)")
    s.add_argument("--seed", type=int, default=0, help="first scene seed (clips use seed, seed+1, ...)")
    s.add_argument("--scene", choices=["room", "outdoor", "mixed"], default="mixed")
    _codec_args(s)
    s.add_argument("--memory", choices=["latent", "rgb"], default="latent",
                   help="latent: Mirage's latent memory (default); rgb: the RGB point-cloud cache (render + encode)")
    s.add_argument("--window-stride", type=int, default=1, help="a window every N latents (default 1)")
    s.add_argument("--workers", type=int, default=1, help="rendering processes (default 1)")
    s.add_argument("--overwrite", action="store_true", help="replace a dataset this tool wrote at --out")

    b = sub.add_parser("bag", help="clips from a rosbag2 (MCAP or sqlite3)", description="A rosbag2 of a robot or "
                       "simulator -> the same dataset format, through the node's pairing and conversions.")
    b.add_argument("bag", help="rosbag2 folder or .mcap file")
    b.add_argument("--out", required=True, help="dataset folder (LMDB)")
    b.add_argument("--namespace", default="/", help="namespace of the input topics (default /; "
                                                    "the demo's bag: /ground_truth)")
    b.add_argument("--topic", action="append", default=[], metavar="KIND=TOPIC",
                   help="image, camera_info, pose, odom, depth, labels (default: the "
                        "node's topic names in --namespace)")
    b.add_argument("--frames", type=int, default=41, help="RGB frames per clip (default 41)")
    b.add_argument("--clip-stride", type=int, default=None, help="frames between clip starts (default: --frames)")
    b.add_argument("--depth", choices=["bag", "da3"], default="bag",
                   help="depth from the bag's depth topic (default) or Depth Anything 3 (--depth-weights)")
    b.add_argument("--depth-weights", default=None, help="Depth Anything 3 weights folder for --depth da3")
    b.add_argument("--tolerance", type=float, default=0.0, help="pairing tolerance in seconds (default exact stamps)")
    b.add_argument("--resolution", type=_resolution, default=None, help="resize frames to HxW (default: the bag's)")
    _codec_args(b)
    b.add_argument("--memory", choices=["latent", "rgb"], default="latent")
    b.add_argument("--overwrite", action="store_true")

    r = sub.add_parser("rebuild", help="the same clips through another memory (e.g. the RGB cache) or codec",
                       description="Re-read a dataset's clips (frames, depth, masks, cameras) through another memory "
                                   "kind or codec without re-rendering: the RGB point-cloud cache arm of the ablation.")
    r.add_argument("src", help="source dataset folder")
    r.add_argument("--out", required=True)
    r.add_argument("--memory", choices=["latent", "rgb"], default="rgb")
    r.add_argument("--codec-weights", default=None, help="codec folder (default: the source dataset's)")
    r.add_argument("--window-stride", type=int, default=None, help="a window every N latents (default: the source's)")
    r.add_argument("--clips", type=int, default=None, help="only the first N clips (default: all)")
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--overwrite", action="store_true")

    f = sub.add_parser("fit-codec", help="fit the 48-channel block-PCA codec on simulator frames",
                       description="Fit LinearBlockCodec on rendered training frames and compare it with the thumbnail "
                                   "codec on held-out frames (PSNR), JSON + PNG.")
    f.add_argument("--out", required=True, help="codec folder to write")
    f.add_argument("--scenes", type=int, default=60, help="training scenes to sample frames from (default 60)")
    f.add_argument("--frames-per-scene", type=int, default=7)
    f.add_argument("--resolution", type=_resolution, default=(128, 224))
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--channels", type=int, default=48)
    f.add_argument("--json", default=None, help="comparison JSON (default OUT/fit.json)")

    d = sub.add_parser("fit-deblocker", help="learn a convolutional decoder for a dataset's block-PCA codec",
                       description="RefinedBlockCodec: the dataset's linear-block encoder with a learned decoder that "
                                   "sees across block borders (seams) and smooths generated "
                                   "latents; JSON + PNG in OUT.")
    d.add_argument("data", nargs="?", default=None,
                   help="dataset folder whose codec is linear-block (optional with --rollouts and --init)")
    d.add_argument("--out", required=True, help="codec folder to write")
    d.add_argument("--steps", type=int, default=3000)
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps (default 0)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--hidden", type=int, default=None, help="deblocker width (default 48; not with --init)")
    d.add_argument("--blocks", type=int, default=None, help="deblocker depth (default 4; not with --init)")
    d.add_argument("--perturb-prob", type=float, default=0.5,
                   help="share of clean batches whose latents are perturbed like a model's (default 0.5)")
    d.add_argument("--init", default=None, help="refined codec folder to fine-tune (its deblocker is the start)")
    d.add_argument("--rollouts", default=None,
                   help="`mirage data rollout-pairs` folder: a model's generated latents with the true frames")
    d.add_argument("--rollout-prob", type=float, default=0.5, help="share of batches from --rollouts (default 0.5)")
    d.add_argument("--validation-rollouts", default=None,
                   help="rollout pairs of validation seeds: the best step decodes them nearest the truth")
    d.add_argument("--imagined-of", default=None,
                   help="refined codec folder: write it to --out with this fit as its imagination decoder "
                        "(decodes what the memory did not supply)")
    d.add_argument("--imagined-loss", action="store_true",
                   help="rollout batches count only the pixels outside their memory cells")
    d.add_argument("--threads", type=int, default=None)

    q = sub.add_parser("rollout-pairs", help="a world model's generated latents beside the true frames",
                       description="Roll a model out (default settings, simulator depth) on simulator scenes and "
                                   "store each generated latent with the true frame at its pose (safetensors per "
                                   "scene), for `mirage data fit-deblocker --rollouts`.")
    q.add_argument("--model", required=True, help="Mirage model folder")
    q.add_argument("--out", required=True, help="folder to write")
    q.add_argument("--seeds", required=True, help="scene seeds: 2000-2199 | 2000,2001 (training seeds, or the "
                                                  "validation block for --validation-rollouts; never held-out)")
    q.add_argument("--frames", type=int, default=41)
    q.add_argument("--trajectory", default="source", choices=["source", "loop"],
                   help="the scene's own camera path (default) or a closed loop (as the benchmark)")
    q.add_argument("--threads", type=int, default=None)


def _codec_args(p) -> None:
    p.add_argument("--codec", default="thumbnail", choices=["thumbnail", "linear-block", "wan"],
                   help="latent codec (default thumbnail; linear-block and wan need --codec-weights)")
    p.add_argument("--codec-weights", default=None, help="codec folder (a fitted linear-block codec or a Wan2.2 VAE)")


def run_data(args) -> int:
    from .dataset import DatasetError

    try:
        if args.data_command == "sim":
            from .clips import ClipSpec
            from .sim_data import generate

            _need_weights(args)
            header = generate(args.out, args.scenes, args.frames, args.resolution, seed=args.seed, scene=args.scene,
                              codec_name=args.codec, codec_folder=args.codec_weights,
                              spec=ClipSpec(memory=args.memory, window_stride=args.window_stride),
                              workers=args.workers, overwrite=args.overwrite, command=" ".join(sys.argv))
        elif args.data_command == "rebuild":
            from .sim_data import rebuild

            header = rebuild(args.src, args.out, memory=args.memory, codec_folder=args.codec_weights,
                             workers=args.workers, overwrite=args.overwrite, command=" ".join(sys.argv),
                             window_stride=args.window_stride, clips=args.clips)
        elif args.data_command == "fit-deblocker":
            from .deblocker_fit import fit_deblocker

            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            size = {k: v for k, v in (("hidden", args.hidden), ("blocks", args.blocks)) if v is not None}
            header = fit_deblocker(args.data, args.out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                                   warmup=args.warmup, perturb_prob=args.perturb_prob, init=args.init,
                                   rollouts=args.rollouts, rollout_prob=args.rollout_prob,
                                   validation_rollouts=args.validation_rollouts, imagined_of=args.imagined_of,
                                   imagined_loss=args.imagined_loss,
                                   **size)
        elif args.data_command == "rollout-pairs":
            from ..bench.evaluation import parse_seeds
            from .rollout_pairs import collect_rollout_pairs
            from .seeds import HELD_OUT_BASE, HELD_OUT_COUNT

            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            seeds = parse_seeds(args.seeds, 0)
            if any(HELD_OUT_BASE <= s < HELD_OUT_BASE + HELD_OUT_COUNT for s in seeds):
                raise ValueError(f"seeds: {args.seeds} reaches the held-out block [{HELD_OUT_BASE}, "
                                 f"{HELD_OUT_BASE + HELD_OUT_COUNT}): those are for `mirage bench imagine` only")
            header = collect_rollout_pairs(args.model, args.out, seeds, frames=args.frames,
                                           trajectory=args.trajectory)
        elif args.data_command == "bag":
            from .bag_data import generate_from_bag

            _need_weights(args)
            header = generate_from_bag(args)
        else:
            from .codec_fit import fit_codec

            header = fit_codec(args)
    except (DatasetError, ValueError, OSError) as exc:  # OSError: a full disk (the dataset folder is removed)
        print(f"mirage data: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "lmdb":
            raise
        print(f"mirage data: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps({k: header[k] for k in ("counts", "codec", "resolution", "memory") if k in header}))
    return 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return " ".join(str(exc).split())


def _need_weights(args) -> None:
    if args.codec in ("linear-block", "wan") and not args.codec_weights:
        raise ValueError(f"codec: {args.codec!r} needs --codec-weights (a codec folder)")


# -- mirage train ----------------------------------------------------------------------------------

def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .trainer import RECIPES

    p.add_argument("--config", choices=["tiny", "small", "full"], default="small")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="scratch")
    p.add_argument("--data", required=True, help="dataset folder written by `mirage data`")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, loss.png, model/)")
    p.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--batch", type=int, default=4, help="samples per process per step (default 4)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift", type=float, default=3.0, help="flow shift of the noise-level "
                                                            "distribution (and of sampling)")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--readout-dropout", type=float, default=0.15)
    p.add_argument("--context-noise", type=float, default=0.1)
    p.add_argument("--readout-noise", type=float, default=0.1)
    p.add_argument("--text-dropout", type=float, default=0.2)
    p.add_argument("--pin-prob", type=float, default=0.0,
                   help="fraction of samples trained as pinned sampling sees them: visible "
                        "target cells = noised readout")
    p.add_argument("--pin-until", type=float, default=0.0, help="the exported sampler's pinning schedule (0 = off)")
    p.add_argument("--visible-weight", type=float, default=1.0, help="loss weight of readout-visible target cells")
    p.add_argument("--context-readout-prob", type=float, default=0.0,
                   help="per context frame: its visible cells replaced by its readout (as generated frames are)")
    p.add_argument("--ema-decay", type=float, default=0.0, help="EMA of the weights, exported (0 = off; e.g. 0.999)")
    p.add_argument("--context-sigma-max", type=float, default=0.0,
                   help="noise augmentation of context frames: sigma ~ U(0, max), given as their timestep (0 = off)")
    p.add_argument("--context-sigma", type=float, default=0.0, help="the exported sampler's context noise level")
    p.add_argument("--refiner-channels", type=int, default=0,
                   help="a residual latent-grid convolution of this width after the output head (0 = none)")
    p.add_argument("--weights", default=None, help="Wan2.2-TI2V-5B folder (stage1/stage2 with --config full)")
    p.add_argument("--init", default=None, help="start from a model folder (e.g. a stage1 run's model/)")
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto")
    p.add_argument("--distributed", choices=["ddp", "fsdp"], default="ddp", help="multi-process engine (accelerate)")
    p.add_argument("--sampler-steps", type=int, default=10, help="UniPC steps the exported model samples with")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true")


def run_train(args) -> int:
    import torch

    from .checkpoint import TrainCheckpointError
    from .dataset import DatasetError
    from .trainer import TrainConfig, Trainer, TrainError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = TrainConfig(config=args.config, recipe=args.recipe, data=args.data, out=args.out, steps=args.steps,
                          batch=args.batch, lr=args.lr, warmup=args.warmup, seed=args.seed, shift=args.shift,
                          checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                          readout_dropout=args.readout_dropout, context_noise=args.context_noise,
                          readout_noise=args.readout_noise, text_dropout=args.text_dropout, weights=args.weights,
                          init=args.init, lora_rank=args.lora_rank, gradient_checkpointing=args.gradient_checkpointing,
                          mixed_precision=args.mixed_precision, distributed=args.distributed,
                          sampler_steps=args.sampler_steps, pin_prob=args.pin_prob, pin_until=args.pin_until,
                          visible_weight=args.visible_weight, context_readout_prob=args.context_readout_prob,
                          ema_decay=args.ema_decay, refiner_channels=args.refiner_channels,
                          context_sigma_max=args.context_sigma_max, context_sigma=args.context_sigma)
        trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
        summary = trainer.fit()
    except (TrainError, TrainCheckpointError, DatasetError, OSError) as exc:  # OSError: a full disk
        print(f"mirage train: {_one_line(exc)}", file=sys.stderr)
        return 2
    if trainer.acc.is_main_process:
        print(json.dumps(summary))
        if summary["interrupted"]:
            print(f"mirage train: stopped at step {summary['step']}; checkpoint saved. Continue with the same command "
                  "and --resume.", file=sys.stderr)
    return 0


