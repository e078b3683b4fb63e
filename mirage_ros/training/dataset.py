"""The training dataset: an LMDB of clips, everything the trainer needs precomputed.

The trainer never renders, encodes or reads a memory: a clip carries, per latent frame, the codec
latent, metric depth, K, world_to_camera and the dynamic/sky exclusion mask, and per *window* (a
chunk of ``chunk_latents`` targets starting at latent ``a``, as Algorithm 1 would generate it) the
memory readout + visibility mask of every conditioned frame and the reference frames, exactly as
inference sees them when the memory holds latents 0..a (teacher forcing: the update inserts the
true frames where inference inserts its own).

Keys (values are safetensors bytes unless noted):

- ``header`` (JSON): format, version, codec config, resolution, latent grid, frame roles, memory
  kind, seeds (train and held out), counts, the command that made it;
- ``clip/{c:06d}/meta`` (JSON): source (scene kind + seed + trajectory, or bag + topics), number of
  latents, temporal stride, K (3, 3) and world_to_camera (L, 4, 4) per latent frame;
- ``clip/{c:06d}/frame/{j:04d}``: ``latent`` (C, h, w) float16, ``depth`` (H, W) float16 metres
  (+inf sky, NaN unknown), ``exclude`` (H, W) uint8, ``rgb`` (H, W, 3) uint8 (the frame itself, so
  another codec can be fitted without re-rendering);
- ``clip/{c:06d}/window/{a:04d}``: ``frames`` (T+P,) int32 (targets a..a+T-1, then preceding),
  ``readouts`` (T+P, C, h, w) float16, ``masks`` (T+P, h, w) uint8, ``references`` (R,) int32;
- ``index``: ``windows`` (N, 4) int32 rows (clip, a, P, R), written last (a dataset without it is
  incomplete).

Latent frame j stands for RGB frame ``temporal_stride * j`` (1 for image codecs: one latent per
frame; 4 for the Wan2.2 VAE).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["FORMAT", "VERSION", "DatasetError", "DatasetWriter", "MirageDataset", "Window", "clip_key", "frame_key",
           "window_key"]

FORMAT = "mirage_ros.dataset"
VERSION = 1
MAP_SIZE = 1 << 40  # 1 TiB of address space; the file grows only as written (sparse)

PathLike = Union[str, Path]


class DatasetError(ValueError):
    """A dataset is missing, foreign, incomplete or corrupt; the message names the key and clip."""


def clip_key(c: int) -> str:
    return f"clip/{c:06d}/meta"


def frame_key(c: int, j: int) -> str:
    return f"clip/{c:06d}/frame/{j:04d}"


def window_key(c: int, a: int) -> str:
    return f"clip/{c:06d}/window/{a:04d}"


def _pack(tensors: Dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def _unpack(data: bytes, key: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(bytes(data))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt bytes
        raise DatasetError(f"{key}: not a readable safetensors record ({exc})") from None


@dataclass(frozen=True)
class Window:
    """One training sample's address: clip, first target latent ``a``, preceding P, references R."""

    clip: int
    a: int
    num_preceding: int
    num_references: int

    @property
    def bucket(self) -> Tuple[int, int]:
        """Samples batch together when they have the same frame roles (sequence length)."""
        return self.num_preceding, self.num_references


class DatasetWriter:
    """Writes a dataset folder: ``header`` first (marked incomplete), clips, then ``index``.

    Refuses a folder that already holds anything unless ``overwrite``; an interrupted write leaves a
    dataset without ``index`` that ``MirageDataset`` refuses with a clear message.
    """

    def __init__(self, path: PathLike, header: Dict, overwrite: bool = False):
        import lmdb

        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise DatasetError(f"out: {self.path} exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()):
            if not overwrite:
                raise DatasetError(f"out: {self.path} is not empty (pass --overwrite to replace a "
                                   f"dataset written by this tool)")
            if not (self.path / "data.mdb").is_file():
                raise DatasetError(f"out: {self.path} is not empty and is not a mirage_ros "
                                   f"dataset; refusing to replace it")
            _check_is_dataset(self.path)
            for name in ("data.mdb", "lock.mdb"):
                (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.path), map_size=MAP_SIZE, subdir=True, lock=True)
        self.header = dict(header, format=FORMAT, version=VERSION, complete=False)
        self.windows: List[Tuple[int, int, int, int]] = []
        self.num_clips = 0
        self.num_frames = 0
        self._put({"header": json.dumps(self.header).encode()})

    def _put(self, items: Dict[str, bytes]) -> None:
        with self.env.begin(write=True) as txn:
            for k, v in items.items():
                txn.put(k.encode(), v)

    def add_clip(self, meta: Dict, frames: Sequence[Dict[str, torch.Tensor]], windows: Sequence[Dict]) -> int:
        """Add one clip: ``meta`` (JSON), per-frame tensors, per-window dicts with ``a``, ``frames``,
        ``readouts``, ``masks``, ``references``. Returns the clip index."""
        c = self.num_clips
        items = {clip_key(c): json.dumps(dict(meta, num_latents=len(frames))).encode()}
        for j, f in enumerate(frames):
            items[frame_key(c, j)] = _pack(f)
        for w in windows:
            a = int(w["a"])
            items[window_key(c, a)] = _pack({k: w[k] for k in ("frames", "readouts", "masks", "references")})
            P = len(w["frames"]) - int(self.header["chunk_latents"])
            self.windows.append((c, a, P, len(w["references"])))
        self._put(items)
        self.num_clips += 1
        self.num_frames += len(frames)
        return c

    def abort(self) -> None:
        """Give up: close the database and remove what this writer wrote (the LMDB files, the codec
        folder beside them, the folder itself when it is left empty). An interrupted write (a bad
        frame, a full disk) leaves nothing behind."""
        import shutil

        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        for name in ("data.mdb", "lock.mdb"):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / "codec", ignore_errors=True)
        try:
            self.path.rmdir()
        except OSError:
            pass

    def close(self, **extra) -> Dict:
        """Write the index and the final header; returns the header."""
        idx = torch.tensor(self.windows, dtype=torch.int32).view(-1, 4)
        self.header.update(extra, complete=True,
                           counts={"clips": self.num_clips, "latent_frames": self.num_frames,
                                   "windows": len(self.windows)})
        self._put({"index": _pack({"windows": idx}), "header": json.dumps(self.header).encode()})
        self.env.sync()
        self.env.close()
        return self.header


def _check_is_dataset(path: Path) -> None:
    import lmdb

    try:
        env = _open_readonly(path)
    except lmdb.Error as exc:
        raise DatasetError(f"{path}: not an LMDB dataset ({exc})") from None
    with env.begin() as txn:
        raw = txn.get(b"header")
    _release(path)
    try:
        head = json.loads(raw) if raw is not None else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        head = {}
    if head.get("format") != FORMAT:
        raise DatasetError(f"out: {path} holds an LMDB that is not a mirage_ros dataset; refusing to replace it")


_OPEN: Dict[str, list] = {}  # realpath -> [env, users]: LMDB forbids opening one environment twice in a process


def _open_readonly(path: Path):
    import lmdb

    key = str(path.resolve())
    if key in _OPEN:
        _OPEN[key][1] += 1
        return _OPEN[key][0]
    env = lmdb.open(key, readonly=True, lock=False, subdir=True, readahead=False)
    _OPEN[key] = [env, 1]
    return env


def _release(path: Path) -> None:
    key = str(path.resolve())
    entry = _OPEN.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        entry[0].close()
        del _OPEN[key]


class MirageDataset:
    """Read a dataset folder (see module docstring). Validated on open: header, format, version,
    completeness, and that every indexed clip has its meta; records are checked when read."""

    REQUIRED_HEADER = ("codec", "resolution", "latent_grid", "channels", "chunk_latents", "temporal_stride", "memory")

    def __init__(self, path: PathLike):
        import lmdb

        self.path = Path(path)
        if not self.path.is_dir():
            raise DatasetError(f"data: {self.path} is not a folder" if self.path.exists() else f"data: {self.path} "
                                                                                               f"does not exist")
        if not (self.path / "data.mdb").is_file():
            raise DatasetError(f"data: {self.path} holds no LMDB (data.mdb is missing)")
        try:
            self.env = _open_readonly(self.path)
        except lmdb.Error as exc:
            raise DatasetError(f"data: {self.path} is not a readable LMDB ({exc})") from None
        self._closed = False
        try:
            self._validate()
        except Exception:
            self.close()
            raise

    def _validate(self) -> None:
        raw = self._get("header", required=False)
        if raw is None:
            raise DatasetError(f"header: {self.path} has no 'header' key: not a mirage_ros "
                               f"dataset (an empty or foreign LMDB)")
        try:
            self.header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"header: {self.path}: not valid JSON ({exc})") from None
        if not isinstance(self.header, dict) or self.header.get("format") != FORMAT:
            raise DatasetError(f"header: {self.path}: format is "
                               f"{self.header.get('format') if isinstance(self.header, dict) else None!r}, "
                               f"expected {FORMAT!r} (a foreign LMDB)")
        if int(self.header.get("version", -1)) != VERSION:
            raise DatasetError(f"header: {self.path}: version {self.header.get('version')} "
                               f"(this build reads {VERSION})")
        if not self.header.get("complete"):
            raise DatasetError(f"index: {self.path} is incomplete (the writer did not "
                               f"finish: interrupted?); regenerate it")
        missing = [k for k in self.REQUIRED_HEADER if k not in self.header]
        if missing:
            raise DatasetError(f"header: {self.path}: missing fields {missing}")
        rec = self._get("index", required=False)
        if rec is None:
            raise DatasetError(f"index: {self.path} has no 'index' key (incomplete dataset)")
        w = _unpack(rec, "index").get("windows")
        if w is None or w.ndim != 2 or w.shape[1] != 4:
            raise DatasetError(f"index: {self.path}: expected a (N, 4) 'windows' tensor")
        self.windows: List[Window] = [Window(*map(int, row)) for row in w.tolist()]
        self.num_clips = int(self.header.get("counts", {}).get("clips", 0))
        for c in sorted({win.clip for win in self.windows}):
            if c >= self.num_clips or self._get(clip_key(c), required=False) is None:
                raise DatasetError(f"{clip_key(c)}: missing (clip {c} is indexed but absent)")
        self._meta: Dict[int, Dict] = {}

    # -- properties ------------------------------------------------------------------------------
    @property
    def chunk_latents(self) -> int:
        return int(self.header["chunk_latents"])

    @property
    def latent_grid(self) -> Tuple[int, int]:
        h, w = self.header["latent_grid"]
        return int(h), int(w)

    @property
    def channels(self) -> int:
        return int(self.header["channels"])

    def __len__(self) -> int:
        return len(self.windows)

    def buckets(self) -> Dict[Tuple[int, int], List[int]]:
        """(P, R) -> indices of windows with those frame-role counts (deterministic order)."""
        out: Dict[Tuple[int, int], List[int]] = {}
        for i, w in enumerate(self.windows):
            out.setdefault(w.bucket, []).append(i)
        return dict(sorted(out.items()))

    def fingerprint(self) -> Dict:
        """What a training run records to refuse resuming on different data."""
        h = self.header
        return {k: h.get(k) for k in ("codec", "resolution", "latent_grid", "channels", "chunk_latents", "memory",
                                      "temporal_stride", "counts", "seeds")}

    # -- records ---------------------------------------------------------------------------------
    def _get(self, key: str, required: bool = True) -> Optional[bytes]:
        with self.env.begin(buffers=False) as txn:
            v = txn.get(key.encode())
        if v is None and required:
            raise DatasetError(f"{key}: missing from {self.path}")
        return v

    def meta(self, c: int) -> Dict:
        if c not in self._meta:
            raw = self._get(clip_key(c))
            try:
                self._meta[c] = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DatasetError(f"{clip_key(c)}: not valid JSON ({exc})") from None
        return self._meta[c]

    def frame(self, c: int, j: int) -> Dict[str, torch.Tensor]:
        key = frame_key(c, j)
        rec = _unpack(self._get(key), key)
        C, (h, w) = self.channels, self.latent_grid
        H, W = self.header["resolution"]
        lat = rec.get("latent")
        if lat is None or tuple(lat.shape) != (C, h, w):
            raise DatasetError(f"{key}: 'latent' must be ({C}, {h}, {w}), got "
                               f"{None if lat is None else tuple(lat.shape)}")
        for name, shape in (("depth", (H, W)), ("exclude", (H, W))):
            if name in rec and tuple(rec[name].shape) != tuple(shape):
                raise DatasetError(f"{key}: '{name}' must be {tuple(shape)}, got {tuple(rec[name].shape)}")
        return rec

    def latents(self, c: int, frames: Sequence[int]) -> torch.Tensor:
        """(n, C, h, w) float32 latents of clip ``c``."""
        if not len(frames):
            C, (h, w) = self.channels, self.latent_grid
            return torch.zeros(0, C, h, w)
        return torch.stack([self.frame(c, int(j))["latent"].float() for j in frames])

    def window(self, i: int) -> Dict[str, torch.Tensor]:
        """Sample ``i``: targets (T, C, h, w), preceding (P, ...), references (R, ...), readouts
        (T+P, C, h, w), masks (T+P, h, w) bool, all float32 but masks."""
        win = self.windows[i]
        key = window_key(win.clip, win.a)
        rec = _unpack(self._get(key), key)
        T, C, (h, w) = self.chunk_latents, self.channels, self.latent_grid
        n = T + win.num_preceding
        checks = {"frames": (n,), "readouts": (n, C, h, w), "masks": (n, h, w), "references": (win.num_references,)}
        for name, shape in checks.items():
            if name not in rec or tuple(rec[name].shape) != shape:
                got = tuple(rec[name].shape) if name in rec else None
                raise DatasetError(f"{key}: '{name}' must be {shape} (clip {win.clip}), got {got}")
        frames = rec["frames"].tolist()
        if frames[:T] != list(range(win.a, win.a + T)):
            raise DatasetError(f"{key}: target frames {frames[:T]} do not start at {win.a} (clip {win.clip})")
        return {
            "targets": self.latents(win.clip, frames[:T]),
            "preceding": self.latents(win.clip, frames[T:]),
            "references": self.latents(win.clip, rec["references"].tolist()),
            "readouts": rec["readouts"].float(),
            "masks": rec["masks"].bool(),
        }

    def iter_clips(self) -> Iterator[int]:
        return iter(range(self.num_clips))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self.path)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
