"""``mirage ship RUN --out DIR``: a training run's model as a shippable folder.

Copies ``RUN/model`` (or a checkpoint of it) into ``DIR`` with the weights stored in float16
(half the bytes; loaders cast to the device's dtype), and beside them what a user needs to trust
it: ``data_recipe.json`` (the dataset header: seeds, counts, codec, the command), ``training_log.jsonl.gz``
(every step's loss and learning rate), ``loss.png``, ``run.json`` and ``weights.sha256`` (the hash the
tests check). Refuses to write into a folder that holds anything but a previous shipment.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, Optional

__all__ = ["ship", "weight_hashes", "add_arguments", "run"]

SHIP_FILES = ("model_index.json", "data_recipe.json", "training_log.jsonl.gz", "loss.png", "run.json", "weights.sha256",
              "MODEL_CARD.md")


def weight_hashes(folder: Path) -> Dict[str, str]:
    """sha256 of every .safetensors file under ``folder`` (relative path -> hex)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


def ship(run: Path, out: Path, checkpoint: Optional[str] = None, name: Optional[str] = None,
         codec: Optional[Path] = None) -> Dict:
    """``codec``: ship with this codec folder instead of the run's, e.g. a ``RefinedBlockCodec`` fitted on
    the run's data (``mirage data fit-deblocker``); its encoder must be the run's (same latents)."""
    import torch

    from ..world_model.model import MirageWorldModel
    from .trainer import RECIPES, TrainConfig, Trainer

    run, out = Path(run), Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "weights.sha256").is_file():
        raise ValueError(f"out: {out} is not empty and holds no previous shipment; refusing to write there")
    if checkpoint is not None:  # export a checkpoint (e.g. a milestone of a run still going)
        cfg_d = json.loads((run / "run.json").read_text())["config"]
        cfg_d.update(out=str(run), betas=tuple(cfg_d["betas"]) if cfg_d.get("betas") else None)
        cfg = TrainConfig(**cfg_d)
        from .checkpoint import load_checkpoint

        t = Trainer.__new__(Trainer)  # only what export needs: the model, codec, text settings, data header
        t.cfg, t.run = cfg, run
        from .dataset import MirageDataset

        t.data = MirageDataset(cfg.data)
        t.model, t.codec_folder, t.text = Trainer._build_model(t)
        opt = torch.optim.AdamW([p for p in t.model.parameters() if p.requires_grad], lr=cfg.resolved_lr,
                                betas=cfg.resolved_betas, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        ck = run / "checkpoints" / checkpoint
        state = json.loads((ck / "state.json").read_text())
        t.step = load_checkpoint(ck, t.model, opt, sched, state["fingerprint"])
        from .checkpoint import load_extra
        from .trainer import EMA

        t.ema = None
        if cfg.ema_decay > 0:
            t.ema = EMA(t.model, cfg.ema_decay)
            t.ema.load(load_extra(ck, "ema"), ck)
        src = t.export(run / f"model_{checkpoint}")
    else:
        src = run / "model"
        if not (src / "model_index.json").is_file():
            raise ValueError(f"run: {src} holds no exported model (is the run finished? "
                             f"use --checkpoint step_XXXXXXXX)")
    wm = MirageWorldModel.from_pretrained(src, device="cpu", dtype=torch.float32)
    if codec is not None:
        from ..world_model.codec import load_codec

        new = load_codec(codec)
        old = wm.codec
        same = all(hasattr(c, "basis") for c in (new, old)) and torch.equal(new.basis, old.basis) \
            and torch.equal(new.mean, old.mean) and new.scale == old.scale
        if not same:
            raise ValueError(f"codec: {codec} does not encode like the run's codec (another basis): the model's "
                             f"latents would not match")
        wm.codec = new
    wm.transformer.half()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    index = json.loads((src / "model_index.json").read_text())
    extra = {k: v for k, v in index.items() if k not in ("_class_name", "format", "version", "transformer", "codec",
                                                         "text", "sampler")}
    if name:
        extra["name"] = name
    extra["weights_dtype"] = "float16"
    recipe = json.loads((run / "run.json").read_text())["config"]["recipe"]
    wm.save_pretrained(tmp, save_backbone=RECIPES[recipe]["trains"] == "all", extra=extra)
    for f in ("data_recipe.json",):
        shutil.copy2(src / f, tmp / f)
    shutil.copy2(run / "run.json", tmp / "run.json")
    if (run / "loss.png").is_file():
        shutil.copy2(run / "loss.png", tmp / "loss.png")
    with open(run / "metrics.jsonl", "rb") as fi, gzip.open(tmp / "training_log.jsonl.gz", "wb", compresslevel=9) as fo:
        shutil.copyfileobj(fi, fo)
    if out.exists() and (out / "MODEL_CARD.md").is_file():
        shutil.copy2(out / "MODEL_CARD.md", tmp / "MODEL_CARD.md")  # the card is written by people; keep it
    hashes = weight_hashes(tmp)
    (tmp / "weights.sha256").write_text("".join(f"{h}  {p}\n" for p, h in hashes.items()))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {"out": str(out), "weights": hashes, "bytes": {p: (out / p).stat().st_size for p in hashes}}


def add_arguments(p) -> None:
    p.add_argument("run", help="a mirage train run folder")
    p.add_argument("--out", required=True, help="shipment folder (e.g. mirage_ros/models/mirage_small)")
    p.add_argument("--checkpoint", default=None, help="ship this checkpoint (step_XXXXXXXX) instead of the final model")
    p.add_argument("--name", default=None, help="model name recorded in model_index.json")
    p.add_argument("--codec", default=None, help="ship with this codec folder (same encoder, e.g. a fitted deblocker)")


def run(args) -> int:
    try:
        info = ship(Path(args.run), Path(args.out), checkpoint=args.checkpoint, name=args.name,
                    codec=Path(args.codec) if args.codec else None)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mirage ship: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    return 0
