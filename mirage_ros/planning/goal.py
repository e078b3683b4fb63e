"""Goal-conditioned scores: how much a candidate's frames look like a goal image.

``GoalView`` prepares a goal image once for the frames of one request: it is warped into the
camera the frames are compared at (the backend's own resolution, where a latent cell means what
the model's latents mean; the goal's intrinsics may differ from the imagined camera's: the warp is
the homography K_dst K_goal^-1 of a pure change of intrinsics, same pose, and pixels the goal does
not cover are left out of every comparison), encoded by the backend's codec, and then scores
frames in two spaces, each a number in [-1, 1] with 1 = identical:

- ``latent``: the cosine of the codec latents over the cells the goal covers (C x cells as one
  vector). For the shipped block-PCA codec a latent is an orthonormal projection of the
  mean-subtracted 16 x 16 block, so this is the pixel correlation of the blocks' 48 leading
  components, relative to the dataset's mean block; a zero latent (a cell the memory has not
  seen) adds nothing to the numerator and nothing to the frame's norm;
- ``pixel``: the Pearson correlation of the RGB pixels over the covered pixels (each channel's
  mean removed, pooled), at the same resolution. A constant frame (all black) scores 0.

``CandidateGoalScores`` gathers them per candidate and frame as chunks arrive and reports, per
candidate, both per-frame lists and the best frame (value and index) in the chosen space.
``pick`` is the planner's rule: ``goal`` takes the candidate with the highest best-frame
similarity, ``explore`` the one with the most ``novelty``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["GoalView", "CandidateGoalScores", "warp_intrinsics", "pick", "METRICS", "DEFAULT_METRIC",
           "GOAL_NONE", "GOAL_READOUT", "GOAL_IMAGINED"]

METRICS = ("latent", "pixel")
DEFAULT_METRIC = "latent"
# mirror msg/CandidateResult.msg
GOAL_NONE, GOAL_READOUT, GOAL_IMAGINED = 0, 1, 2


def warp_intrinsics(rgb: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray, height: int, width: int
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """An image taken with intrinsics ``K_src`` as the same camera pose would see it with ``K_dst``
    at ``height`` x ``width``: (image (H, W, 3) uint8, valid (H, W) bool). Pixel centres are
    (u + 1/2, v + 1/2) in both (the paper's convention); bilinear, invalid where the source has no pixel."""
    import cv2

    rgb = np.asarray(rgb, dtype=np.uint8)
    Ks, Kd = np.asarray(K_src, dtype=np.float64), np.asarray(K_dst, dtype=np.float64)
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    # cv2 maps integer pixel indices; index i has centre i + 1/2: shift in and out
    Hm = np.linalg.inv(half) @ Kd @ np.linalg.inv(Ks) @ half  # source index -> destination index
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    inv = np.linalg.inv(Hm)
    img = cv2.warpPerspective(rgb, inv, (int(width), int(height)), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    ones = np.full(rgb.shape[:2], 255, np.uint8)
    valid = cv2.warpPerspective(ones, inv, (int(width), int(height)), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT) > 0
    if valid.any():  # bilinear at the border mixes in black: keep only pixels whose 2x2 source is inside
        valid &= cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    return img, valid


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


class GoalView:
    """A goal image ready to score frames.

    ``rgb`` (Hg, Wg, 3) uint8; ``codec`` the backend's (``encode`` of (N, 3, H, W) in [0, 1]);
    ``size`` (H, W) and ``K`` (3, 3) of the camera frames are compared at (the backend's native
    camera); ``goal_K``: the goal's intrinsics (None: it shows the same field of view as ``K``,
    resized). Raises ``ValueError`` naming ``goal_image`` when it is unusable.
    """

    def __init__(self, rgb: np.ndarray, codec, size: Tuple[int, int], K: np.ndarray,
                 goal_K: Optional[np.ndarray] = None):
        import torch

        from ..world_model.codec import images_to_tensor

        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise ValueError(f"goal_image: expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        H, W = int(size[0]), int(size[1])
        s = int(codec.stride)
        if H % s or W % s:
            raise ValueError(f"size: {H}x{W} is not divisible by the codec stride {s}")
        self.codec, self.size, self.stride = codec, (H, W), s
        K = np.asarray(K, dtype=np.float64)
        if goal_K is None:
            img, valid = _resize(rgb[None], H, W)[0], np.ones((H, W), bool)
        else:
            img, valid = warp_intrinsics(rgb, goal_K, K, H, W)
        cells = valid.reshape(H // s, s, W // s, s).all(axis=(1, 3))
        if not cells.any():
            raise ValueError("goal_image: its field of view (goal_camera_info) does not cover one latent cell of the "
                             "imagined camera's")
        self.image, self.valid, self.cells = img, valid, cells
        self.covered = float(cells.mean())
        with torch.no_grad():
            self.latent = codec.encode(images_to_tensor(img)).float()[0]  # (C, h, w)
        self._g = self.latent[:, torch.from_numpy(cells)]  # (C, M)
        self._gpix = self._centred(img[None].astype(np.float64))[0]

    def _centred(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) -> (N, P, 3) covered pixels, each channel's mean removed."""
        v = x[:, self.valid]
        return v - v.mean(axis=1, keepdims=True)

    def latent_similarity(self, latents) -> np.ndarray:
        """(N, C, h, w) latents at the comparison camera -> (N,) cosine with the goal over covered cells."""
        import torch

        z = torch.as_tensor(latents).float()
        if z.ndim != 4 or tuple(z.shape[1:]) != tuple(self.latent.shape):
            raise ValueError(f"latents: expected (N, {', '.join(map(str, self.latent.shape))}), got {tuple(z.shape)}")
        z = z[:, :, torch.from_numpy(self.cells)]  # (N, C, M)
        num = (z * self._g).sum(dim=(1, 2))
        den = z.flatten(1).norm(dim=1) * self._g.norm()
        out = torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))
        return out.double().numpy()

    def pixel_similarity(self, frames: np.ndarray) -> np.ndarray:
        """(N, H', W', 3) uint8 frames (any size with the comparison camera's field of view: resized
        to it) -> (N,) Pearson correlation with the goal over covered pixels."""
        f = _resize(np.asarray(frames, dtype=np.uint8), *self.size).astype(np.float64)
        x = self._centred(f)
        g = self._gpix
        num = (x * g).sum(axis=(1, 2))
        den = np.sqrt((x * x).sum(axis=(1, 2)) * (g * g).sum())
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    def encode(self, frames: np.ndarray):
        """(N, H', W', 3) uint8 -> (N, C, h, w) latents at the comparison camera."""
        import torch

        from ..world_model.codec import images_to_tensor

        f = _resize(np.asarray(frames, dtype=np.uint8), *self.size)
        with torch.no_grad():
            return self.codec.encode(images_to_tensor(f)).float()

    def score_frames(self, frames: Optional[np.ndarray] = None, latents=None) -> Dict[str, np.ndarray]:
        """{"latent": (N,), "pixel": (N,)} for frames and / or their latents (latents from the frames
        when only frames are given; no pixel scores when only latents are)."""
        if latents is None and frames is None:
            raise ValueError("frames / latents: give at least one")
        out = {"latent": self.latent_similarity(latents if latents is not None else self.encode(frames))}
        if frames is not None:
            out["pixel"] = self.pixel_similarity(frames)
        return out


class CandidateGoalScores:
    """Per candidate and frame similarities to one goal, filled as frames arrive (``add``)."""

    def __init__(self, goal: GoalView, num_frames: Sequence[int], source: int = GOAL_IMAGINED):
        self.goal, self.source = goal, int(source)
        self.sims = {m: [np.full(int(n), np.nan) for n in num_frames] for m in METRICS}

    def add(self, k: int, frame_indices: Sequence[int], frames: Optional[np.ndarray] = None, latents=None) -> None:
        s = self.goal.score_frames(frames, latents)
        idx = np.asarray(list(frame_indices), dtype=np.int64)
        for m, v in s.items():
            self.sims[m][k][idx] = v

    def add_chunk(self, k: int, chunk, generative: bool) -> None:
        """A backend's ``ImaginedChunk`` of candidate ``k``: a generative backend's frames are encoded
        (at the comparison camera); a readout backend's latents are its readouts themselves (zero
        where unseen), its pixels the frames it returns (black where unseen)."""
        self.add(k, chunk.frame_indices, chunk.frames, None if generative else chunk.readouts)

    def result(self, k: int, metric: str = DEFAULT_METRIC) -> Dict:
        """{"source", "similarity" (best frame, NaN if none), "best_frame" (-1 if none), "latent", "pixel"
        (per-frame lists; NaN where not scored, pixel empty when never scored)}."""
        if metric not in METRICS:
            raise ValueError(f"goal_metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        v = self.sims[metric][k]
        ok = np.isfinite(v)
        best = int(np.nanargmax(v)) if ok.any() else -1
        pix = self.sims["pixel"][k]
        return {"source": self.source, "similarity": float(v[best]) if best >= 0 else float("nan"), "best_frame": best,
                "latent": self.sims["latent"][k].tolist(), "pixel": pix.tolist() if np.isfinite(pix).any() else []}


def pick(scores: Sequence[Dict], rule: str = "goal", rng: Optional[np.random.Generator] = None) -> int:
    """The candidate a planner takes. ``scores``: one dict per candidate with ``goal_similarity``
    (rule ``goal``: highest wins) or ``novelty`` (rule ``explore``); ``random`` draws one with
    ``rng``. Ties go to the lowest index; NaN never wins unless all are NaN (then 0)."""
    if not scores:
        raise ValueError("scores: no candidates")
    if rule == "random":
        return int((rng or np.random.default_rng()).integers(len(scores)))
    key = {"goal": "goal_similarity", "explore": "novelty"}.get(rule)
    if key is None:
        raise ValueError(f"rule: expected goal, explore or random, got {rule!r}")
    v = np.array([float(s[key]) for s in scores], dtype=np.float64)
    v = np.where(np.isfinite(v), v, -math.inf)
    return int(np.argmax(v)) if np.isfinite(v).any() else 0
