"""Training checkpoints in safetensors + JSON (never pickle): model, optimiser, scheduler, RNG.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXXX/`` written to a temporary name and
renamed when complete, so an interrupted save never leaves a half checkpoint behind:

- ``trainable.safetensors``: the trainable parameters (the frozen base is rebuilt from its source);
- ``optimizer.safetensors``: AdamW's per-parameter state, keyed by parameter name;
- ``state.json``: step, scheduler state, optimiser hyper-parameters, the run's fingerprint;
- ``rng.safetensors``: torch's CPU (and CUDA) generator states;
- ``<name>.safetensors`` for each ``extra`` tensor group (e.g. ``ema``: the weights' moving average).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["TrainCheckpointError", "save_checkpoint", "load_checkpoint", "load_extra", "list_checkpoints",
           "latest_checkpoint"]


class TrainCheckpointError(ValueError):
    """A training checkpoint is missing, corrupt or belongs to another run; names the file."""


def _save(tensors: Dict[str, torch.Tensor], path: Path, meta: Optional[Dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata=meta or {"format": "pt"})


def _load(path: Path) -> Dict[str, torch.Tensor]:
    from ..util import load_safetensors

    return load_safetensors(path, TrainCheckpointError, "checkpoint")


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, names: List[str]) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Per-parameter state as ``{name}::{key}`` tensors (``names`` in parameter order), and the
    JSON-able hyper-parameters of each group."""
    sd = optimizer.state_dict()
    tensors = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{names[i]}::{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}


def tensors_to_optimizer(optimizer: torch.optim.Optimizer, names: List[str], tensors: Dict[str, torch.Tensor],
                         info: Dict, source: Path) -> None:
    sd = optimizer.state_dict()
    index = {n: i for i, n in enumerate(names)}
    state: Dict[int, Dict] = {}
    for key, v in tensors.items():
        name, _, k = key.partition("::")
        if name not in index:
            raise TrainCheckpointError(f"checkpoint: {source}: optimiser state for unknown parameter {name!r}")
        state.setdefault(index[name], {})[k] = v
    groups = info.get("param_groups", [])
    if len(groups) != len(sd["param_groups"]):
        raise TrainCheckpointError(f"checkpoint: {source}: {len(groups)} parameter groups, the optimiser has "
                                   f"{len(sd['param_groups'])}")
    for g, cur in zip(groups, sd["param_groups"]):
        if sorted(g["params"]) != sorted(cur["params"]):
            raise TrainCheckpointError(f"checkpoint: {source}: parameter groups differ from this run's")
        for k in ("betas",):
            if k in g:
                g[k] = tuple(g[k])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(run: Path, step: int, model: torch.nn.Module, optimizer, scheduler, fingerprint: Dict,
                    keep: int = 3, extra: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> Path:
    """Write ``run/checkpoints/step_{step}`` atomically; keep the newest ``keep``; return its path.
    ``extra``: named tensor groups written beside the model (``load_extra`` reads them)."""
    root = Path(run) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        return _save_into(tmp, final, root, run, step, model, optimizer, scheduler, fingerprint, keep, extra)
    except BaseException:  # a full disk, a signal: no .tmp_step_* folder is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_into(tmp: Path, final: Path, root: Path, run, step: int, model, optimizer, scheduler, fingerprint: Dict,
               keep: int, extra) -> Path:
    tmp.mkdir()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in params]
    _save({n: p for n, p in params}, tmp / "trainable.safetensors")
    opt_t, opt_info = optimizer_to_tensors(optimizer, names)
    _save(opt_t, tmp / "optimizer.safetensors")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    _save(rng, tmp / "rng.safetensors")
    for name, tensors in (extra or {}).items():
        if not name.isidentifier() or name in ("trainable", "optimizer", "rng"):
            raise ValueError(f"extra: {name!r} is not a usable checkpoint group name")
        _save(tensors, tmp / f"{name}.safetensors")
    state = {"step": int(step), "scheduler": scheduler.state_dict(), "optimizer": opt_info, "fingerprint": fingerprint,
             "trainable": names}
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (root / "latest").write_text(final.name + "\n")
    for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run: Path) -> List[Path]:
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(run: Path) -> Optional[Path]:
    ckpts = list_checkpoints(run)
    return ckpts[-1] if ckpts else None


def load_extra(path: Path, name: str) -> Optional[Dict[str, torch.Tensor]]:
    """The ``extra`` tensor group ``name`` of checkpoint ``path``; None when it was saved without one."""
    f = Path(path) / f"{name}.safetensors"
    return _load(f) if f.is_file() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, fingerprint: Dict) -> int:
    """Restore model (trainable parameters), optimiser, scheduler and RNG from ``path``; returns
    the step. Refuses a checkpoint of a different run (``fingerprint``) before changing anything."""
    path = Path(path)
    sp = path / "state.json"
    if not sp.is_file():
        raise TrainCheckpointError(f"checkpoint: {sp} is missing")
    try:
        state = json.loads(sp.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainCheckpointError(f"checkpoint: {sp} is corrupt ({exc})") from None
    _check_state(state, sp)
    theirs = state.get("fingerprint", {})
    diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
    if diff:
        raise TrainCheckpointError(f"checkpoint: {path} belongs to a different run configuration (differs in {diff}); "
                                   "resume with the same --config, --recipe, --data and model "
                                   "settings, or start a new --out")
    trainable = _load(path / "trainable.safetensors")
    opt_t = _load(path / "optimizer.safetensors")
    rng = _load(path / "rng.safetensors")
    params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    missing, unexpected = sorted(set(params) - set(trainable)), sorted(set(trainable) - set(params))
    if missing or unexpected:
        raise TrainCheckpointError(f"checkpoint: {path / 'trainable.safetensors'}: missing {missing[:5]}, unexpected "
                                   f"{unexpected[:5]}")
    bad = [n for n in params if tuple(trainable[n].shape) != tuple(params[n].shape)]
    if bad:
        raise TrainCheckpointError(f"checkpoint: {path / 'trainable.safetensors'}: shape mismatch for {bad[:5]}")
    _check_tensors(trainable, opt_t, rng, params, state, path)  # everything, before anything changes
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(trainable[n])
    tensors_to_optimizer(optimizer, list(params), opt_t, state.get("optimizer", {}), path)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    return int(state["step"])


def _check_state(state, sp: Path) -> None:
    """``state.json`` as ``save_checkpoint`` writes it, or ``TrainCheckpointError`` naming the file and
    the field: a JSON object; ``step`` a non-negative integer; ``scheduler`` a mapping whose numbers
    are finite (``base_lrs`` / ``_last_lr`` lists of them, ``last_epoch`` / ``_step_count``
    integers); ``optimizer.param_groups`` mappings with a finite ``lr``; ``fingerprint`` a mapping."""
    import math

    def bad(field, why):
        raise TrainCheckpointError(f"checkpoint: {sp}: {field} {why}")

    def finite(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(state, dict):
        bad("the file", f"holds a JSON {type(state).__name__}, expected an object")
    step = state.get("step")
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        bad("step", f"is {step!r}, expected a non-negative integer")
    if not isinstance(state.get("fingerprint", {}), dict):
        bad("fingerprint", "is not an object")
    sch = state.get("scheduler")
    if not isinstance(sch, dict):
        bad("scheduler", "is missing" if sch is None else f"is a {type(sch).__name__}, expected an object")
    for key in ("base_lrs", "_last_lr"):
        if key in sch and not (isinstance(sch[key], list) and all(finite(x) for x in sch[key])):
            bad(f"scheduler.{key}", f"is {sch[key]!r}, expected a list of finite numbers")
    for key in ("last_epoch", "_step_count"):
        if key in sch and not (isinstance(sch[key], int) and not isinstance(sch[key], bool)):
            bad(f"scheduler.{key}", f"is {sch[key]!r}, expected an integer")
    opt = state.get("optimizer", {})
    groups = (state.get("optimizer") or {}).get("param_groups", []) if isinstance(opt, dict) else None
    if not isinstance(groups, list):
        bad("optimizer.param_groups", "is not a list")
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list):
            bad(f"optimizer.param_groups[{i}]", "is not an object with a params list")
        for key in ("lr", "weight_decay", "eps"):
            if key in g and not finite(g[key]):
                bad(f"optimizer.param_groups[{i}].{key}", f"is {g[key]!r}, expected a finite number")
        if "betas" in g and not (isinstance(g["betas"],
                                            list) and len(g["betas"]) == 2 and all(finite(x) for x in g["betas"])):
            bad(f"optimizer.param_groups[{i}].betas", f"is {g['betas']!r}, expected two finite numbers")


def _check_tensors(trainable, opt_t, rng, params, state, path: Path) -> None:
    """Optimiser state of each parameter has the parameter's shape (AdamW's exp_avg / exp_avg_sq;
    ``step`` one number), everything finite; the RNG states are what torch can restore."""
    for key, v in opt_t.items():
        name, _, k = key.partition("::")
        p = params.get(name)
        if p is None:
            raise TrainCheckpointError(f"checkpoint: {path / 'optimizer.safetensors'}: optimiser state for unknown "
                                       f"parameter {name!r}")
        if k == "step":
            if v.numel() != 1:
                raise TrainCheckpointError(f"checkpoint: {path / 'optimizer.safetensors'}: {key} has shape "
                                           f"{tuple(v.shape)}, expected one number")
        elif tuple(v.shape) != tuple(p.shape):
            raise TrainCheckpointError(f"checkpoint: {path / 'optimizer.safetensors'}: {key} has shape "
                                       f"{tuple(v.shape)}, "
                                       f"the parameter {tuple(p.shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise TrainCheckpointError(f"checkpoint: {path / 'optimizer.safetensors'}: {key} holds NaN or inf")
    for n, t in trainable.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainCheckpointError(f"checkpoint: {path / 'trainable.safetensors'}: {n} holds NaN or inf")
    cpu = rng.get("torch_cpu")
    ref = torch.get_rng_state()
    if cpu is None or cpu.dtype != ref.dtype or tuple(cpu.shape) != tuple(ref.shape):
        raise TrainCheckpointError(f"checkpoint: {path / 'rng.safetensors'}: torch_cpu is "
                                   f"{None if cpu is None else (cpu.dtype, tuple(cpu.shape))}, expected {ref.dtype} "
                                   f"{tuple(ref.shape)}")
    try:  # torch refuses some byte patterns: try on a scratch generator, never on the global one
        torch.Generator().set_state(cpu)
    except (RuntimeError, ValueError) as exc:
        raise TrainCheckpointError(f"checkpoint: {path / 'rng.safetensors'}: torch_cpu is not a "
                                   f"generator state ({exc})") from None
