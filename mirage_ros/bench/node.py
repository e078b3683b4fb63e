"""`mirage bench node`: mirage_node as its own process, measured from a second rclpy process.

1. first_frame_latency_ms: goal accepted (the goal response reaches the probe) -> first
   imagined/image received by the probe, for a 9-frame Path at 256x448 with the readout backend
   (median over ``--goals`` goals after warm-up; p90, min, max and the node's own share too).
2. sustained_input_hz: complete input sets (1280x704 rgb8 image + camera_info + pose + 32FC1
   depth) per second that the node takes in without falling behind: the highest offered rate
   at which it completes >= 95 % of the sets offered (a sweep of rates, ``--duration`` s each).
   Sensor QoS is BEST_EFFORT depth 1, so a node that cannot keep up drops, never queues.
3. pointcloud_1m_ms: build and publish a 1,000,000-point PointCloud2 (xyz + rgb) as the node
   does (structured array -> message -> publish on the latched memory/points QoS with a
   subscriber in the node process), median of ``--repeats``; plus the delivery time.

All traffic stays on this host: ``--transport shm`` (default) adds Fast DDS shared memory to
UDP on 127.0.0.1; ``--transport udp`` is the tests' UDP-only loopback profile, over which Fast
DDS 2.14 with the LOCALHOST discovery range delivers no best-effort sample above ~0.5 MB (see
config/fastdds_local_shm.xml), so 1280x704 sets never complete there. Writes the JSON and a PNG.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

from ..util import dumps_json, write_json

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/bench_node.json", help="output JSON path (a PNG is written beside it)")
    p.add_argument("--goals", type=int, default=30, help="goals timed for the first-frame latency")
    p.add_argument("--rates", default="2,5,10,20,40,60,100,150,200", help="offered input rates (sets/s) at 1280x704")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per offered rate")
    p.add_argument("--points", type=int, default=1_000_000, help="points in the PointCloud2 timing")
    p.add_argument("--repeats", type=int, default=7, help="PointCloud2 timing repeats")
    p.add_argument("--chunk-size", type=int, default=9, help="node chunk_size (frames per chunk)")
    p.add_argument("--backend", choices=("readout", "shipped"), default="readout",
                   help="readout (memory only, milliseconds) or shipped (the node's default: the trained world model)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: input,pointcloud")
    p.add_argument("--transport", choices=("shm", "udp"), default="shm",
                   help="shm: config/fastdds_local_shm.xml (shared memory + UDP on 127.0.0.1, the same-host default of "
                        "ROS 2); udp: config/fastdds_loopback.xml (UDP on 127.0.0.1 only, as the tests run)")
    p.add_argument("--keep-log", action="store_true", help="print the node's log at the end")


PROFILES = {"shm": "fastdds_local_shm.xml", "udp": "fastdds_loopback.xml"}


def _loopback_env(transport: str = "shm") -> None:
    """This host only, before rclpy.init (the node process inherits it)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    os.environ.pop("ROS_STATIC_PEERS", None)
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" / PROFILES[transport])
    os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
    os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    os.environ["PYTHONUNBUFFERED"] = "1"


def _wait(pred, timeout, what):
    from ..ros.probe import wait_for

    try:
        return wait_for(pred, timeout, every=0.005, what=what)
    except TimeoutError as exc:
        raise TimeoutError(f"bench node: {exc}") from None


class _Bench:
    """The shared rclpy probe (``mirage_ros.ros.probe.Probe``, single-threaded executor) set up for
    the bench: RELIABLE depth-1 sensor publishers, imagined/image and memory/stats recorded."""

    def __init__(self, ns: str):
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import CameraInfo, Image

        from mirage_ros.action import Imagine
        from mirage_ros.msg import MemoryStats

        from ..ros.probe import Probe

        self.ns = ns
        self.probe = Probe("mirage_bench_probe", threads=1)
        self.node = self.probe.node
        self.pubs = {k: self.probe.pub(f"{ns}/{k}", t, reliable=True, depth=1)
                     for k,
                     t in (("image", Image), ("camera_info", CameraInfo), ("pose", PoseStamped), ("depth", Image))}
        self.image_topic, self.stats_topic = f"{ns}/imagined/image", f"{ns}/memory/stats"
        self.probe.listen(self.image_topic, Image, keep=1000)
        self.probe.listen(self.stats_topic, MemoryStats, keep=5)
        self.action = self.probe.action_client(ns, wait=False)
        self.Imagine = Imagine

    @property
    def images(self):
        """receive times (perf_counter) of imagined/image since the last clear_images()"""
        with self.probe.lock:
            return [t for t, _ in self.probe.received.get(self.image_topic, [])]

    def clear_images(self):
        self.probe.clear(self.image_topic)

    @property
    def stats(self):
        """(receive time, newest memory/stats) or None"""
        with self.probe.lock:
            lst = self.probe.received.get(self.stats_topic, [])
            return lst[-1] if lst else None

    def fresh_stats(self, timeout=10.0):
        return self.probe.stats(self.ns, fresh_after=time.perf_counter(), timeout=timeout)

    def close(self):
        self.probe.close()


def _set_msgs(types, cam, frame, stamp):
    from mirage_ros.ros import convert as cv

    return {
        "image": cv.image_msg(types, frame.rgb, stamp, "camera_optical_frame"),
        "camera_info": cv.camera_info_msg(types, cam.K.numpy(), cam.height, cam.width, stamp, "camera_optical_frame"),
        "pose": cv.pose_stamped_msg(types, cam.camera_to_world.numpy(), stamp, "map"),
        "depth": cv.image_msg(types, frame.depth.astype("float32"), stamp, "camera_optical_frame", "32FC1"),
    }


def _stamp(msgs, ns_):
    from mirage_ros.ros import convert as cv

    sec, nsec = cv.ns_to_stamp(ns_)
    for m in msgs.values():
        m.header.stamp.sec, m.header.stamp.nanosec = sec, nsec


def latency(probe, types, sim, args, log):
    import numpy as np

    from mirage_ros.ros import convert as cv

    scene = sim.make_scene("room", 0)
    traj = sim.scene_trajectory(scene, "loop", 46)
    cams = [sim.default_camera(256, 448).with_pose(E) for E in traj]
    frame = sim.render(scene, cams[0])
    msgs = _set_msgs(types, cams[0], frame, 10**9)
    for p in probe.pubs.values():
        _wait(lambda p=p: p.get_subscription_count() > 0, 60, f"the node to subscribe {p.topic_name}")
    for k in range(100):
        _stamp(msgs, 10**9 + k)
        for name in ("camera_info", "pose", "depth", "image"):
            probe.pubs[name].publish(msgs[name])
        try:
            _wait(lambda: probe.stats and probe.stats[1].num_points > 0, 0.5, "the first observation")
            break
        except TimeoutError:
            continue
    _wait(lambda: probe.action.server_is_ready(), 30, "the imagine action server")
    T = np.stack([c.camera_to_world.numpy() for c in cams[:9]])
    rows = []
    for g in range(args.goals + 3):
        stamps = [20 * 10**9 + g * 10**9 + i * 10**8 for i in range(9)]
        goal = probe.Imagine.Goal(path=cv.path_msg(types, T, stamps, "map"), num_frames=0)
        probe.clear_images()
        fut = probe.action.send_goal_async(goal)
        _wait(fut.done, 30, "the goal response")
        t_acc = time.perf_counter()
        gh = fut.result()
        _wait(lambda: len(probe.images) >= 9, 600, "9 imagined frames")
        rf = gh.get_result_async()
        _wait(rf.done, 600, "the result")
        res = rf.result().result
        first = probe.images[0]
        if g >= 3:  # warm-up goals are not timed
            rows.append({"probe_ms": 1e3 * (first - t_acc), "node_first_frame_ms": 1e3 * res.first_frame_latency,
                         "node_total_ms": 1e3 * res.total_time, "status": int(res.status)})
        time.sleep(0.05)
    lat = sorted(r["probe_ms"] for r in rows)
    out = {
        "resolution": [256, 448], "frames": 9, "chunk_size": args.chunk_size, "goals": len(rows),
        "median_ms": statistics.median(lat), "p90_ms": lat[int(0.9 * (len(lat) - 1))], "min_ms": lat[0],
        "max_ms": lat[-1],
        "node_side_median_ms": statistics.median(r["node_first_frame_ms"] for r in rows),
        "node_total_median_ms": statistics.median(r["node_total_ms"] for r in rows),
        "all_succeeded": all(r["status"] == 0 for r in rows), "samples_ms": [r["probe_ms"] for r in rows],
    }
    log(f"first-frame latency: median {out['median_ms']:.1f} ms (p90 {out['p90_ms']:.1f}, node side "
        f"{out['node_side_median_ms']:.1f})")
    return out


def input_rate(probe, types, sim, args, log):
    scene = sim.make_scene("room", 0)
    cam = sim.default_camera(704, 1280).with_pose(sim.scene_trajectory(scene, "loop", 46)[0])
    frame = sim.render(scene, cam)
    msgs = _set_msgs(types, cam, frame, 10**9)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    sweep = []
    k = 0
    base = 100 * 10**9
    for rate in rates:
        time.sleep(0.5)
        s0 = probe.fresh_stats()
        n = max(1, int(round(rate * args.duration)))
        period = 1.0 / rate
        t0 = time.perf_counter()
        late = 0
        for i in range(n):
            target = t0 + i * period
            now = time.perf_counter()
            if now < target:
                time.sleep(target - now)
            elif now - target > period:
                late += 1
            _stamp(msgs, base + k * 10**7)
            k += 1
            for name in ("camera_info", "pose", "depth", "image"):
                probe.pubs[name].publish(msgs[name])
        offered = n / (time.perf_counter() - t0)
        time.sleep(max(0.6, 2 * period))
        s1 = probe.fresh_stats()
        sets = s1.sets_completed - s0.sets_completed
        row = {"rate_hz": rate, "offered_hz": offered, "sets_offered": n, "sets_completed": sets,
               "fraction": sets / n, "messages_received": s1.messages_received - s0.messages_received,
               "frames_observed": s1.frames_observed - s0.frames_observed, "probe_late": late,
               "rejected": s1.inputs_rejected - s0.inputs_rejected}
        sweep.append(row)
        log(f"input {rate:5.1f} Hz offered {offered:5.1f}: node completed {sets}/{n} sets ({100 * sets / n:.0f} %), "
            f"{row['frames_observed']} written to memory")
    ok = [r for r in sweep if r["fraction"] >= 0.95 and r["offered_hz"] >= 0.9 * r["rate_hz"]]
    best = max(ok, key=lambda r: r["offered_hz"]) if ok else None
    return {"resolution": [704, 1280], "encoding": "rgb8", "set": "image rgb8 + camera_info + pose + depth 32FC1",
            "bytes_per_set": int(frame.rgb.nbytes + frame.depth.astype("float32").nbytes),
            "sweep": sweep, "sustained_hz": best["offered_hz"] if best else 0.0,
            "sustained_rate_setting_hz": best["rate_hz"] if best else 0.0}


def pointcloud(probe, args, log):
    import numpy as np
    from sensor_msgs.msg import PointCloud2

    from mirage_ros.ros import convert as cv
    from mirage_ros.ros import outputs as out
    from mirage_ros.ros import qos

    types = cv.RclpyTypes()
    rng = np.random.default_rng(0)
    n = args.points
    pts = rng.normal(size=(n, 3)).astype(np.float32)
    col = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    topic = f"{probe.ns}/bench/points"
    pub = probe.node.create_publisher(PointCloud2, topic, qos.profile("latched"))
    got = []
    probe.node.create_subscription(PointCloud2, topic, lambda m: got.append((time.perf_counter(), m.width)),
                                   qos.profile("results", depth=1))
    _wait(lambda: pub.get_subscription_count() > 0, 30, "a subscriber to the cloud")
    rows = []
    for r in range(args.repeats + 1):
        got.clear()
        t0 = time.perf_counter()
        cloud = cv.xyzrgb_to_structured(pts, col)
        t1 = time.perf_counter()
        msg = out.cloud_msg(types, cloud, 10**9 + r, "map")
        t2 = time.perf_counter()
        pub.publish(msg)
        t3 = time.perf_counter()
        _wait(lambda: got, 30, "the cloud to arrive")
        if r:
            rows.append({"structured_ms": 1e3 * (t1 - t0), "message_ms": 1e3 * (t2 - t1), "publish_ms": 1e3 * (t3 - t2),
                         "total_ms": 1e3 * (t3 - t0), "delivered_ms": 1e3 * (got[0][0] - t0)})
        time.sleep(0.1)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    log(f"PointCloud2 of {n} points: build+publish {med['total_ms']:.1f} ms (structured {med['structured_ms']:.1f}, "
        f"message {med['message_ms']:.1f}, publish {med['publish_ms']:.1f}); delivered after {med['delivered_ms']:.1f} "
        f"ms")
    return {"points": n, "bytes": 16 * n, **{f"median_{k}": v for k, v in med.items()}, "samples": rows}


def plot(result, path: Path) -> None:
    from ..viz import plt

    pyplot = plt()
    fig, ax = pyplot.subplots(1, 3, figsize=(15, 4))
    lat = result["latency"]
    limit = 50 if result.get("backend", "readout") == "readout" else 1500
    ax[0].hist(lat["samples_ms"], bins=15, color="tab:blue")
    ax[0].axvline(limit, color="red", ls="--", label=f"goal {limit} ms ({result.get('backend', 'readout')})")
    ax[0].axvline(lat["median_ms"], color="black", label=f"median {lat['median_ms']:.1f} ms")
    ax[0].set(xlabel="ms", ylabel="goals", title="goal accepted -> first imagined/image (9 frames, 256x448)")
    ax[0].legend(fontsize=8)
    if "input" not in result or "pointcloud" not in result:
        for a in ax[1:]:
            a.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)
        return
    sw = result["input"]["sweep"]
    ax[1].plot([r["offered_hz"] for r in sw],
               [r["sets_completed"] / max(1e-9, r["sets_offered"]) * r["offered_hz"] for r in sw], "o-",
               label="completed by the node")
    ax[1].plot([r["offered_hz"] for r in sw], [r["offered_hz"] for r in sw], "k--", lw=0.8, label="offered")
    ax[1].plot([r["offered_hz"] for r in sw], [r["frames_observed"] / result["input"]["duration_s"] for r in sw], "s:",
               label="written to memory")
    ax[1].set(xlabel="offered sets/s (1280x704 rgb8 + depth)", ylabel="sets/s",
              title=f"sustained input: {result['sustained_input_hz']:.1f} Hz")
    ax[1].legend(fontsize=8)
    pc = result["pointcloud"]
    parts = ["structured", "message", "publish"]
    ax[2].bar(parts, [pc[f"median_{p}_ms"] for p in parts], color="tab:green")
    ax[2].axhline(100, color="red", ls="--", label="goal 100 ms (total)")
    ax[2].set(ylabel="ms", title=f"1M-point PointCloud2: {pc['median_total_ms']:.1f} ms total")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def run(args) -> int:
    _loopback_env(args.transport)
    from ..ros.probe import ros_unavailable

    why = ros_unavailable()
    if why is not None:
        print(f"mirage bench node: ROS 2 is not usable here ({why}); install .[ros,rosbuild], "
              "run `bash scripts/build_interfaces.sh` and `. scripts/ros_env.sh`", file=sys.stderr)
        return 2
    import subprocess
    import tempfile

    import torch

    from .. import sim
    from ..ros import convert as cv

    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    def log(m):
        print(m, flush=True)

    ns = f"/bench_{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="mirage_bench_node_"))
    params = tmp / "params.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    backend: {args.backend}\n    chunk_size: {args.chunk_size}\n"
                      "    viz:\n      stats_period: 0.1\n      cloud_period: 1.0\n")
    node_log = open(tmp / "node.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "mirage_ros.ros.node", "--ros-args", "-r", f"__ns:={ns}",
                             "--params-file", str(params)], stdout=node_log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    probe = None
    try:
        probe = _Bench(ns)
        types = cv.RclpyTypes()
        _wait(lambda: probe.stats is not None, 120, "the node to come up (memory/stats)")
        result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "python": sys.version.split()[0]},
                  "backend": args.backend, "transport": args.transport,
                  "profile": os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]}
        skip = {x.strip() for x in args.skip.split(",") if x.strip()}
        result["latency"] = latency(probe, types, sim, args, log)
        result["first_frame_latency_ms"] = result["latency"]["median_ms"]
        limit = 50 if args.backend == "readout" else 1500
        result["targets"] = {f"first_frame_latency_ms<={limit}": result["first_frame_latency_ms"] <= limit}
        if "input" not in skip:
            inp = input_rate(probe, types, sim, args, log)
            inp["duration_s"] = args.duration
            result["input"] = inp
            result["sustained_input_hz"] = inp["sustained_hz"]
        if "pointcloud" not in skip:
            result["pointcloud"] = pointcloud(probe, args, log)
            result["pointcloud_1m_ms"] = result["pointcloud"]["median_total_ms"]
            result["targets"]["pointcloud_1m_ms<=100"] = result["pointcloud_1m_ms"] <= 100
    finally:
        if probe is not None:
            probe.close()
        import signal

        node.send_signal(signal.SIGINT)
        try:
            node.wait(15)
        except subprocess.TimeoutExpired:
            node.kill()
        node_log.close()
        if args.keep_log:
            print((tmp / "node.log").read_text(errors="replace"))
    write_json(path, result)
    plot(result, path.with_suffix(".png"))
    log(dumps_json({k: result[k] for k in ("first_frame_latency_ms", "sustained_input_hz",
                                           "pointcloud_1m_ms") if k in result}))
    log(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
