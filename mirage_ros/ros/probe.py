"""A real rclpy probe that talks to mirage_ros nodes, and helpers to start them as processes.

Shared by the tests (tests/ros) and ``mirage bench node``: one rclpy node in the caller's process,
in its own context, spun by a background executor; it publishes sensor data, sends goals, calls
services and records everything it receives, per topic. Lives in ``mirage_ros.ros`` because that
is the only package that imports rclpy (lazily, here: importing this module needs no ROS).
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

__all__ = ["wait_for", "get_result", "Proc", "write_params", "start_node", "Probe", "ros_unavailable", "why_missing"]


def why_missing(*names: str) -> Optional[str]:
    """None if every ``module`` or ``module:Name`` imports here, else why the first one does not."""
    import importlib

    try:
        for spec in names:
            module, _, name = spec.partition(":")
            m = importlib.import_module(module)
            if name:
                getattr(m, name)
    except Exception as exc:  # noqa: BLE001 - whatever an import raises is the reason
        return f"{type(exc).__name__}: {exc}"
    return None


def ros_unavailable() -> Optional[str]:
    """None if rclpy and mirage_ros' generated interfaces import here, else why not."""
    return why_missing("rclpy", "mirage_ros.action:Imagine", "mirage_ros.msg:ImaginedChunk",
                       "mirage_ros.msg:MemoryStats")


def wait_for(pred: Callable[[], object], timeout: float = 10.0, every: float = 0.02, what: str = "condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")


def get_result(goal_handle, timeout: float = 60.0, every: float = 2.0):
    """The done future of ``goal_handle``'s result, asking again every ``every`` s while unanswered.
    rclpy (Jazzy) registers a result future only after it has sent the request, so a server that
    answers at once (the goal has already finished) can have its response taken by another
    executor thread first and dropped ("Ignoring unexpected result response"); a repeated request
    is answered again (the server keeps results for its result_timeout)."""
    t_end = time.monotonic() + timeout
    while True:
        rf = goal_handle.get_result_async()
        try:
            wait_for(rf.done, max(0.05, min(every, t_end - time.monotonic())), what="the result")
            return rf
        except TimeoutError:
            if time.monotonic() >= t_end:
                raise TimeoutError(f"timed out after {timeout:.1f} s waiting for the result") from None


def action_client(node, action_type, name: str, **kw):
    """An rclpy ``ActionClient`` that keeps goal responses arriving before their request is
    registered. rclpy (Jazzy) sends the goal request and only then records its sequence number, so
    on a multi-threaded executor a fast answer (an accepted goal, or a rejection at the door) can be
    taken by another thread first and dropped ("Ignoring unexpected goal response"): the goal
    future then never completes. Seen here on a loaded CPU. Such a response is kept and delivered
    once ``send_goal_async`` has registered the request. A goal cannot simply be re-sent (the
    server may already run it). Its goal, result and cancel services use ``qos.action_client_qos``
    (depth 1000: rclpy's default 10 lost replies in bursts) unless ``kw`` says otherwise."""
    from rclpy.action import ActionClient

    from .qos import action_client_qos

    kw = {**action_client_qos(), **kw}

    class _Client(ActionClient):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self._early_lock = threading.Lock()
            self._early: Dict[int, object] = {}

        async def execute(self, taken_data):
            if "goal" in taken_data:
                seq, response = taken_data["goal"]
                with self._early_lock:
                    if seq not in self._goal_sequence_number_to_goal_id:
                        self._early[seq] = response
                        taken_data = {k: v for k, v in taken_data.items() if k != "goal"}
            await super().execute(taken_data)

        def send_goal_async(self, goal, feedback_callback=None, goal_uuid=None):
            future = super().send_goal_async(goal, feedback_callback, goal_uuid)
            with self._early_lock:
                early = [(seq, r) for seq, r in self._early.items() if self._pending_goal_requests.get(seq) is future]
                for seq, _ in early:
                    del self._early[seq]
            for seq, response in early:  # the goal branch of execute() awaits nothing: run it here
                coro = ActionClient.execute(self, {"goal": (seq, response)})
                try:
                    coro.send(None)
                except StopIteration:
                    pass
            return future

    return _Client(node, action_type, name, **kw)


class Proc:
    """A mirage_ros process (node or sim node) with its log in a file."""

    def __init__(self, args: List[str], log_path: Path, env: Optional[dict] = None, cwd: Optional[str] = None):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        e = dict(os.environ)
        e.update(env or {})
        self.popen = subprocess.Popen([sys.executable, *args], stdout=self._log, stderr=subprocess.STDOUT, env=e,
                                      cwd=cwd)
        self.pid = self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        interrupt(self.popen, timeout)
        self._log.close()
        return self.popen.returncode


def interrupt(popen: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """Stop a ROS process as Ctrl-C does (SIGINT, so it shuts down cleanly), killing it after
    ``timeout`` s; returns its exit code."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGINT)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    return popen.returncode


def write_params(path: Path, params: Dict[str, object], node: str = "/**") -> Path:
    import yaml

    nested: dict = {}
    for k, v in params.items():
        d = nested
        parts = k.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    path.write_text(yaml.safe_dump({node: {"ros__parameters": nested}}))
    return path


def start_node(tmp: Path, ns: str, params: Optional[dict] = None, module: str = "mirage_ros.ros.node",
               cwd: Optional[str] = None, env: Optional[dict] = None) -> Proc:
    """``python -m module`` in namespace ``ns`` with ``params`` (a parameter file in ``tmp``; the
    log goes there too); ``env``: variables set for it beside this process's."""
    tmp = Path(tmp)
    pf = write_params(tmp / f"params_{ns.strip('/')}_{module.rsplit('.', 1)[-1]}.yaml", params or {})
    return Proc(["-m", module, "--ros-args", "-r", f"__ns:={ns}", "--params-file", str(pf)],
                tmp / f"{ns.strip('/')}_{module.rsplit('.', 1)[-1]}.log", env=env, cwd=cwd)


class Probe:
    """One rclpy node in its own context, spun by a background executor (``threads`` 1: a
    single-threaded one), that talks to mirage_ros nodes: publishes, records what it receives
    (with the receive time, ``time.perf_counter``), sends goals and calls services."""

    def __init__(self, name: str = "mirage_test_probe", threads: int = 2):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
        from rclpy.node import Node

        from . import convert as cv

        self.rclpy = rclpy
        self.cv = cv
        self.types = cv.RclpyTypes()
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = Node(name, context=self.ctx)
        self.executor = (SingleThreadedExecutor(context=self.ctx) if threads <= 1
                         else MultiThreadedExecutor(num_threads=threads, context=self.ctx))
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.received: Dict[str, list] = {}
        self._pubs: Dict[tuple, object] = {}
        self._subs: Dict[str, object] = {}
        self._clients: Dict[tuple, object] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - shutdown
            pass

    def close(self):
        """Stop spinning, then destroy. The spin thread is joined before the node goes: rclpy's
        (Jazzy) ``Executor.shutdown`` returns without waiting for the spin in progress, and a node
        destroyed under a running wait, or a process exiting with DDS threads mid-callback, can
        abort ("terminate called without an active exception", seen once in a network probe)."""
        self.executor.shutdown(timeout_sec=2)
        self._thread.join(timeout=10)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.ctx)

    # -- topics -----------------------------------------------------------------------------------
    def pub(self, topic: str, msg_type, reliable: bool = True, depth: int = 10):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        key = (topic, msg_type)
        if key not in self._pubs:
            q = QoSProfile(depth=depth,
                           reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
            self._pubs[key] = self.node.create_publisher(msg_type, topic, q)
        return self._pubs[key]

    def listen(self, topic: str, msg_type, latched: bool = False, keep: int = 100000):
        """Record messages on ``topic`` (with receive time) into ``received[topic]``."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        if topic in self._subs:
            return
        q = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        self.received.setdefault(topic, [])

        def cb(msg, topic=topic):
            with self.lock:
                lst = self.received[topic]
                lst.append((time.perf_counter(), msg))
                if len(lst) > keep:
                    del lst[: len(lst) - keep]

        self._subs[topic] = self.node.create_subscription(msg_type, topic, cb, q)

    def msgs(self, topic: str) -> list:
        with self.lock:
            return [m for _, m in self.received.get(topic, [])]

    def clear(self, topic: str) -> None:
        with self.lock:
            self.received[topic] = []

    def wait_matched(self, pub, n: int = 1, timeout: float = 20.0):
        wait_for(lambda: pub.get_subscription_count() >= n, timeout, what=f"a subscriber on {pub.topic_name}")

    # -- the node's interfaces ---------------------------------------------------------------------
    def watch(self, ns: str):
        from nav_msgs.msg import Path as PathMsg
        from sensor_msgs.msg import Image, PointCloud2
        from visualization_msgs.msg import MarkerArray

        from mirage_ros.msg import ImaginedChunk, MemoryStats

        self.listen(f"{ns}/memory/stats", MemoryStats, keep=50)
        self.listen(f"{ns}/imagined/image", Image)
        self.listen(f"{ns}/imagined/chunk", ImaginedChunk)
        self.listen(f"{ns}/imagined/path", PathMsg)
        self.listen(f"{ns}/memory/points", PointCloud2, latched=True, keep=3)
        self.listen(f"{ns}/memory/frustums", MarkerArray, latched=True, keep=3)

    def stats(self, ns: str, fresh_after: Optional[float] = None, timeout: float = 15.0):
        """The newest memory/stats (received after ``fresh_after``, a perf_counter time, if given)."""
        topic = f"{ns}/memory/stats"

        def newest():
            with self.lock:
                lst = self.received.get(topic, [])
                if lst and (fresh_after is None or lst[-1][0] > fresh_after):
                    return lst[-1][1]
            return None

        return wait_for(newest, timeout, what=f"{topic}")

    def wait_stats(self, ns: str, pred, timeout: float = 15.0, what: str = "stats"):
        def ok():
            with self.lock:
                lst = self.received.get(f"{ns}/memory/stats", [])
                return lst[-1][1] if lst and pred(lst[-1][1]) else None
        return wait_for(ok, timeout, what=what)

    def sensor_pubs(self, ns: str):
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import CameraInfo, Image

        return {"image": self.pub(f"{ns}/image", Image), "camera_info": self.pub(f"{ns}/camera_info", CameraInfo),
                "pose": self.pub(f"{ns}/pose", PoseStamped), "depth": self.pub(f"{ns}/depth", Image)}

    def set_msgs(self, cam, frame, stamp: int, world: str = "map"):
        cv, T = self.cv, self.types
        return {
            "image": cv.image_msg(T, frame.rgb, stamp, "camera_optical_frame"),
            "camera_info": cv.camera_info_msg(T, cam.K.numpy(), cam.height, cam.width, stamp, "camera_optical_frame"),
            "pose": cv.pose_stamped_msg(T, cam.camera_to_world.numpy(), stamp, world),
            "depth": cv.image_msg(T, frame.depth.astype(np.float32), stamp, "camera_optical_frame", "32FC1"),
        }

    def publish_set(self, ns: str, cam, frame, stamp: int, **replace):
        pubs = self.sensor_pubs(ns)
        msgs = self.set_msgs(cam, frame, stamp)
        msgs.update(replace)
        for k in ("camera_info", "pose", "depth", "image"):
            self.wait_matched(pubs[k])
            pubs[k].publish(msgs[k])

    def path(self, cams, stamps, frame: str = "map"):
        T = np.stack([c.camera_to_world.numpy() for c in cams]) if len(cams) else np.zeros((0, 4, 4))
        if len(cams) == 0:
            return self.types.Path(header=self.cv.header_msg(self.types, 0, frame), poses=[])
        return self.cv.path_msg(self.types, T, stamps, frame)

    def action_client(self, ns: str, wait: bool = True):
        """The ``ns/imagine`` action client (waits for the server unless ``wait`` is false)."""
        from mirage_ros.action import Imagine

        key = ("action", ns)
        if key not in self._clients:
            self._clients[key] = action_client(self.node, Imagine, f"{ns}/imagine")
        ac = self._clients[key]
        if wait:
            wait_for(lambda: ac.server_is_ready(), 30, what=f"the {ns}/imagine action server")
        return ac

    def imagine(self, ns: str, path, num_frames: int = 0, prompt: str = "", expect_frames: Optional[int] = None,
                chunk_size: Optional[int] = None, cancel_after_feedback: bool = False, timeout: float = 60.0,
                resend: int = 1):
        """Send a goal; return dict(result, feedback, images, chunks, t_accept, t_first_image).

        With ``expect_frames``: a goal that finishes before that many frames arrived (a VOLATILE
        image published before the node matched this reader is gone, seen under load in CI) is
        sent again up to ``resend`` times (imagination is deterministic); ``attempts`` says how many
        goals were sent."""
        for attempt in range(1, resend + 2):
            out = self._imagine_once(ns, path, num_frames, prompt, expect_frames, chunk_size, cancel_after_feedback,
                                     timeout)
            out["attempts"] = attempt
            if not expect_frames or cancel_after_feedback or len(out["images"]) >= expect_frames \
                    or out["status"] != 4:  # GoalStatus.STATUS_SUCCEEDED: a failed goal is the answer
                return out
            time.sleep(1.0)  # give discovery a moment before the next goal
        return out

    def _imagine_once(self, ns, path, num_frames, prompt, expect_frames, chunk_size, cancel_after_feedback,
                      timeout):
        from mirage_ros.action import Imagine

        ac = self.action_client(ns)
        img_topic, chunk_topic = f"{ns}/imagined/image", f"{ns}/imagined/chunk"
        self.clear(img_topic)
        self.clear(chunk_topic)
        if expect_frames:
            # discovery is per topic: under load the stats topic can match seconds before these
            # do, and a VOLATILE message sent before its reader matched is gone
            try:
                wait_for(lambda: self.node.count_publishers(img_topic) > 0
                         and self.node.count_publishers(chunk_topic) > 0, min(timeout, 30.0),
                         what=f"publishers of {img_topic} and {chunk_topic}")
            except TimeoutError:
                pass
        goal = Imagine.Goal(path=path, prompt=prompt, num_frames=num_frames)
        fbs: list = []
        fb_lock = threading.Lock()

        def on_fb(f):
            with fb_lock:
                fbs.append(f.feedback)

        fut = ac.send_goal_async(goal, feedback_callback=on_fb)
        wait_for(fut.done, timeout, what="the goal response")
        t_accept = time.perf_counter()
        gh = fut.result()
        assert gh.accepted
        done = gh.get_result_async()  # registered now, before the result can arrive (see get_result)
        if cancel_after_feedback:
            wait_for(lambda: len(fbs) > 0, timeout, what="the first feedback")
            cf = gh.cancel_goal_async()
            wait_for(cf.done, timeout, what="the cancel response")
        elif expect_frames:
            # rclpy drops feedback that arrives after the result: collect frames and feedback first
            n_chunks = math.ceil(expect_frames / chunk_size) if chunk_size else 1
            try:
                wait_for(lambda: (len(self.msgs(img_topic)) >= expect_frames and len(fbs) >= n_chunks)
                         or (done.done() and not self._arriving(img_topic, expect_frames)), timeout,
                         what=f"{expect_frames} frames and {n_chunks} feedback messages")
            except TimeoutError:
                pass
        rf = get_result(gh, timeout)
        if expect_frames and not cancel_after_feedback:
            # each chunk's ImaginedChunk follows its images on another topic: on a loaded machine it
            # can land after the result; give it a bounded moment (it may legitimately be absent)
            try:
                wait_for(lambda: len(self.msgs(chunk_topic)) >= n_chunks, min(timeout, 10.0),
                         what=f"{n_chunks} ImaginedChunk messages")
            except TimeoutError:
                pass
        time.sleep(0.05)
        with self.lock:
            imgs = list(self.received.get(img_topic, []))
        with fb_lock:
            fb = list(fbs)
        return {"result": rf.result().result, "status": rf.result().status, "feedback": fb,
                "images": [m for _, m in imgs], "t_accept": t_accept,
                "t_first_image": imgs[0][0] if imgs else None, "chunks": self.msgs(chunk_topic)}

    def _arriving(self, topic: str, expect: int, quiet: float = 2.0) -> bool:
        """Whether frames of ``topic`` may still come: fewer than ``expect`` so far and one arrived
        within the last ``quiet`` s (after the result, in-flight frames get that long)."""
        with self.lock:
            got = list(self.received.get(topic, []))
        return len(got) < expect and bool(got) and time.perf_counter() - got[-1][0] < quiet

    def call(self, ns_name: str, srv_type, request, timeout: float = 30.0):
        key = (ns_name, srv_type)
        if key not in self._clients:
            self._clients[key] = self.node.create_client(srv_type, ns_name)
        cl = self._clients[key]
        wait_for(lambda: cl.service_is_ready(), timeout, what=f"service {ns_name}")
        fut = cl.call_async(request)
        wait_for(fut.done, timeout, what=f"the {ns_name} response")
        return fut.result()
