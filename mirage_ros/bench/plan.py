"""`mirage bench plan`: planning by imagination on held-out scenes where the answer is known.

A planner with a goal image asks the node for K candidate paths' views (``imagine_candidates``) and
takes the candidate whose best frame looks most like the goal (``planning.pick``, rule ``goal``; the
similarity is ``planning.GoalView``'s, the node's own). Here the right answer is known, so the
benchmark counts how often each arm picks it.

Per held-out seed (``training.seeds``: 900000+, never trained or tuned on; the rule and the
default metric were chosen on the validation block 800000+, see ``docs/planning.md``): a scene
(room or outdoor as ``sim_clip_source`` draws it, no moving object), the robot's past: the first
``--observed`` poses of a seeded closed loop, all observed with simulator depth (the memory), the
robot now at the last of them (the model starts from that frame). Two tasks, each one decision:

- ``return`` (return to a view): the goal image is what the robot saw at an earlier observed
  pose whose optical axis is at least 60 degrees from the current one;
- ``find`` (find the view): the goal pose was never observed: a random pose in the free area
  whose view the memory covers only in part (30-70 % of its latent cells).

Candidates: K paths of ``--frames`` poses from the current pose (positions linear, rotations by
slerp: ``planning.goto``), exactly one of which ends at the goal pose. The others end at poses
in the free area (half anywhere, half within 0.3 m and 20 degrees of an observed pose) with the
goal's height and pitch, a memory coverage within 0.15 of the
goal's, and the goal's rank among the candidates by coverage uniform (a seeded number of
distractors at or above it: so "how much is known" cannot tell them apart; the JSON's ``coverage_rules``
show what picking the most or the least known candidate scores), and no pose along them seeing more than
half of the goal view (its pixels re-projected by depth, occlusion ignored: a bound). Paths stay
inside the scene's free disc, which is convex and clear of objects, so all are collision-free
(``planning.scene_free_space`` checks it). K = 8 imagines the correct path and 7 distractors;
K = 4 takes the correct one and the first 3 distractors of the same rollout: a candidate's rollout
does not depend on the others in its batch (its own fork of the memory and noise seed), so its
frames are the same; ``--check-k4`` decisions per arm are also imagined as a separate K = 4 request,
which times K = 4 and measures that difference (``k4_subset_check``).

Arms, each scored by the same ``GoalView`` with its own codec:

- ``latent``: the shipped model with the latent memory (the node's default, ``make_backend("shipped")``);
- ``rgb``: the RGB point-cloud cache and the model trained on it (``--rgb-model``, default
  ``mirage_small_rgb`` beside the shipped model; skipped with one line when missing);
- ``readout``: no model, the memory readout decoded (the ``readout`` backend with the shipped codec);
- ``none``: the shipped model with its readout zeroed (the model without memory; it was trained
  with readout dropout);
- ``random``: a uniform pick (seeded).

Ties: when candidates score the same (within 1e-6) the node's rule takes the lowest index; a decision
counts 1 / (number tied) when the correct candidate is among them, the expected success of breaking
ties at random (the ``none`` arm imagines the same frames along every candidate: without the memory
the shipped model receives no camera pose, so it can only score chance).

Reported per arm: success rate over all decisions and per task and K, with a 95 % interval
(bootstrap over scenes, ``evaluation.bootstrap_ci``; the Wilson interval beside it), paired
differences against ``readout`` and ``random``, seconds per decision (imagine + score) per K,
and the success of the other metric and of the final-frame rule as secondary rows. PNGs: success
rates with intervals, and a few decisions (the goal beside every candidate's final frame per arm,
the pick outlined).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..util import write_json
from .evaluation import bootstrap_ci, parse_seeds

ARMS = ("latent", "rgb", "readout", "none", "random")
MODEL_ARMS = ("latent", "rgb", "none")
TASKS = ("return", "find")
KS = (4, 8)
VARIANTS = ("latent_best", "pixel_best", "latent_final", "pixel_final")  # metric x which frame

RETURN_MIN_ANGLE = math.radians(60)
FIND_KNOWN = (0.3, 0.7)
KNOWN_TOLERANCE = 0.15
MAX_OVERLAP = 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/bench_plan.json", help="output JSON (PNGs beside it)")
    p.add_argument("--out", default="mirage_out/bench_plan", help="folder for the decisions' frames (PNG)")
    p.add_argument("--seeds", default="8", help="held-out seeds: a count from 900000 (default "
                                                "8, each gives one decision "
                   "per task), a range 900000-900019 or a comma list")
    p.add_argument("--validation", action="store_true", help="use the validation block (800000+) instead: for tuning "
                   "the rule, never for reported figures")
    p.add_argument("--frames", type=int, default=8, help="poses per candidate (default 8: one chunk of the model)")
    p.add_argument("--observed", type=int, default=18, help="observed poses of the robot's past "
                                                            "loop (default 18 of 30)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--tasks", default=",".join(TASKS), help="return,find")
    p.add_argument("--metric", default=None, choices=["latent", "pixel"],
                   help="similarity the pick uses (default: planning.DEFAULT_METRIC)")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--rgb-model", default=None, help="the RGB-cache arm's model folder (default: "
                                                     "<model>_rgb beside it)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's own)")
    p.add_argument("--check-k4", type=int, default=2, help="decisions per model arm also imagined as a separate K=4 "
                   "request (timing and the subset check; default 2)")
    p.add_argument("--figures", type=int, default=3, help="decisions drawn in the decisions PNG (default 3)")
    p.add_argument("--bootstrap", type=int, default=10000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)


# -- tasks --------------------------------------------------------------------------------------

@dataclass
class Scene:
    """One seed's scene and the robot's past: observed frames and cameras (the last = now)."""

    seed: int
    kind: str
    scene: object
    base: object  # Camera at the model's resolution (pose ignored)
    cams: list
    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray


@dataclass
class Task:
    """One decision: the goal (pose, image, depth), K = 8 candidate paths (cameras), the correct index."""

    task: str
    goal_T: np.ndarray
    goal_rgb: np.ndarray
    goal_known: float
    paths: List[list]  # K lists of Camera
    ends: List[np.ndarray]
    correct: int
    known: List[float]
    info: Dict = field(default_factory=dict)


def make_scene(seed: int, H: int, W: int, observed: int, loop: int = 30) -> Scene:
    """The scene of ``seed`` and the first ``observed`` frames of its seeded closed loop."""
    from .. import sim
    from ..geometry import Camera
    from ..training.sim_data import sim_clip_source

    src = sim_clip_source(seed)
    scene = sim.make_scene(src["scene"], seed=seed, moving_object=False)
    poses, _ = sim.random_trajectory(scene, np.random.default_rng([seed, 18, 0]), loop, "loop")
    base = Camera.from_fov(H, W, src["fov_x_deg"])
    cams = [base.with_pose(E) for E in poses[:observed]]
    shots = [sim.render(scene, c) for c in cams]
    return Scene(seed, src["scene"], scene, base, cams, np.stack([s.rgb for s in shots]),
                 np.stack([s.depth for s in shots]), np.stack([s.labels for s in shots]))


def _memory_of(sc: Scene, codec):
    """The latent memory of the observed frames (for the tasks' coverage rules)."""
    import torch

    from ..memory import LatentSpatialMemory
    from ..sim import STATIC
    from ..world_model.codec import images_to_tensor

    mem = LatentSpatialMemory(channels=codec.channels, stride=codec.stride)
    lat = codec.encode(images_to_tensor(sc.rgb))
    for i, c in enumerate(sc.cams):
        mem.insert(lat[i], torch.from_numpy(sc.depth[i]), c, exclude=torch.from_numpy(sc.labels[i] != STATIC))
    return mem


def view_overlap(goal_cam, goal_depth: np.ndarray, cam, step: int = 4) -> float:
    """Fraction of the goal view's pixels (every ``step``-th, finite depth) that ``cam`` sees in its
    image (in front, inside the frame; occlusion ignored, so an upper bound)."""
    H, W = goal_depth.shape
    v, u = np.mgrid[step // 2:H:step, step // 2:W:step]
    d = goal_depth[v, u]
    ok = np.isfinite(d) & (d > 0)
    if not ok.any():
        return 0.0
    K = goal_cam.K.numpy()
    x = np.stack([(u[ok] + 0.5 - K[0, 2]) / K[0, 0] * d[ok], (v[ok] + 0.5 - K[1, 2]) / K[1, 1] * d[ok], d[ok]], 1)
    Pw = x @ goal_cam.camera_to_world.numpy()[:3, :3].T + goal_cam.camera_to_world.numpy()[:3, 3]
    E, K2 = cam.world_to_camera.numpy(), cam.K.numpy()
    pc = Pw @ E[:3, :3].T + E[:3, 3]
    z = pc[:, 2]
    front = z > 1e-6
    pu = K2[0, 0] * pc[:, 0] / np.where(front, z, 1) + K2[0, 2]
    pv = K2[1, 1] * pc[:, 1] / np.where(front, z, 1) + K2[1, 2]
    inside = front & (pu >= 0) & (pu < cam.width) & (pv >= 0) & (pv < cam.height)
    return float(inside.mean())


def _coverage(mem, cam) -> float:
    return float(mem.read(cam, dtype=None).coverage)


def make_task(sc: Scene, mem, task: str, k: int, n: int, rng: np.random.Generator, tries: int = 3000,
              goals: int = 6) -> Optional[Task]:
    """One decision of ``task`` (module docstring) with ``k`` candidates of ``n`` poses; None when the
    scene offers no such goal with enough distractors (``goals`` goals tried, ``tries`` draws each)."""
    from .. import sim
    from ..geometry import invert_rigid
    from ..planning import camera_pose, goto, heading_pitch, scene_free_space, view_angle

    now = sc.cams[-1].camera_to_world.numpy()
    free = scene_free_space(sc.scene)
    centre, R = sc.scene.center.numpy(), 0.9 * float(sc.scene.free_radius)
    _, pitch0 = heading_pitch(now)
    height = float(now[2, 3])

    def cam_of(T):
        return sc.base.with_pose(invert_rigid(T))

    def random_pose(pitch, z):
        r, a = R * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        return camera_pose([centre[0] + r * math.cos(a), centre[1] + r * math.sin(a), z], rng.uniform(0, 2 * math.pi),
                           pitch)

    def distractor(pitch, z, skip):
        """Half the draws anywhere in the free disc, half near an observed pose (up to 0.3 m and 20
        degrees off): an observed view is as well known as a returned-to goal, a random one rarely is."""
        if rng.uniform() < 0.5:
            return random_pose(pitch, z)
        i = int(rng.choice([j for j in range(len(sc.cams)) if j != skip]))
        T0 = sc.cams[i].camera_to_world.numpy()
        r, a = 0.3 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        p = T0[:3, 3] + [r * math.cos(a), r * math.sin(a), 0.0]
        if np.hypot(*(p[:2] - centre[:2])) > R:
            return random_pose(pitch, z)
        return camera_pose([p[0], p[1], z], heading_pitch(T0)[0] + math.radians(rng.uniform(-20, 20)), pitch)

    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    far = [i for i, c in enumerate(sc.cams[:-1]) if view_angle(c.camera_to_world.numpy(), now) >= RETURN_MIN_ANGLE]
    for _attempt in range(goals):
        if task == "return":
            if not far:
                return None
            gi = int(rng.choice(far))
            goal_T, info = sc.cams[gi].camera_to_world.numpy(), {"goal_observed_index": gi}
        else:
            goal_T, info, gi = None, {}, -1
            for _ in range(tries):
                T = random_pose(pitch0, height)
                if FIND_KNOWN[0] <= _coverage(mem, cam_of(T)) <= FIND_KNOWN[1]:
                    goal_T = T
                    break
            if goal_T is None:
                return None
        gcam = cam_of(goal_T)
        shot = sim.render(sc.scene, gcam)
        g_known = _coverage(mem, gcam)
        _, g_pitch = heading_pitch(goal_T)
        # the goal's rank by coverage among the candidates is uniform: so many distractors above it
        want_above = int(rng.integers(0, k))
        ends, known, above, below = [goal_T], [g_known], 0, 0
        for _ in range(tries):
            if len(ends) == k:
                break
            T = distractor(g_pitch, float(goal_T[2, 3]), gi)
            kn = _coverage(mem, cam_of(T))
            up = kn >= g_known  # ties (fully known views) count as above
            full = (up and above >= want_above) or (not up and below >= k - 1 - want_above)
            if abs(kn - g_known) > KNOWN_TOLERANCE or full:
                continue
            path = goto(now, T, n)
            if max(view_overlap(gcam, shot.depth, cam_of(P)) for P in path) > MAX_OVERLAP:
                continue
            ends.append(T)
            known.append(kn)
            above, below = above + up, below + (not up)
        if len(ends) == k:
            break
    else:
        return None
    info.update(goal_view_angle_from_now_deg=math.degrees(view_angle(goal_T, now)),
                goal_distance_from_now_m=float(np.linalg.norm(goal_T[:3, 3] - now[:3, 3])),
                distractors_above=want_above)
    paths = [goto(now, T, n) for T in ends]
    if not all(free(p[:, :3, 3]).all() for p in paths):
        raise RuntimeError(f"seed {sc.seed}: a candidate path left free space (the free disc should be clear)")
    order = rng.permutation(k)  # slot of each drawn end: the correct one (draw 0) lands at order[0]
    cand = [0] * k
    for j, slot in enumerate(order):
        cand[slot] = j
    return Task(task, goal_T, shot.rgb, g_known, [[cam_of(P) for P in paths[j]] for j in cand],
                [ends[j] for j in cand], int(order[0]), [known[j] for j in cand], info)


def subset(t: Task, k: int) -> List[int]:
    """Candidate indices of the K-candidate decision: the correct one and the first k-1 others, in
    their K = 8 order (the correct one is distractor number 0 in the draw)."""
    others = [i for i in range(len(t.paths)) if i != t.correct]
    return sorted([t.correct] + others[: k - 1])


# -- arms ---------------------------------------------------------------------------------------

def load_arms(arms, model_dir: Path, rgb_dir: Path, device: str, steps: Optional[int]) -> Dict[str, object]:
    """{arm: backend} for the arms that can run; an arm whose model folder is missing is skipped
    with one line (``random`` needs none)."""
    from ..baselines.rgb_memory import RGBPointCloudMemory
    from ..world_model.backend import make_backend

    out = {}
    for arm in arms:
        if arm == "random":
            out[arm] = None
            continue
        folder = rgb_dir if arm == "rgb" else model_dir
        if not (folder / "model_index.json").is_file():
            print(f"bench plan: arm {arm!r} skipped: no model at {folder}")
            continue
        if arm == "readout":
            import json

            from ..memory import LatentSpatialMemory
            from ..world_model.backend import ReadoutBackend
            from ..world_model.codec import load_codec

            codec = load_codec(folder / json.loads((folder / "model_index.json").read_text()).get("codec", "codec"))
            out[arm] = ReadoutBackend(LatentSpatialMemory(channels=codec.channels, stride=codec.stride, device=device),
                                      codec)
            continue
        b = make_backend("shipped", weights=str(folder), device=device, steps=steps, depth="memory", masks="none")
        b.model.transformer.eval()
        if arm == "rgb":
            b.memory = RGBPointCloudMemory(b.model.codec, splat="footprint")
        if arm == "none":
            b.readout_scale = 0.0
        out[arm] = b
    return out


def observe(backend, sc: Scene) -> None:
    from ..sim import STATIC

    backend.reset()
    for i, c in enumerate(sc.cams):
        backend.observe(sc.rgb[i], sc.depth[i], c, exclude=sc.labels[i] != STATIC)


def imagine(backend, t: Task, ids: List[int], keep_frames: bool = False) -> Dict:
    """One request of candidates ``ids``: per candidate and variant the similarity, the seconds
    (imagine + score) and, with ``keep_frames``, every candidate's final frame."""
    from ..planning import CandidateGoalScores, GoalView

    t0 = time.perf_counter()
    native = backend.native_camera(t.paths[0][0])
    goal = GoalView(t.goal_rgb, backend.codec, (native.height, native.width), native.K.numpy(), native.K.numpy())
    trajs = [t.paths[i] for i in ids]
    gs = CandidateGoalScores(goal, [len(p) for p in trajs])
    finals = {}
    for k, chunk in backend.imagine_candidates(trajs):
        gs.add_chunk(k, chunk, backend.generative)
        if keep_frames and len(trajs[k]) - 1 in chunk.frame_indices:
            finals[ids[k]] = chunk.frames[list(chunk.frame_indices).index(len(trajs[k]) - 1)]
    sec = time.perf_counter() - t0
    sims = {}
    for j, i in enumerate(ids):
        lat, pix = np.asarray(gs.sims["latent"][j]), np.asarray(gs.sims["pixel"][j])
        sims[i] = {"latent_best": float(np.nanmax(lat)), "pixel_best": float(np.nanmax(pix)),
                   "latent_final": float(lat[-1]), "pixel_final": float(pix[-1]),
                   "latent_best_frame": int(np.nanargmax(lat)), "pixel_best_frame": int(np.nanargmax(pix))}
    return {"seconds": sec, "sims": sims, "finals": finals}


TIE = 1e-6  # similarities this close count as equal


def decide(sims: Dict[int, Dict], ids: List[int], variant: str):
    """(the candidate the rule ``goal`` picks among ``ids`` by ``variant`` (index into the K = 8 list;
    ``planning.pick``: the lowest index among equals), the candidates tied with it)."""
    from ..planning import pick

    choice = ids[pick([{"goal_similarity": sims[i][variant]} for i in ids], "goal")]
    best = sims[choice][variant]
    return choice, [i for i in ids if np.isfinite(best) and sims[i][variant] >= best - TIE]


def success(correct: int, choice: int, tied: List[int]) -> float:
    """1 for the right pick; with ties, the expected success of breaking them at random (1 / ties when
    the correct one is among them): a planner whose candidates all look the same scores chance."""
    if len(tied) > 1:
        return 1.0 / len(tied) if correct in tied else 0.0
    return float(choice == correct)


# -- statistics ---------------------------------------------------------------------------------

def wilson(successes: float, n: int, z: float = 1.959964) -> List[float]:
    """Wilson score 95 % interval of a binomial proportion."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, c - h), min(1.0, c + h)]


def rate(rows: List[Dict], n_boot: int) -> Dict:
    """Success rate of decision rows ({"seed", "success"}) with the bootstrap-over-scenes and Wilson 95 % intervals."""
    if not rows:
        return {"success_rate": None, "ci95": [None, None], "n": 0}
    by_seed: Dict[int, List[float]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append(float(r["success"]))
    per_seed = np.array([np.mean(v) for v in by_seed.values()])
    s = float(sum(r["success"] for r in rows))
    return {"success_rate": s / len(rows), "ci95": bootstrap_ci(per_seed, n_boot), "wilson95": wilson(s, len(rows)),
            "successes": s, "n": len(rows), "scenes": len(by_seed),
            "tied_decisions": int(sum(1 for r in rows if r.get("tied", 0) > 1))}


def paired(rows: List[Dict], base: List[Dict], n_boot: int) -> Dict:
    """Mean success difference (arm - base) over the same decisions, bootstrap over scenes."""
    key = lambda r: (r["seed"], r["task"], r["K"])  # noqa: E731
    b = {key(r): r["success"] for r in base}
    diffs: Dict[int, List[float]] = {}
    for r in rows:
        if key(r) in b:
            diffs.setdefault(r["seed"], []).append(float(r["success"]) - float(b[key(r)]))
    if not diffs:
        return {"difference": None, "ci95": [None, None]}
    per_seed = np.array([np.mean(v) for v in diffs.values()])
    n = sum(len(v) for v in diffs.values())
    return {"difference": float(sum(sum(v) for v in diffs.values()) / n), "ci95": bootstrap_ci(per_seed, n_boot)}


# -- the run ------------------------------------------------------------------------------------

def run(args) -> int:
    import json

    import torch

    from ..planning import DEFAULT_METRIC
    from ..training.seeds import HELD_OUT_BASE, VALIDATION_BASE
    from ..world_model.backend import SHIPPED_MODEL
    from ..world_model.codec import load_codec

    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [a for a in arms if a not in ARMS] + [t for t in tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"bench plan: unknown arms/tasks {bad} (arms: {', '.join(ARMS)}; tasks: {', '.join(TASKS)})")
    if args.frames < 1 or args.observed < 2:
        raise SystemExit("bench plan: --frames must be >= 1 and --observed >= 2")
    base = VALIDATION_BASE if args.validation else HELD_OUT_BASE
    try:
        seeds = parse_seeds(args.seeds, base)
    except ValueError as exc:
        raise SystemExit(f"bench plan: {exc}") from None
    block = "validation" if args.validation else "held_out"
    outside = [s for s in seeds if not base <= s < base + 10_000]
    if outside:
        raise SystemExit(f"bench plan: seeds {outside[:3]} are outside the {block} block [{base}, {base + 10_000})")
    metric = args.metric or DEFAULT_METRIC
    model_dir = Path(args.model) if args.model else SHIPPED_MODEL
    rgb_dir = Path(args.rgb_model) if args.rgb_model else model_dir.parent / (model_dir.name + "_rgb")
    if not (model_dir / "model_index.json").is_file():
        raise SystemExit(f"bench plan: no model at {model_dir} (model_index.json missing)")
    index = json.loads((model_dir / "model_index.json").read_text())
    H, W = (int(x) for x in index.get("resolution") or (128, 224))
    codec = load_codec(model_dir / index.get("codec", "codec"))
    backends = load_arms(arms, model_dir, rgb_dir, args.device, args.steps)
    arms = [a for a in arms if a in backends]
    out = Path(args.out)
    rows: Dict[str, Dict[str, List[Dict]]] = {v: {a: [] for a in arms} for v in VARIANTS}
    seconds = {a: {K: [] for K in KS} for a in arms}
    k4_check: Dict[str, List[float]] = {a: [] for a in arms}
    figures, decisions, tasks_info = [], [], []
    coverage_rows: Dict[str, List[Dict]] = {"most_known": [], "least_known": []}
    rng_pick = np.random.default_rng(18)
    checked = {a: 0 for a in arms}
    t_start = time.perf_counter()
    print(f"bench plan: {len(seeds)} {block} seeds x tasks {tasks}, K = {list(KS)}, arms {arms}, "
          f"{args.frames} poses per "
          f"candidate, metric {metric}, torch threads {torch.get_num_threads()}, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    for si, seed in enumerate(seeds):
        sc = make_scene(seed, H, W, args.observed)
        mem = _memory_of(sc, codec)
        made = [(task, make_task(sc, mem, task, max(KS), args.frames, np.random.default_rng([seed, 18, 1 + ti])))
                for ti, task in enumerate(tasks)]
        for task, t in made:
            if t is None:
                print(f"bench plan: seed {seed}: no {task} task in this scene (skipped)")
        made = [(task, t) for task, t in made if t is not None]
        for task, t in made:
            tasks_info.append({"seed": seed, "scene": sc.kind, "task": task, "correct": t.correct,
                               "goal_known": t.goal_known,
                               "known": t.known, "goal_pose": t.goal_T.tolist(),
                               **{k: v for k, v in t.info.items() if k not in ("finals", "picks")}})
            for K in KS:
                ids = subset(t, K)
                for name, sign in (("most_known", 1.0), ("least_known", -1.0)):
                    cov = {i: {"known": sign * t.known[i]} for i in ids}
                    choice, tied = decide(cov, ids, "known")
                    coverage_rows[name].append({"seed": seed, "task": task, "K": K, "tied": len(tied),
                                                "success": success(t.correct, choice, tied)})
        for arm in arms:
            b = backends[arm]
            if b is not None:
                observe(b, sc)
            for task, t in made:
                all_ids = list(range(len(t.paths)))
                if b is None:
                    res = {"seconds": 0.0, "sims": {}, "finals": {}}
                else:
                    res = imagine(b, t, all_ids, keep_frames=len(figures) < args.figures)
                    seconds[arm][8].append(res["seconds"])
                    if arm in MODEL_ARMS + ("readout",) and checked[arm] < args.check_k4:
                        ids4 = subset(t, 4)
                        r4 = imagine(b, t, ids4)
                        seconds[arm][4].append(r4["seconds"])
                        k4_check[arm].append(max(abs(r4["sims"][i][v] - res["sims"][i][v]) for i in ids4
                                                 for v in ("latent_best", "pixel_best")))
                        checked[arm] += 1
                for K in KS:
                    ids = subset(t, K)
                    for v in VARIANTS:
                        if b is None:
                            choice, tied = ids[int(rng_pick.integers(len(ids)))], []
                        else:
                            choice, tied = decide(res["sims"], ids, v)
                        rows[v][arm].append({"seed": seed, "scene": sc.kind, "task": task, "K": K, "choice": choice,
                                             "correct": t.correct, "tied": len(tied),
                                             "success": success(t.correct, choice, tied)})
                if res["finals"]:
                    t.info.setdefault("finals", {})[arm] = res["finals"]
                    t.info.setdefault("picks", {})[arm] = decide(res["sims"], all_ids, f"{metric}_best")[0]
                decisions.append({"seed": seed, "task": task, "arm": arm, "seconds": res["seconds"],
                                  "similarities": {str(i): s for i, s in res["sims"].items()}})
        for _task, t in made:
            if "finals" in t.info and len(figures) < args.figures:
                figures.append((seed, sc.kind, t))
        done = {a: sum(r["success"] for r in rows[f"{metric}_best"][a] if r["K"] == 8) for a in arms}
        n8 = sum(1 for r in rows[f"{metric}_best"][arms[0]] if r["K"] == 8) if arms else 0
        print(f"bench plan: seed {seed} ({sc.kind}) done [{si + 1}/{len(seeds)}, "
              f"{time.perf_counter() - t_start:.0f} s]: "
              f"K=8 successes so far " + ", ".join(f"{a} {done[a]}/{n8}" for a in arms), flush=True)

    main = f"{metric}_best"
    summary = {}
    for arm in arms:
        r = rows[main][arm]
        d = rate(r, args.bootstrap)
        d["chance"] = float(np.mean([1.0 / x["K"] for x in r])) if r else None
        d["by"] = {f"{task}_k{K}": rate([x for x in r if x["task"] == task and x["K"] == K], args.bootstrap)
                   for task in tasks for K in KS}
        d["by_k"] = {f"k{K}": rate([x for x in r if x["K"] == K], args.bootstrap) for K in KS}
        d["variants"] = {v: rate(rows[v][arm], args.bootstrap)["success_rate"] for v in VARIANTS}
        for other in ("readout", "random"):
            if other in rows[main] and other != arm:
                d[f"minus_{other}"] = paired(r, rows[main][other], args.bootstrap)
        secs = {f"k{K}": (float(np.median(seconds[arm][K])) if seconds[arm][K] else None) for K in KS}
        d["seconds_per_decision"] = secs
        d["k4_subset_check_max_abs_similarity_difference"] = max(k4_check[arm]) if k4_check[arm] else None
        summary[arm] = d
    some = next((b for b in backends.values() if b is not None and getattr(b, "generative", False)), None)
    result = {
        "benchmark": "plan", "block": block, "seeds": seeds, "tasks": tasks, "ks": list(KS), "metric": metric,
        "rule": "goal: the candidate whose best frame is most similar to the goal image (planning.pick)",
        "model": str(model_dir), "rgb_model": str(rgb_dir) if "rgb" in backends else None,
        "model_description": some.description if some is not None else None,
        "sampler": some.model.sampler.config() if some is not None else None,
        "resolution": [H, W], "poses_per_candidate": args.frames, "observed_poses": args.observed,
        "task_rules": {"return_min_view_angle_deg": math.degrees(RETURN_MIN_ANGLE), "find_known": list(FIND_KNOWN),
                       "distractor_known_tolerance": KNOWN_TOLERANCE, "distractor_max_overlap": MAX_OVERLAP},
        "none_arm": "the shipped model with its readout zeroed (trained with readout dropout), not a separate model",
        "k4": "the correct candidate and the first 3 distractors of the K = 8 rollout (see k4_subset_check)",
        "ci95": "bootstrap over scenes (evaluation.bootstrap_ci of per-scene success); wilson95 "
                "assumes independent decisions",
        "arms": summary,
        "coverage_rules": {name: rate(r, args.bootstrap) for name, r in coverage_rows.items()},
        "tasks_made": tasks_info,
        "decisions": rows[main],
        "similarities": decisions,
        "seconds_total": time.perf_counter() - t_start,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_avg_end": os.getloadavg()[0]},
    }
    path = write_json(args.json, result)
    try:
        _plot(path.with_suffix(".png"), result, arms, tasks)
        if figures:
            _plot_decisions(path.with_name(path.stem + "_decisions.png"), figures, arms, out)
    except Exception as exc:  # noqa: BLE001 - the JSON is the result; a chart is a convenience
        print(f"bench plan: no chart ({type(exc).__name__}: {exc})")
    for arm in arms:
        d = summary[arm]
        lo, hi = d["ci95"]
        print(f"  {arm:8s} success {d['success_rate']:.2f} (95 % {lo:.2f}..{hi:.2f}, n={d['n']}, chance "
              f"{d['chance']:.2f}); "
              + ", ".join(f"{k} {v['success_rate']:.2f}" for k, v in d["by"].items() if v["n"])
              + (f"; {d['seconds_per_decision']['k8']:.1f} s per K=8 decision"
                 if d["seconds_per_decision"]["k8"] else ""))
    print(f"bench plan: -> {path}")
    return 0


def _plot(png: Path, result: Dict, arms, tasks) -> None:
    """Success rate per arm with its 95 % interval, per task and K; chance as a dashed line."""
    from ..viz import plt

    p = plt()
    groups = [f"{t}_k{K}" for t in tasks for K in KS]
    fig, ax = p.subplots(figsize=(2.2 + 1.6 * len(groups), 3.8))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        by = result["arms"][arm]["by"]
        xs, ys, lo, hi = [], [], [], []
        for g, name in enumerate(groups):
            r = by[name]
            if not r["n"]:
                continue
            xs.append(g + (i - (len(arms) - 1) / 2) * width)
            ys.append(r["success_rate"])
            lo.append(r["success_rate"] - r["ci95"][0])
            hi.append(r["ci95"][1] - r["success_rate"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=arm)
    for g, name in enumerate(groups):
        K = int(name.rsplit("k", 1)[1])
        ax.plot([g - 0.45, g + 0.45], [1 / K, 1 / K], "k--", lw=0.8)
    ax.set_xticks(range(len(groups)), [g.replace("_k", ", K=") for g in groups])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95 % interval)")
    ax.set_title(f"planning by imagination: {len(result['seeds'])} {result['block']} scenes, metric {result['metric']} "
                 f"(dashed: chance)", fontsize=9)
    ax.legend(fontsize=7, ncol=len(arms))
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    p.close(fig)


def _plot_decisions(png: Path, figures, arms, out: Path) -> None:
    """Per drawn decision: the goal, then each arm's final frame of every candidate (K = 8); the
    correct candidate labelled, the arm's pick framed in green (right) or red (wrong). Frames also
    written to OUT/<seed>_<task>/."""
    import cv2

    from ..viz import image_grid, label_image, plt, write_png

    p = plt()
    rows = []
    for seed, _kind, t in figures:
        folder = out / f"{seed}_{t.task}"
        folder.mkdir(parents=True, exist_ok=True)
        write_png(folder / "goal.png", t.goal_rgb)
        blank = np.full_like(t.goal_rgb, 255)
        for arm in arms:
            finals = t.info.get("finals", {}).get(arm)
            if not finals:
                continue
            tiles = [label_image(t.goal_rgb, f"goal {t.task} {seed}") if arm == arms[0] else blank]
            pickd = t.info["picks"][arm]
            for i in range(len(t.paths)):
                f = np.ascontiguousarray(finals[i])
                write_png(folder / f"{arm}_{i}.png", f)
                f = label_image(f, f"{arm} {i}" + (" (goal)" if i == t.correct else ""))
                if i == pickd:
                    col = (0, 200, 0) if i == t.correct else (230, 0, 0)
                    cv2.rectangle(f, (1, 1), (f.shape[1] - 2, f.shape[0] - 2), col, 3)
                tiles.append(f)
            rows.append(tiles)
    grid = image_grid(rows)
    fig = p.figure(figsize=(grid.shape[1] / 110, grid.shape[0] / 110))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(grid)
    ax.axis("off")
    fig.savefig(png, dpi=110)
    p.close(fig)
