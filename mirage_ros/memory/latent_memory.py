"""The latent spatial memory M = {(p_i, f_i)}: world points carrying VAE latent features.

- ``insert`` (Eq. 4): lift the admissible cells Lambda_t of a latent grid into world points.
- ``read`` (Eq. 5): project every point into a target camera's latent grid; each cell takes the
  feature of its frontmost point (smallest camera z), and the mask marks cells that got one.

Frontmost-wins is exact and deterministic without sorting: each candidate point gets a 64-bit
key ``(float32 bits of z) << 32 | storage index``. For z > 0 the IEEE-754 bit pattern of a float
is monotonic in its value, so the smallest key per cell (one ``scatter_reduce(amin)``, whose
result does not depend on execution order) is the nearest point, and on an exact depth tie the
earliest inserted one. The official code argsorts all points by depth and relies on indexed
assignment with repeated indices, which PyTorch documents as undefined; we do not.

Growth is bounded by de-duplication against the memory itself: before inserting a frame we read
the memory at that camera; a cell whose stored frontmost depth agrees with the new depth within
``dedup_tolerance`` (relative) is a re-observation of stored surface and adds no point. Policy
on re-observation (``on_revisit``): ``"keep"`` (default) keeps the stored feature, because the
first observation of a surface is usually the real camera frame or the least-drifted generated
one, and keeping it makes revisits reproduce what was seen (the paper's closed-loop test);
``"refresh"`` overwrites it with the newest feature (for scenes that change slowly).

Sky (``sky=True``, off by default): cells with no point whose pixels are at least ``sky_fraction``
at depth +inf (nothing within range; the simulator's sky) are kept in a ``SkyDome`` as world
directions, read by the camera's rotation alone and placed behind every point (``sky.py``).
``exclude`` governs points; of the dome's cells it vetoes those with an excluded pixel of finite
depth (a dynamic object in front of the sky).

Layouts: latent (C, h, w); depth (H, W) or (h, w) metres (z-depth); exclude (H, W) or (h, w) bool;
points (N, 3) float32 world; features (N, C) in ``feature_dtype`` (bfloat16 by default).
"""
from __future__ import annotations

import json
import numbers
import stat
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from ..geometry import Camera, backproject
from .downsample import DEPTH_DOWNSAMPLE_METHODS, downsample_depth, downsample_mask, masked_median_depth
from .index import BlockIndex, rect_max
from .sky import SkyDome

__all__ = ["LatentSpatialMemory", "Readout", "MemoryError_", "MemoryFileError", "READ_RTOL"]

FORMAT_VERSION = 1
READ_RTOL = 16 * 2.0**-24  # rounding budget of the readout's float32 projection (see ``read``)
_INT64_MAX = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


class MemoryError_(ValueError):
    """Invalid input to the memory; the message names the argument. Nothing was changed."""


class MemoryFileError(MemoryError_):
    """A memory file is corrupt, incomplete or does not match this memory. Nothing was changed."""


_FILE_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
                "U8": torch.uint8}
_LOAD_CHUNK_BYTES = 1 << 24


def _check_regular_file(path: Path) -> None:
    """Raise ``MemoryFileError`` saying what ``path`` is when it is not a readable regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        what = "is a dangling symbolic link" if path.is_symlink() else "does not exist"
        raise MemoryFileError(f"path: {path} {what}") from None
    except OSError as exc:
        raise MemoryFileError(f"path: {path} cannot be examined ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MemoryFileError(f"path: {path} is a directory, not a memory file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                                       (stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket")) if test(st.st_mode)),
                    "special file")
        raise MemoryFileError(f"path: {path} is not a regular file (it is a {kind})")


class Readout:
    """Result of ``LatentSpatialMemory.read``: unpacks as ``latent, mask``.

    latent (C, h, w) readout z_hat_t (zeros where empty); mask (h, w) bool m_t; depth (h, w)
    float32 camera z of the winning point (+inf where empty or sky); index (h, w) int64 storage
    index of the winning point (-1 where empty or sky); sky (h, w) bool: cells filled from the
    sky dome (a subset of ``mask``; all False without one).
    """

    __slots__ = ("latent", "mask", "depth", "index", "sky")

    def __init__(self, latent, mask, depth, index, sky=None):
        self.latent, self.mask, self.depth, self.index = latent, mask, depth, index
        self.sky = torch.zeros_like(mask) if sky is None else sky

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.latent
        yield self.mask

    def __len__(self) -> int:
        return 2

    @property
    def coverage(self) -> float:
        return float(self.mask.float().mean())


def _check_tolerance(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise MemoryError_(f"{name}: expected a relative tolerance in [0, 1], got {value!r}")
    return float(value)


class _SharedRows:
    """Row storage of a fork: rows [0, n0) are ``base`` (a view of the parent memory's storage,
    never written), rows n0.. are the fork's ``own`` (grown by ``put``). Reads index it as the
    memory indexes a tensor (``[:n]``, ``[a:b]``, ``[index tensor]``); a slice within ``base``
    is a view, one that spans both is concatenated (xyz: 12 bytes a point, per read). Writing a
    shared row (``__setitem__`` below n0) first copies ``base`` into ``own`` (copy on write)."""

    def __init__(self, base: torch.Tensor, own: torch.Tensor, used: int = 0):
        self.base, self.own, self.used = base, own, used  # own[:used] hold rows n0 .. n0 + used

    @property
    def n0(self) -> int:
        return self.base.shape[0]

    @property
    def shape(self):
        return torch.Size((self.n0 + self.own.shape[0], *self.base.shape[1:]))

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def device(self):
        return self.base.device

    def element_size(self) -> int:
        return self.base.element_size()

    def fork(self, n: int) -> "_SharedRows":
        """The rows [0, n) shared again (a fork of a fork): the base stays shared, own rows are copied."""
        k = max(0, n - self.n0)
        return _SharedRows(self.base[: min(n, self.n0)], self.own[:k].clone(), k)

    def clone(self) -> torch.Tensor:
        return self[: self.n0 + self.used].clone()

    def put(self, n: int, rows: torch.Tensor) -> None:
        """Write ``rows`` at rows n .. n + len (n >= n0), growing ``own`` by half again when full."""
        a, m = n - self.n0, rows.shape[0]
        if a < 0:
            raise IndexError("a fork appends after its shared rows")
        if a + m > self.own.shape[0]:
            cap = max(a + m, int(self.own.shape[0] * 1.5) + 1024)
            own = torch.empty((cap, *self.base.shape[1:]), dtype=self.base.dtype, device=self.base.device)
            own[:a] = self.own[:a]
            self.own = own
        self.own[a:a + m] = rows
        self.used = a + m

    def __getitem__(self, key):
        n0 = self.n0
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(n0 + self.own.shape[0])
            if stop <= n0:
                return self.base[start:stop]
            if start >= n0:
                return self.own[start - n0:stop - n0]
            return torch.cat([self.base[start:], self.own[:stop - n0]])
        if isinstance(key, torch.Tensor) and not key.is_floating_point():
            idx = key.nonzero().squeeze(1) if key.dtype == torch.bool else key.long()
            out = torch.empty((idx.shape[0], *self.base.shape[1:]), dtype=self.base.dtype, device=self.base.device)
            low = idx < n0
            out[low] = self.base[idx[low]]
            out[~low] = self.own[idx[~low] - n0]
            return out
        return self.clone()[key]

    def __setitem__(self, key, value) -> None:
        if self.n0:  # copy on write: the fork takes its own copy of the shared rows once
            self.own = torch.cat([self.base, self.own[: self.used]])
            self.used = self.own.shape[0]
            self.base = self.base[:0]
        self.own[key] = value


class LatentSpatialMemory:
    """3D cache of latent features (paper Sec. 3). See the module docstring for the policies.

    Args:
        channels: latent channels C (48 for Wan2.2).
        stride: VAE spatial stride s (16 for Wan2.2); images are H x W, latents H/s x W/s.
        depth_downsample: ``bilinear`` (paper default) | ``nearest`` | ``area`` | ``median``.
        device: where points, features and the index live (CPU or CUDA; same code).
        feature_dtype: storage dtype of features (bfloat16 halves memory; float32 is exact; uint8
            serves RGB point caches, whose "latent" is the image itself at stride 1).
        dedup: skip cells that re-observe stored surface (bounded growth).
        dedup_tolerance: relative depth agreement that counts as the same surface.
        on_revisit: ``keep`` | ``refresh`` (see module docstring).
        block_size: edge of the spatial index's blocks in metres.
        max_points: optional hard cap; an insert that would exceed it raises and changes nothing.
        occlusion_culling: skip index blocks hidden behind already-read points (exact).
        first_round_points: points read in the first near-to-far round of the readout.
        earliest_within: default of ``read``'s observed-first rule (0 = plain frontmost-wins).
        sky: keep all-+inf-depth cells in a sky dome read by rotation only (``sky.py``).
        sky_reach: how far (in target cell pitches) a dome read reaches for a stored direction.
        sky_fraction: share of a cell's pixels at +inf that makes a cell with no point a dome cell
            (0.25: a horizon or tree-top cell that is a quarter sky or more and has no point goes to
            the dome; 1.0: only pure sky).
        exclude_fraction: a cell is excluded when MORE than this share of its pixels is excluded
            (0.375, the default, chosen on validation loops: +7 dB on the readout's final frame over
            0.0, which drops any cell with one dynamic or +inf pixel and so left horizon cells neither
            point nor dome: black). Above 0 a cell partly covered by a dynamic object keeps its
            static part: its depth comes from its non-excluded pixels only (median),
            so the object's depth never places the cell. Needs a pixel-resolution mask.
        sky_exclude_fraction: None (default) counts excluded sky pixels like dynamic ones. A share
            >= ``exclude_fraction`` lets a cell whose excluded pixels are sky (+inf depth) stay a
            point up to that share excluded (e.g. a thin tree trunk against the sky), while the
            dynamic share alone is still held to ``exclude_fraction``.
    """

    def __init__(
        self,
        channels: int = 48,
        stride: int = 16,
        depth_downsample: str = "bilinear",
        device: Union[str, torch.device] = "cpu",
        feature_dtype: torch.dtype = torch.bfloat16,
        dedup: bool = True,
        dedup_tolerance: float = 0.05,
        on_revisit: str = "keep",
        block_size: float = 1.0,
        max_points: Optional[int] = None,
        occlusion_culling: bool = True,
        first_round_points: int = 32768,
        earliest_within: float = 0.0,
        sky: bool = False,
        sky_reach: float = 0.75,
        sky_fraction: float = 0.25,
        exclude_fraction: float = 0.375,
        sky_exclude_fraction: Optional[float] = None,
    ):
        for name, v in (("channels", channels), ("stride", stride), ("first_round_points", first_round_points)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise MemoryError_(f"{name}: expected a positive integer, got {v!r}")
        if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, numbers.Integral)
                                       or max_points < 0):
            raise MemoryError_(f"max_points: expected None or a non-negative integer, got {max_points!r}")
        self.earliest_within = _check_tolerance("earliest_within", earliest_within)
        if depth_downsample not in DEPTH_DOWNSAMPLE_METHODS:
            raise MemoryError_(f"depth_downsample: unknown method {depth_downsample!r} (expected one of "
                               f"{DEPTH_DOWNSAMPLE_METHODS})")
        if on_revisit not in ("keep", "refresh"):
            raise MemoryError_(f"on_revisit: expected 'keep' or 'refresh', got {on_revisit!r}")
        if isinstance(feature_dtype, str):
            feature_dtype = getattr(torch, feature_dtype)
        if feature_dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.uint8):
            raise MemoryError_(f"feature_dtype: expected float32, bfloat16, float16 (or uint8 for colour caches), got "
                               f"{feature_dtype}")
        self.channels, self.stride = int(channels), int(stride)
        self.depth_downsample = depth_downsample
        self.device = torch.device(device)
        self.feature_dtype = feature_dtype
        self.dedup, self.dedup_tolerance, self.on_revisit = dedup, float(dedup_tolerance), on_revisit
        self.max_points = None if max_points is None else int(max_points)
        self.occlusion_culling, self.first_round_points = occlusion_culling, int(first_round_points)
        self.index = BlockIndex(block_size)
        self._xyz = torch.empty((0, 3), dtype=torch.float32, device=self.device)
        self._feat = torch.empty((0, self.channels), dtype=self.feature_dtype, device=self.device)
        self._n = 0
        self._arange = torch.empty(0, dtype=torch.int64, device=self.device)
        self.last_insert: dict = {}
        if not isinstance(sky, bool):
            raise MemoryError_(f"sky: expected a bool, got {sky!r}")
        if isinstance(sky_reach, bool) or not isinstance(sky_reach, numbers.Real) or not 0.0 < sky_reach <= 4.0:
            raise MemoryError_(f"sky_reach: expected a number of cell pitches in (0, 4], got {sky_reach!r}")
        if isinstance(sky_fraction, bool) or not isinstance(sky_fraction, numbers.Real) or not 0.0 < sky_fraction <= 1:
            raise MemoryError_(f"sky_fraction: expected a fraction of a cell's pixels in (0, 1], got {sky_fraction!r}")
        self.sky_fraction = float(sky_fraction)
        if (isinstance(exclude_fraction, bool) or not isinstance(exclude_fraction, numbers.Real)
                or not 0.0 <= exclude_fraction < 1):
            raise MemoryError_(f"exclude_fraction: expected a share of a cell's pixels in [0, 1), got "
                               f"{exclude_fraction!r}")
        self.exclude_fraction = float(exclude_fraction)
        if sky_exclude_fraction is not None and (
                isinstance(sky_exclude_fraction, bool) or not isinstance(sky_exclude_fraction, numbers.Real)
                or not self.exclude_fraction <= sky_exclude_fraction < 1):
            raise MemoryError_(f"sky_exclude_fraction: expected None or a share in [exclude_fraction, 1), got "
                               f"{sky_exclude_fraction!r}")
        self.sky_exclude_fraction = None if sky_exclude_fraction is None else float(sky_exclude_fraction)
        self.sky = SkyDome(self.channels, self.feature_dtype, self.device, float(sky_reach)) if sky else None

    # -- state ----------------------------------------------------------------------------------
    @property
    def num_points(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def points(self) -> torch.Tensor:
        """(N, 3) float32 world positions (a view; do not modify)."""
        return self._xyz[: self._n]

    @property
    def features(self) -> torch.Tensor:
        """(N, C) features in ``feature_dtype`` (a view; do not modify)."""
        return self._feat[: self._n]

    @property
    def nbytes(self) -> int:
        """Bytes held for the stored points: positions + features + spatial index."""
        per_point = 3 * 4 + self.channels * self._feat.element_size()
        return self._n * per_point + self.index.nbytes + (self.sky.nbytes if self.sky is not None else 0)

    def clear(self) -> None:
        self._xyz = self._xyz[:0].clone()
        self._feat = self._feat[:0].clone()
        self._n = 0
        self.index.clear()
        if self.sky is not None:
            self.sky.clear()

    def fork(self) -> "LatentSpatialMemory":
        """A memory that reads as this one does now and that a rollout may write into without
        touching this one (a candidate trajectory's, or a goal's imagined points), copying nothing:
        it SHARES this memory's points and features as they are (a read-only snapshot, ``_SharedRows``)
        and keeps what is inserted into it in its own rows. Later inserts into this memory land
        beyond the shared rows; an in-place refresh (``on_revisit="refresh"``) here first copies the
        features once while forks may hold them, and a refresh of a shared row in a fork copies the
        fork's features once (copy on write). The index is shared until either side rebuilds it.
        K forks of a 103 MiB memory cost kilobytes, not K x 103 MiB (issue 15, item 6)."""
        import copy

        other = copy.copy(self)
        if isinstance(self._xyz, _SharedRows):
            other._xyz, other._feat = self._xyz.fork(self._n), self._feat.fork(self._n)
        else:
            other._xyz = _SharedRows(self._xyz[: self._n], torch.empty((0, 3), dtype=torch.float32, device=self.device))
            other._feat = _SharedRows(self._feat[: self._n],
                                      torch.empty((0, self.channels), dtype=self.feature_dtype, device=self.device))
            self._forked = True
        other._forked = False
        other.index = copy.copy(self.index)  # rebuild() assigns new tensors, never writes the shared ones
        other.last_insert = dict(self.last_insert)
        other.sky = copy.copy(self.sky)  # the dome never writes its tensors in place
        return other

    def __repr__(self) -> str:
        dome = f", sky={len(self.sky)}" if self.sky is not None else ""
        return (f"LatentSpatialMemory(points={self._n}{dome}, channels={self.channels}, stride={self.stride}, "
                f"{self.nbytes / 2**20:.2f} MiB, device={self.device})")

    # -- insert (Eq. 4) -------------------------------------------------------------------------
    def _check_latent(self, latent, camera: Camera) -> torch.Tensor:
        h, w = camera.latent_size(self.stride)
        if not isinstance(latent, torch.Tensor):
            raise MemoryError_(f"latent: expected a torch.Tensor (C, h, w), got {type(latent).__name__}")
        if tuple(latent.shape) != (self.channels, h, w):
            raise MemoryError_(f"latent: expected shape ({self.channels}, {h}, {w}) for a "
                               f"{camera.height}x{camera.width} camera, got {tuple(latent.shape)}")
        if not latent.is_floating_point():
            raise MemoryError_(f"latent: expected a floating-point tensor, got {latent.dtype}")
        if not torch.isfinite(latent).all():
            raise MemoryError_("latent: contains NaN or inf")
        return latent.to(self.device)

    def _latent_depth(self, depth, camera: Camera, exclude=None) -> torch.Tensor:
        """(h, w) cell depth, NaN where not valid. With ``exclude_fraction`` > 0 and a pixel mask, a
        partly excluded cell takes the median depth of its non-excluded pixels."""
        h, w = camera.latent_size(self.stride)
        if not isinstance(depth, torch.Tensor):
            try:
                depth = torch.as_tensor(depth)
            except Exception:  # noqa: BLE001 - whatever torch refuses is a wrong type
                raise MemoryError_(f"depth: expected an array (H, W) or (h, w), got {type(depth).__name__}") from None
        if not (depth.is_floating_point() or depth.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
            raise MemoryError_(f"depth: expected real values in metres, got dtype {depth.dtype}")
        depth = depth.to(self.device, torch.float32)
        if tuple(depth.shape) == (camera.height, camera.width):
            d = downsample_depth(depth, self.stride, self.depth_downsample)
            ex = self._pixel_exclude(exclude, camera)
            if ex is not None and self.exclude_fraction > 0 and bool(ex.any()):
                share = self._cell_share(ex)
                partial = (share > 0) & ~self._excluded_cells(ex, depth)
                d = torch.where(partial, masked_median_depth(depth, ex, self.stride), d)
            return d
        if tuple(depth.shape) == (h, w):
            return torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.full_like(depth, float("nan")))
        raise MemoryError_(f"depth: expected shape ({camera.height}, {camera.width}) or ({h}, {w}), got "
                           f"{tuple(depth.shape)}")

    def _pixel_exclude(self, exclude, camera: Camera) -> Optional[torch.Tensor]:
        """The mask at image resolution, or None (none given, or given per cell)."""
        if exclude is None:
            return None
        exclude = torch.as_tensor(exclude, device=self.device)
        if exclude.dtype == torch.bool and tuple(exclude.shape) == (camera.height, camera.width):
            return exclude
        return None

    def _cell_share(self, mask: torch.Tensor) -> torch.Tensor:
        """(H, W) bool -> (h, w) share of set pixels per cell."""
        s = self.stride
        H, W = mask.shape
        return mask.reshape(H // s, s, W // s, s).float().mean(dim=(1, 3))

    def _excluded_cells(self, ex: torch.Tensor, depth=None) -> torch.Tensor:
        """(H, W) bool pixel mask -> (h, w) cells excluded as points (``exclude_fraction``, and
        ``sky_exclude_fraction`` for excluded pixels at +inf where the pixel depth is given)."""
        share = self._cell_share(ex)
        if self.sky_exclude_fraction is None or depth is None:
            return share > self.exclude_fraction
        dyn = self._cell_share(ex & ~torch.isposinf(depth))
        return (dyn > self.exclude_fraction) | (share > self.sky_exclude_fraction)

    def _pixel_depth(self, depth, camera: Camera) -> Optional[torch.Tensor]:
        """The depth as a float tensor at image resolution, or None (other shape or type; checked later)."""
        if self.sky_exclude_fraction is None:
            return None
        try:
            d = torch.as_tensor(depth, device=self.device)
        except Exception:  # noqa: BLE001 - _latent_depth names the problem
            return None
        if tuple(d.shape) != (camera.height, camera.width) or not d.is_floating_point():
            return None
        return d.float()

    def _latent_exclude(self, exclude, camera: Camera, depth=None) -> Optional[torch.Tensor]:
        if exclude is None:
            return None
        h, w = camera.latent_size(self.stride)
        exclude = torch.as_tensor(exclude, device=self.device)
        if exclude.dtype != torch.bool:
            raise MemoryError_(f"exclude: expected a bool mask, got dtype {exclude.dtype}")
        if tuple(exclude.shape) == (camera.height, camera.width):
            if self.exclude_fraction > 0:
                return self._excluded_cells(exclude, self._pixel_depth(depth, camera))
            return downsample_mask(exclude, self.stride)
        if tuple(exclude.shape) == (h, w):
            return exclude
        raise MemoryError_(f"exclude: expected shape ({camera.height}, {camera.width}) or ({h}, {w}), got "
                           f"{tuple(exclude.shape)}")

    def admissible(self, depth, camera: Camera, exclude=None) -> torch.Tensor:
        """Lambda_t (h, w) bool: finite positive depth and not excluded (dynamic / sky)."""
        ex = self._latent_exclude(exclude, camera, depth)
        d = self._latent_depth(depth, camera, exclude)
        ok = torch.isfinite(d)
        return ok if ex is None else ok & ~ex

    def insert(self, latent: torch.Tensor, depth, camera: Camera, exclude=None, sky: bool = True) -> int:
        """Add the points of Lambda_t; returns how many were added (re-observations add none).
        ``sky=False`` keeps this frame out of the sky dome (e.g. a generated frame).

        Raises ``MemoryError_`` / ``GeometryError`` naming the argument on bad input, before any
        change. ``self.last_insert`` holds the counts (admissible, revisited, added).
        """
        if not isinstance(camera, Camera):
            raise MemoryError_(f"camera: expected a mirage_ros.geometry.Camera, got {type(camera).__name__}")
        latent = self._check_latent(latent, camera)
        ex = self._latent_exclude(exclude, camera, depth)  # checks the mask before it is used for depth
        d = self._latent_depth(depth, camera, exclude)
        lam = torch.isfinite(d) if ex is None else torch.isfinite(d) & ~ex
        sky_cells = self._sky_cells(depth, camera, d, exclude) if self.sky is not None and sky else None
        n_adm = int(lam.sum())
        new = lam
        revisited = torch.zeros_like(lam)
        if self.dedup and self._n > 0 and n_adm:
            r = self.read(camera, dtype=None)
            same = r.mask & lam & ((d - r.depth).abs() <= self.dedup_tolerance * d)
            revisited = same
            new = lam & ~same
        n_new = int(new.sum())
        if self.max_points is not None and self._n + n_new > self.max_points:
            raise MemoryError_(f"max_points: inserting {n_new} points would exceed the cap of {self.max_points} "
                               f"(memory holds {self._n})")
        if n_new:
            pts = backproject(d, camera.latent_K(self.stride), camera.world_to_camera)[new].float()
            bad = ~torch.isfinite(pts).all(1)
            if bool(bad.any()):
                raise MemoryError_(
                    f"depth: {int(bad.sum())} admissible cells lift to non-finite world points (depth up to "
                    f"{float(d[new][bad].max()):.3g} m with this camera's K and pose overflows float32); nothing "
                    f"inserted"
                )
        # -- all checks passed: mutate --
        if self.on_revisit == "refresh" and bool(revisited.any()):
            idx = r.index[revisited]
            if getattr(self, "_forked", False):  # forks share these rows: copy on write
                self._feat, self._forked = self._feat.clone(), False
            self._feat[idx] = latent.permute(1, 2, 0)[revisited].to(self.feature_dtype)
        if n_new:
            feats = latent.permute(1, 2, 0)[new].to(self.feature_dtype)
            self._append(pts, feats)
        self.last_insert = {"admissible": n_adm, "revisited": int(revisited.sum()), "added": n_new}
        if sky_cells is not None:
            s_new, s_seen = self.sky.insert(latent, sky_cells, camera, self.stride, self.on_revisit == "refresh")
            self.last_insert.update(sky_added=s_new, sky_revisited=s_seen)
        return n_new

    def _sky_cells(self, depth, camera: Camera, point_depth: torch.Tensor, exclude) -> torch.Tensor:
        """(h, w) bool, the dome's cells: no point (``point_depth`` not finite), at least
        ``sky_fraction`` of the pixels at +inf, and no excluded pixel of finite depth (a dynamic
        object in front of the sky vetoes its cell; excluded sky pixels do not). Inputs checked."""
        d = torch.as_tensor(depth).to(self.device)
        d = d.float() if d.is_floating_point() else torch.zeros(d.shape, device=self.device)
        inf = torch.isposinf(d)
        s, full = self.stride, tuple(inf.shape) == (camera.height, camera.width)

        def cells_of(x):  # (H, W) -> (h, w) share of True pixels; (h, w) unchanged
            if not full:
                return x.float()
            return x.reshape(camera.height // s, s, camera.width // s, s).float().mean(dim=(1, 3))

        frac = cells_of(inf)
        cells = ~torch.isfinite(point_depth) & (frac >= self.sky_fraction)
        if exclude is not None:
            ex = torch.as_tensor(exclude, device=self.device)
            if tuple(ex.shape) == tuple(inf.shape):
                veto = cells_of(ex & ~inf) > 0
            else:  # mask and depth at different resolutions: an excluded cell that is not all sky
                veto = self._latent_exclude(exclude, camera) & (frac < 1)
            cells = cells & ~veto
        return cells

    def add_points(self, points: torch.Tensor, features: torch.Tensor) -> int:
        """Append raw points (N, 3) world and features (N, C) without de-duplication (imports,
        benchmarks). Validated before any change; returns N."""
        points = torch.as_tensor(points)
        features = torch.as_tensor(features)
        if points.ndim != 2 or points.shape[1] != 3:
            raise MemoryError_(f"points: expected shape (N, 3), got {tuple(points.shape)}")
        if features.shape != (points.shape[0], self.channels):
            raise MemoryError_(f"features: expected shape ({points.shape[0]}, {self.channels}), got "
                               f"{tuple(features.shape)}")
        if not torch.isfinite(points).all():
            raise MemoryError_("points: contains NaN or inf")
        if features.is_floating_point() and not torch.isfinite(features).all():
            raise MemoryError_("features: contains NaN or inf")
        if self.max_points is not None and self._n + points.shape[0] > self.max_points:
            raise MemoryError_(f"max_points: adding {points.shape[0]} points would exceed the cap of {self.max_points}")
        self._append(points.to(self.device, torch.float32), features.to(self.device, self.feature_dtype))
        return int(points.shape[0])

    def _append(self, pts: torch.Tensor, feats: torch.Tensor) -> None:
        n, m = self._n, pts.shape[0]
        if isinstance(self._xyz, _SharedRows):  # a fork: the shared rows stay, its own rows grow
            self._xyz.put(n, pts)
            self._feat.put(n, feats)
            self._n = n + m
            if self.index.needs_rebuild(self._n):
                self.index.rebuild(self.points)
            return
        if n + m > self._xyz.shape[0]:
            cap = max(n + m, int(self._xyz.shape[0] * 1.5) + 1024)
            xyz = torch.empty((cap, 3), dtype=torch.float32, device=self.device)
            feat = torch.empty((cap, self.channels), dtype=self.feature_dtype, device=self.device)
            xyz[:n] = self._xyz[:n]
            feat[:n] = self._feat[:n]
            self._xyz, self._feat = xyz, feat
        self._xyz[n : n + m] = pts
        self._feat[n : n + m] = feats
        self._n = n + m
        if self.index.needs_rebuild(self._n):
            self.index.rebuild(self.points)

    # -- read (Eq. 5) ---------------------------------------------------------------------------
    def projection(self, camera: Camera) -> torch.Tensor:
        """P = K_l [R | t] (3, 4) float32: world point -> (p_u, p_v, z), cell = floor(p/z)."""
        P = camera.latent_K(self.stride) @ camera.world_to_camera[:3]
        return P.to(self.device, torch.float32)

    def read(self, camera: Camera, dtype: Optional[torch.dtype] = torch.float32,
             earliest_within: Optional[float] = None) -> Readout:
        """Eq. 5: per cell the feature of the frontmost point projecting into it, and the mask.

        ``dtype`` of the returned latent (None keeps the storage dtype).

        ``earliest_within`` (relative, e.g. 0.05; None = the memory's ``earliest_within``): the
        observed-first rule. Among the points of a cell whose depth is within that fraction of the
        cell's frontmost depth z_min (z <= z_min (1 + tol), both float32), the earliest inserted one
        wins. The first observation of a surface then keeps its cell when a later (e.g. generated)
        copy of the same surface lands a hair nearer (slanted surfaces reprojected from another
        pose), while a genuinely nearer surface (beyond the tolerance) still occludes it. 0 is
        plain frontmost-wins. ``Readout.depth`` is the winner's own depth.

        What "exact, deterministic" promises. Each point's (p_u, p_v, z) = P p is computed in
        float32 (P = K_l [R | t] rounded to float32) and the cell is floor(p_u / z), floor(p_v / z).
        - Same machine, same inputs (points, insertion order, camera): the same winners, depths
          and mask, bit for bit, whatever the thread count or execution order (one
          ``scatter_reduce(amin)`` over (z bits, insertion index) keys; no sort, no racy write).
        - Exact depth ties (e.g. identical points) go to the earliest inserted point.
        - Against exact arithmetic, and hence across machines, devices and BLAS builds (which round
          float32 products differently, e.g. AVX2 vs AVX-512 vs CUDA): a point's z, p_u and p_v
          may move by up to ``READ_RTOL`` (16 float32 ulps, 9.5e-7) times S = sum_j |P_ij p_j| + |P_i4|
          (about |z| for points near the optical axis; the dot-product rounding bound is 5 ulps).
          So the winner of a cell is the true frontmost point except at near-ties: two candidates
          whose depths agree within that budget, or a point within its budget of a cell border;
          there either may win, and its reported depth is its true depth within the budget.
        The block index and culling keep this promise: they skip only points that cannot win, or
        (their corner tests being float32 too) near-ties and near-border points as above. With
        ``earliest_within`` the same holds with "near-tie" extended to a point whose depth is
        within its budget of the tolerance limit z_min (1 + tol).
        """
        if not isinstance(camera, Camera):
            raise MemoryError_(f"camera: expected a mirage_ros.geometry.Camera, got {type(camera).__name__}")
        tol = self.earliest_within if earliest_within is None else _check_tolerance("earliest_within", earliest_within)
        h, w = camera.latent_size(self.stride)
        winner, zbest = self._frontmost(self.projection(camera), h, w, tol)
        filled = winner >= 0
        out_dtype = self.feature_dtype if dtype is None else dtype
        latent = torch.zeros((self.channels, h * w), dtype=out_dtype, device=self.device)
        if bool(filled.any()):
            latent[:, filled] = self._feat[winner[filled]].T.to(out_dtype)
        sky = None
        if self.sky is not None and len(self.sky) and not bool(filled.all()):
            j = self.sky.lookup(camera, self.stride)
            sky = ~filled & (j >= 0)  # the dome lies behind every point
            if bool(sky.any()):
                latent[:, sky] = self.sky.features[j[sky]].T.to(out_dtype)
                filled = filled | sky
            sky = sky.view(h, w)
        return Readout(latent.view(self.channels, h, w), filled.view(h, w), zbest.view(h, w), winner.view(h, w),
                       sky)

    def _frontmost(self, P: torch.Tensor, h: int, w: int, tol: float = 0.0):
        """Winner storage index (h*w,) int64 (-1 empty) and its z (h*w,) float32 (inf empty).

        Visits the unindexed tail, then frustum-visible blocks near to far in rounds of doubling
        size; before each round, blocks whose whole footprint already holds points strictly
        nearer than the block's nearest corner are dropped (they cannot win any cell). With
        ``tol`` > 0 a second pass over the same candidates (culled against z_min (1 + tol)) picks
        the earliest point within the tolerance (``read``).
        """
        n, hw = self._n, h * w
        best = torch.full((hw + 1,), _INT64_MAX, dtype=torch.int64, device=self.device)
        ix = self.index
        passes = []  # the id sets folded into ``best`` (None = every point)
        culled = None  # (depth-sorted visible blocks, footprints, nearest corners) on the culling path
        if n == 0:
            pass
        elif ix.num_blocks == 0 or n <= 2 * self.first_round_points:
            passes.append(None)  # small memories: one pass beats any culling
        else:
            vis, zmin, (u0, u1, v0, v1) = ix.frustum(P, h, w)
            blocks = vis.nonzero().squeeze(1)
            n_tail = n - ix.n_indexed
            n_vis = int(ix.counts[blocks].sum())
            tail = torch.arange(ix.n_indexed, n, device=self.device) if n_tail else None
            if not self.occlusion_culling or n_vis + n_tail <= 2 * self.first_round_points:
                if n_vis + n_tail >= 0.6 * n:
                    passes.append(None)
                else:
                    passes.append(ix.gather(blocks))
                    if n_tail:
                        passes.append(tail)
            else:
                if n_tail:
                    self._scatter(best, P, h, w, tail)
                blocks = blocks[torch.argsort(zmin[blocks], stable=True)]  # blocks, not points
                culled = (blocks, zmin, (u0, u1, v0, v1), tail)
                budget = max(self.first_round_points, n_vis // 16)
                while blocks.numel():
                    cum = torch.cumsum(ix.counts[blocks], 0)
                    take = max(1, int(torch.searchsorted(cum, torch.tensor(budget, device=cum.device), right=True)))
                    self._scatter(best, P, h, w, ix.gather(blocks[:take]))
                    blocks = blocks[take:]
                    if blocks.numel():
                        cell_z = self._best_z(best[:hw]).view(h, w)
                        reach = rect_max(cell_z, u0[blocks], u1[blocks], v0[blocks], v1[blocks])
                        blocks = blocks[reach >= zmin[blocks]]
                    budget *= 2
        for ids in passes:
            self._scatter(best, P, h, w, ids)
        best = best[:hw]
        filled = best != _INT64_MAX
        zbest = self._best_z(best)
        if tol > 0 and bool(filled.any()):
            limit = torch.cat([zbest * (1 + tol), zbest.new_full((1,), -1.0)])  # (hw + 1,): off-grid slot never passes
            if culled is not None:  # the same candidates, culled against the tolerance limit
                blocks, zmin, (u0, u1, v0, v1), tail = culled
                reach = rect_max(limit[:hw].view(h, w), u0[blocks], u1[blocks], v0[blocks], v1[blocks])
                passes = [ix.gather(blocks[reach >= zmin[blocks]])] + ([tail] if tail is not None else [])
            early = torch.full((hw + 1,), _INT64_MAX, dtype=torch.int64, device=self.device)
            for ids in passes:
                self._scatter(early, P, h, w, ids, limit)
            early = early[:hw]
            winner = torch.where(filled, early >> 32, torch.full_like(early, -1))
            zbits = torch.where(filled, early & _LOW32, torch.full_like(early, 0x7F800000))
            return winner, zbits.to(torch.int32).view(torch.float32)
        winner = torch.where(filled, best & _LOW32, torch.full_like(best, -1))
        return winner, zbest

    @staticmethod
    def _best_z(best: torch.Tensor) -> torch.Tensor:
        zbits = torch.where(best != _INT64_MAX, best >> 32, torch.full_like(best, 0x7F800000))
        return zbits.to(torch.int32).view(torch.float32)

    def _scatter(self, best: torch.Tensor, P: torch.Tensor, h: int, w: int, ids: Optional[torch.Tensor],
                 limit: Optional[torch.Tensor] = None) -> None:
        """Fold points (all if ``ids`` is None) into ``best`` (h*w+1,) by min (z bits, index) key; with
        ``limit`` (h*w+1,) only points with z <= limit[cell], by min (index, z bits) key."""
        n = self._n
        if ids is None:
            xyz = self._xyz[:n]
            if self._arange.numel() < n:
                self._arange = torch.arange(max(n, 2 * self._arange.numel()), device=self.device)
            ids = self._arange[:n]
        else:
            if ids.numel() == 0:
                return
            xyz = self._xyz[ids]
        hw = h * w
        pix = torch.addmm(P[:, 3], xyz, P[:, :3].T)  # (M, 3): p_u, p_v, z in one pass
        z = pix[:, 2]
        u = torch.floor(pix[:, 0] / z)
        v = torch.floor(pix[:, 1] / z)
        ok = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        cell = torch.where(ok, v * w + u, torch.full_like(u, hw)).to(torch.int64)
        zbits = z.contiguous().view(torch.int32).to(torch.int64)
        if limit is None:
            key = (zbits << 32) | ids
        else:
            cell = torch.where(z <= limit[cell], cell, torch.full_like(cell, hw))
            key = (ids << 32) | (zbits & _LOW32)
        best.scatter_reduce_(0, cell, key, "amin")

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        out = {"points": self.points.contiguous().cpu(), "features": self.features.contiguous().cpu()}
        if self.sky is not None and len(self.sky):
            out.update(sky_directions=self.sky.directions.contiguous().cpu(),
                       sky_features=self.sky.features.contiguous().cpu())
        return out

    def save(self, path: Union[str, Path]) -> None:
        """Write points and features (and the sky dome's directions and features, if any) to a
        safetensors file (atomic: temp file + rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {
            "format": "mirage_ros.LatentSpatialMemory",
            "version": str(FORMAT_VERSION),
            "channels": str(self.channels),
            "stride": str(self.stride),
            "feature_dtype": str(self.feature_dtype).replace("torch.", ""),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.state_dict(), str(tmp), metadata=meta)
        tmp.replace(path)

    def load(self, path: Union[str, Path]) -> None:
        """Replace the contents with a saved memory. On any problem raise ``MemoryFileError`` naming
        the field and leave this memory unchanged.

        Refuses: a path that is not a regular file (says what it is), a corrupt or truncated file,
        metadata of another format or with malformed / different ``channels`` or ``stride``,
        inconsistent shapes, more points than ``max_points``, NaN or inf anywhere, a sky dome
        (``sky_directions`` / ``sky_features``) that is half there, of wrong shape, not unit vectors,
        or loaded into a memory made without ``sky=True`` (its directions would be lost). The tensors
        are read straight into the memory's own storage in 16 MiB chunks (no mmap, no full-size
        temporaries: peak RSS is the loaded memory plus its index, see scripts/measure_load_rss.py).
        """
        from safetensors import safe_open

        path = Path(path)
        _check_regular_file(path)
        try:
            with safe_open(str(path), framework="pt") as f:  # validates the header; reads no data
                meta = f.metadata() or {}
                keys = set(f.keys())
                missing = {"points", "features"} - keys
                if missing:
                    raise MemoryFileError(f"path: {path} lacks tensors {sorted(missing)}")
            with open(path, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(header_len))
        except MemoryFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corruption
            raise MemoryFileError(f"path: {path} is not a readable safetensors memory file ({exc})") from None
        if meta.get("format") != "mirage_ros.LatentSpatialMemory":
            raise MemoryFileError(f"path: {path} is not a mirage_ros memory file (metadata "
                                  f"format={meta.get('format')!r})")
        held = {}
        for field in ("channels", "stride"):
            raw = meta.get(field)
            try:
                held[field] = int(raw)
            except (TypeError, ValueError):
                raise MemoryFileError(f"{field}: {path} has metadata {field}={raw!r}, not an integer") from None
        if held["channels"] != self.channels or held["stride"] != self.stride:
            raise MemoryFileError(
                f"path: {path} holds channels={held['channels']} stride={held['stride']}, "
                f"this memory has channels={self.channels} stride={self.stride}"
            )
        info = {k: header.get(k, {}) for k in ("points", "features")}
        ps, fs = (tuple(info[k].get("shape", ())) for k in ("points", "features"))
        if len(ps) != 2 or ps[1] != 3 or fs != (ps[0], self.channels):
            raise MemoryFileError(f"path: {path} has inconsistent shapes points={ps} features={fs}")
        n = ps[0]
        if self.max_points is not None and n > self.max_points:
            raise MemoryFileError(f"max_points: {path} holds {n} points, more than the cap of {self.max_points}; "
                                  f"nothing loaded")
        data_start = 8 + header_len
        sky_keys = {"sky_directions", "sky_features"} & keys
        if sky_keys and sky_keys != {"sky_directions", "sky_features"}:
            raise MemoryFileError(f"path: {path} holds {sorted(sky_keys)} without its pair; a sky dome needs both "
                                  f"sky_directions and sky_features")
        if sky_keys and self.sky is None:
            raise MemoryFileError(f"sky: {path} holds a sky dome; this memory was made with sky=False, which would "
                                  f"drop it (make it with sky=True)")
        m = 0
        if sky_keys:
            sd, sf = (tuple(header.get(k, {}).get("shape", ())) for k in ("sky_directions", "sky_features"))
            if len(sd) != 2 or sd[1] != 3 or sf != (sd[0], self.channels):
                raise MemoryFileError(f"path: {path} has inconsistent sky shapes sky_directions={sd} "
                                      f"sky_features={sf}")
            m = sd[0]
        with open(path, "rb") as fh:
            xyz = self._read_rows(fh, path, "points", info["points"], data_start, n, 3, torch.float32)
            feat = self._read_rows(fh, path, "features", info["features"], data_start, n, self.channels,
                                   self.feature_dtype)
            if m:
                sdir = self._read_rows(fh, path, "sky_directions", header["sky_directions"], data_start, m, 3,
                                       torch.float32)
                sfeat = self._read_rows(fh, path, "sky_features", header["sky_features"], data_start, m,
                                        self.channels, self.feature_dtype)
                norm = sdir.double().norm(dim=1)
                if not bool(((norm - 1).abs() <= 1e-4).all()):
                    raise MemoryFileError(f"sky_directions: {path} holds vectors that are not unit length "
                                          f"(norms {float(norm.min()):.6g} .. {float(norm.max()):.6g})")
        # -- all checks passed: replace --
        self.clear()
        self._xyz, self._feat, self._n = xyz, feat, n
        self.index.rebuild(self.points)
        if m:
            self.sky.replace(sdir, sfeat)

    def _read_rows(self, fh, path: Path, name: str, info: dict, data_start: int, n: int, cols: int, dtype: torch.dtype):
        """Read tensor ``name`` (n, cols) from an open safetensors file into a new (n, cols) tensor
        of ``dtype`` on the memory's device, chunk by chunk, refusing NaN / inf."""
        file_dtype = _FILE_DTYPES.get(info.get("dtype"))
        if file_dtype is None:
            raise MemoryFileError(f"path: {path} stores {name} as {info.get('dtype')!r}, expected one of "
                                  f"{sorted(_FILE_DTYPES)}")
        item = torch.empty((), dtype=file_dtype).element_size()
        begin, end = info.get("data_offsets", (0, -1))
        if end - begin != n * cols * item:
            raise MemoryFileError(f"path: {path} has {end - begin} bytes of {name}, expected {n * cols * item}")
        out = torch.empty((n, cols), dtype=dtype, device=self.device)
        rows = max(1, _LOAD_CHUNK_BYTES // (cols * item))
        buf = torch.empty((min(rows, max(n, 1)), cols), dtype=file_dtype)
        fh.seek(data_start + begin)
        for a in range(0, n, rows):
            m = min(rows, n - a)
            chunk = buf[:m]
            view = memoryview(chunk.view(torch.uint8).numpy()).cast("B")
            if fh.readinto(view) != m * cols * item:
                raise MemoryFileError(f"path: {path} is truncated inside {name}")
            if chunk.is_floating_point() and not bool(torch.isfinite(chunk).all()):
                raise MemoryFileError(f"path: {path} contains NaN or inf in {name}")
            out[a : a + m] = chunk
        return out

    # -- summaries ------------------------------------------------------------------------------
    def stats(self) -> dict:
        pts = self.points
        return {
            "points": self._n,
            "nbytes": self.nbytes,
            "mib": self.nbytes / 2**20,
            "blocks": self.index.num_blocks,
            "sky_directions": len(self.sky) if self.sky is not None else None,
            "bounds_min": pts.min(0).values.tolist() if self._n else None,
            "bounds_max": pts.max(0).values.tolist() if self._n else None,
        }
