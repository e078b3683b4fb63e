"""Evaluation of imagined video against ground truth: the metrics `mirage bench imagine` reports.

Public so that tests and other benchmarks compute the same numbers:

- ``region_metrics``: PSNR / SSIM of the final frame, PSNR over the revisited region (cells the
  first observation covers, at every generated frame's pose), the never-seen region, all frames;
- ``blockiness``: gradient energy across 16 / 32-pixel borders relative to inside, per region;
  divided by the same figure of the ground truth it says how much blockier than reality a frame is
  (1.0 = as smooth across borders as the real frames);
- ``cross_loop_correlation``: how much the never-seen content of *different* scenes agrees at the
  same frame index (high = driven by the sampler's noise, not by the scene);
- ``bootstrap_ci``: paired bootstrap 95 % interval of a mean difference;
- ``parse_seeds``: ``20`` | ``900700-900719`` | ``900700,900702``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from ..util import psnr, ssim

__all__ = ["region_metrics", "blockiness", "blockiness_ratio", "cross_loop_correlation", "bootstrap_ci", "parse_seeds",
           "region_pixels"]


def region_pixels(vis: np.ndarray, stride: int) -> np.ndarray:
    """(N, h, w) cell mask -> (N, H, W) pixel mask."""
    return vis.repeat(stride, 1).repeat(stride, 2)


def region_metrics(gt: np.ndarray, out: np.ndarray, vis: np.ndarray, stride: int) -> Dict[str, float]:
    """gt, out (N, H, W, 3) uint8 with frame 0 the observation; vis (N, h, w) bool revisited cells.

    PSNR over the revisited region, the never-seen region and all generated frames (1..N-1); final
    frame PSNR / SSIM; the blockiness of the generated frames per region (``blockiness``)."""
    pix = region_pixels(vis, stride)[1:]
    g, o = gt[1:], out[1:]
    m = np.repeat(pix[..., None], 3, -1)
    res = {
        "final_frame_psnr": psnr(gt[-1], out[-1]), "final_frame_ssim": ssim(gt[-1], out[-1]),
        "revisited_psnr": psnr(g, o, m), "never_seen_psnr": psnr(g, o, ~m),
        "all_frames_psnr": psnr(g, o), "revisited_fraction": float(pix.mean()),
        "ssim_all_frames": float(np.mean([ssim(a, b) for a, b in zip(g, o)])),
    }
    for name, region in (("all", None), ("revisited", pix), ("never_seen", ~pix)):
        for period in (16, 32):
            res[f"blockiness{period}_{name}"] = blockiness_ratio(o, g, period, region)
    return res


def _border_energy(frames: np.ndarray, period: int, region: Optional[np.ndarray]):
    """Sum of squared neighbour differences across ``period``-pixel borders and inside, and their
    counts, over pixel pairs whose both pixels lie in ``region`` (N, H, W) (all when None)."""
    x = frames.astype(np.float64).mean(-1) if frames.ndim == 4 else frames.astype(np.float64)
    sums = np.zeros(2)
    counts = np.zeros(2)
    for axis in (1, 2):
        d = np.diff(x, axis=axis) ** 2  # difference between positions j and j+1 along the axis
        n = x.shape[axis] - 1
        border = ((np.arange(n) + 1) % period) == 0  # j+1 starts a new block
        shape = [1, 1, 1]
        shape[axis] = n
        border = np.broadcast_to(border.reshape(shape), d.shape)
        ok = np.ones(d.shape, bool)
        if region is not None:
            r = region.astype(bool)
            ok = (r[:, 1:, :] & r[:, :-1, :]) if axis == 1 else (r[:, :, 1:] & r[:, :, :-1])
        sums += [d[border & ok].sum(), d[~border & ok].sum()]
        counts += [(border & ok).sum(), (~border & ok).sum()]
    return sums, counts


def blockiness(frames: np.ndarray, period: int = 16, region: Optional[np.ndarray] = None) -> float:
    """Mean squared neighbour difference across ``period``-px block borders / the same inside blocks.

    frames (N, H, W, 3) uint8 (grey = channel mean); region (N, H, W) bool or None. About 1 for a
    natural image (borders are nowhere special), large for a mosaic of flat tiles; NaN when a
    region has no pixel pairs or a frame set has no texture at all."""
    (sb, si), (nb, ni) = _border_energy(frames, period, region)
    if nb == 0 or ni == 0 or si == 0:
        return float("nan")
    return float((sb / nb) / (si / ni))


def blockiness_ratio(frames: np.ndarray, reference: np.ndarray, period: int = 16,
                     region: Optional[np.ndarray] = None) -> float:
    """``blockiness(frames) / blockiness(reference)`` over the same region: 1.0 = as smooth across
    borders as the reference (the ground truth); the issue's target is <= 1.3."""
    a, b = blockiness(frames, period, region), blockiness(reference, period, region)
    return float(a / b) if np.isfinite(a) and np.isfinite(b) and b > 0 else float("nan")


def cross_loop_correlation(frames: Sequence[np.ndarray], regions: Optional[Sequence[np.ndarray]] = None,
                           min_pixels: int = 64) -> float:
    """Mean Pearson r between the frames of different loops at the same frame index.

    frames: one (N, H, W, 3) array per loop (same N, H, W); regions: one (N, H, W) bool per loop
    (e.g. its never-seen pixels) or None. For each pair of loops and each frame index 1..N-1 the
    correlation is taken over the pixels inside both regions (grey values), skipped below
    ``min_pixels``; the result is the mean over pairs and frames. Independent scenes give ~0."""
    k = len(frames)
    if k < 2:
        return float("nan")
    grey = [f.astype(np.float64).mean(-1) for f in frames]
    rs: List[float] = []
    for a in range(k):
        for b in range(a + 1, k):
            n = min(len(grey[a]), len(grey[b]))
            for i in range(1, n):
                sel = np.ones(grey[a][i].shape, bool)
                if regions is not None:
                    sel = regions[a][i] & regions[b][i]
                if sel.sum() < min_pixels:
                    continue
                x, y = grey[a][i][sel], grey[b][i][sel]
                x, y = x - x.mean(), y - y.mean()
                den = np.sqrt((x * x).sum() * (y * y).sum())
                if den > 0:
                    rs.append(float((x * y).sum() / den))
    return float(np.mean(rs)) if rs else float("nan")


def bootstrap_ci(diffs: np.ndarray, n: int = 10000, seed: int = 0) -> List[float]:
    """Paired bootstrap 95 % interval of the mean of ``diffs`` (one difference per seed)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diffs), size=(n, len(diffs)))
    means = diffs[idx].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


MAX_SEEDS = 10_000  # a bare number above this is a seed typed as a count (it would run for days)


def parse_seeds(text, base: int) -> List[int]:
    """Seeds from ``20`` (the first 20 from ``base``), ``900700-900719`` (inclusive range) or a comma
    list of those forms; an integer argument is a count."""
    if isinstance(text, int):
        return list(range(base, base + text))
    out: List[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi < lo:
                raise ValueError(f"seeds: range {part!r} is empty")
            out.extend(range(lo, hi + 1))
        elif len(str(text).split(",")) == 1:
            n = int(part)
            if n < 1:
                raise ValueError(f"seeds: expected a count >= 1, got {n}")
            if n > MAX_SEEDS:
                raise ValueError(f"seeds: {n} is not a count of loops (at most {MAX_SEEDS}); one seed is written "
                                 f"{n}-{n} or {n},")
            out.extend(range(base, base + n))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"seeds: nothing in {text!r}")
    if len(out) > MAX_SEEDS:
        raise ValueError(f"seeds: {len(out)} loops asked for, at most {MAX_SEEDS}")
    return out
