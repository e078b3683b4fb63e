"""``mirage_node``: the rclpy layer around ``MirageCore`` (which holds all the logic).

Run: ``ros2 run mirage_ros mirage_node`` (colcon) or ``mirage_node`` (pip), with
``--ros-args --params-file config/mirage.yaml`` and remaps as usual. Default node name ``mirage``;
every topic, service and action name is relative, so a namespace or a remap moves them.

Interfaces (relative names)
  subscribes  image (sensor_msgs/Image: rgb8 bgr8 rgba8 bgra8 mono8) or image/compressed
              (CompressedImage jpeg/png; input.image_transport=compressed), camera_info,
              pose (geometry_msgs/PoseStamped: the camera OPTICAL frame — x right, y down,
              z forward — in the world frame, i.e. camera_to_world), or odom (nav_msgs/Odometry,
              pose.source=odometry), or /tf + /tf_static (pose.source=tf: world_frame <- the
              camera frame at each image's stamp; tf2_ros where installed, else a built-in buffer),
              depth (32FC1 metres / 16UC1 millimetres; depth.provider=topic) or
              depth/compressedDepth (input.depth_transport=compressedDepth),
              labels (mono8; masks.provider=labels), plan (nav_msgs/Path: streaming mode)
  publishes   imagined/image (and imagined/image/compressed with imagined.compressed jpeg|png)
              and imagined/camera_info per frame, with /tf (world_frame ->
              imagined.frame_id at the frame's stamp: the requested camera pose),
              imagined/chunk (mirage_ros/ImaginedChunk, without the images), imagined/path,
              memory/points (PointCloud2 xyz+rgb), memory/stats (mirage_ros/MemoryStats),
              memory/frustums (visualization_msgs/MarkerArray)
  action      imagine (mirage_ros/action/Imagine), imagine_candidates (mirage_ros/action/ImagineCandidates:
              K candidate trajectories from one memory snapshot, scored and imagined, none written
              into the memory, nothing published on imagined/*)
  services    reset (std_srvs/Trigger), save_memory (mirage_ros/srv/SaveMemory),
              load_memory (mirage_ros/srv/LoadMemory)

It is a lifecycle node: configure builds the backend (loads models) and the ROS interfaces,
activate starts processing, deactivate pauses (goals are refused), cleanup frees the models and
accelerator memory. With ``autostart`` (default) it configures and activates itself.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Optional

import numpy as np
import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult

from . import convert as cv
from . import outputs as out
from . import qos
from .core import (STATUS_CANCELED, STATUS_FAILED, STATUS_NAMES, STATUS_NOT_READY, STATUS_SUCCEEDED, GoalError,
                   MirageCore)
from .dds import network_warning
from .goals import GoalQueue, candidates_reason
from .tf_buffer import TfQueue
from .params import PARAMS, ParamError, validate

__all__ = ["MirageNode", "main"]

# The action's goal, cancel and result services keep this many requests and responses (rclpy's
# default, 10, silently dropped all but ~10 of a burst of goals before the executor took them).
ACTION_SERVICE_DEPTH = 1000


class MirageNode(LifecycleNode):
    def __init__(self, node_name: str = "mirage", share_with: Optional["MirageNode"] = None, frame_prefix: str = "",
                 **kwargs):
        """``share_with``: another MirageNode in this process whose loaded model this one shares
        (``fleet``: own memory, same model; ``mirage_multi_node``). ``frame_prefix``: the tf frame
        prefix when the ``tf.frame_prefix`` parameter is empty (``mirage_multi_node``: the robot's)."""
        self._share_with = share_with
        self._frame_prefix = frame_prefix
        super().__init__(node_name, **kwargs)
        self._types = cv.RclpyTypes()
        for p in PARAMS:
            desc = p.description + f" [{p.bounds().replace(chr(92), '')}; settable {p.mode.replace('launch', 'at launch only')}]"
            self.declare_parameter(p.name, p.default, ParameterDescriptor(description=desc, read_only=p.mode == "launch"))
        self._launch_values = {p.name: _plain(self.get_parameter(p.name).value) for p in PARAMS if p.mode == "launch"}
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.core: Optional[MirageCore] = None
        self.active = False
        self._ents = []  # subscriptions, services, action server created on configure
        self._pubs = {}
        self._stop = threading.Event()
        self._obs_cv = threading.Condition()
        self._obs_next = None
        self._plan_cv = threading.Condition()
        self._plan_next = None
        self._plan_seq = 0
        self._threads = []
        self._goals: Optional[GoalQueue] = None
        self._goal_node = self._goal_exec = self._goal_spin = self._action = self._cand_action = None
        self._jobs = {}  # goal uuid -> (GoalQueue job, the future its _execute awaits, its short-result maker)
        self._published_version = -1
        self._tf = None
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # -- parameters ---------------------------------------------------------------------------
    def _params(self) -> dict:
        return {p.name: _plain(self.get_parameter(p.name).value) for p in PARAMS}

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Any DDS peer may call set_parameters (and the lifecycle services), so: a ``launch``
        parameter (the folders and files the node reads and writes, the model) keeps its launch
        value in every lifecycle state; a ``configure`` one changes only while unconfigured; every
        value is range-checked (``params.validate``). A refused request changes nothing."""
        by = {p.name: p for p in PARAMS}
        new = {p.name: _plain(p.value) for p in params if p.name in by}
        for name, v in new.items():
            if by[name].mode == "launch" and v != self._launch_values.get(name):
                return SetParametersResult(successful=False, reason=(
                    f"{name}: fixed at launch (set it in the parameter file or on the command line and restart the "
                    "node); no peer may change it"))
        if self.core is None:
            try:
                validate({**self._params(), **new})
            except ParamError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            return SetParametersResult(successful=True)
        for name, v in new.items():
            if by[name].mode == "configure" and v != self.core.p.get(name):
                return SetParametersResult(successful=False, reason=(
                    f"{name}: takes effect at configure (deactivate, cleanup, set it, configure, activate)"))
        try:
            checked = validate({**self.core.p, **new})
        except ParamError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.core.p.update(checked)
        return SetParametersResult(successful=True)

    def _log(self, level: str, msg: str) -> None:
        # rclpy fixes the severity per call site ("Logger severity cannot be changed between
        # calls"), so every severity gets its own line
        lg = self.get_logger()
        if level in ("warn", "warning"):
            lg.warning(msg)
        elif level == "error":
            lg.error(msg)
        elif level == "debug":
            lg.debug(msg)
        else:
            lg.info(msg)

    # -- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self.core = MirageCore(self._params(), log=self._log, namespace=self.get_namespace(),
                                   frame_prefix=self._frame_prefix)
            t0 = time.perf_counter()
            self._configure_core()
            self.get_logger().info(f"backend ready in {time.perf_counter() - t0:.2f} s")
        except Exception as exc:  # noqa: BLE001 - a failed configure must say why and stay unconfigured
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self.core = None
            return TransitionCallbackReturn.FAILURE
        p = self.core.p
        res = qos.profile("results", depth=p["qos.results_depth"])
        latched = qos.profile("latched")
        from mirage_ros.msg import ImaginedChunk, MemoryStats
        from nav_msgs.msg import Path
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from visualization_msgs.msg import MarkerArray

        self._pubs = {
            "image": self.create_lifecycle_publisher(Image, "imagined/image", res),
            "chunk": self.create_lifecycle_publisher(ImaginedChunk, "imagined/chunk", res),
            "path": self.create_lifecycle_publisher(Path, "imagined/path", res),
            "points": self.create_lifecycle_publisher(PointCloud2, "memory/points", latched),
            "stats": self.create_lifecycle_publisher(MemoryStats, "memory/stats", res),
            "frustums": self.create_lifecycle_publisher(MarkerArray, "memory/frustums", latched),
            "camera_info": self.create_lifecycle_publisher(CameraInfo, "imagined/camera_info", res),
        }
        if p["imagined.compressed"] != "none":  # image_transport's name for the compressed twin
            from sensor_msgs.msg import CompressedImage

            self._pubs["image_compressed"] = self.create_lifecycle_publisher(
                CompressedImage, "imagined/image/compressed", res)
        try:  # /tf: where the imagined camera is, per frame (tf2_msgs: ROS, or scripts/build_interfaces.sh)
            from tf2_msgs.msg import TFMessage

            self._pubs["tf"] = self.create_lifecycle_publisher(TFMessage, "/tf", qos.profile("tf"))
        except ImportError as exc:
            self.get_logger().warning(f"tf2_msgs is not importable ({exc}): the imagined camera is not published on /tf")
        self._goals = GoalQueue(p["goals.max_active"], p["goals.max_queued"], p["imagined.max_frames"])
        try:
            self._create_inputs(p)
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"configure failed: {exc}")
            self._destroy_entities()
            self.core.release()
            self.core = None
            return TransitionCallbackReturn.FAILURE
        self._stop.clear()
        self._threads = self._threads + [threading.Thread(target=self._observe_loop, name="mirage-observe", daemon=True),
                         threading.Thread(target=self._plan_loop, name="mirage-plan", daemon=True),
                         threading.Thread(target=self._output_loop, name="mirage-outputs", daemon=True)]
        for t in self._threads:
            t.start()
        self._goals.start()
        self.get_logger().info(
            f"configured: backend={p['backend']} device={p['device']} world_frame={p['world_frame']} "
            f"inputs: {'image/compressed' if p['input.image_transport'] == 'compressed' else 'image'}, camera_info, "
            f"{p['pose.source']}" + ((", depth/compressedDepth" if p["input.depth_transport"] == "compressedDepth"
                                      else ", depth") if p["depth.provider"] == "topic" else "")
            + (", labels" if p["masks.provider"] == "labels" else ""))
        return TransitionCallbackReturn.SUCCESS

    def _configure_core(self) -> None:
        """Build the backend, or share the model of ``share_with`` when both need the same one."""
        leader = self._share_with.core if self._share_with is not None else None
        if leader is not None and leader.backend is not None:
            from .fleet import SharingError, share_model

            try:
                share_model(self.core, leader)
                self.get_logger().info(f"sharing the loaded model of {self._share_with.get_namespace()} "
                                       "(own memory; the robots take turns on the model)")
                return
            except SharingError as exc:
                self.get_logger().warning(f"not sharing a model: {exc}")
        self.core.configure()

    def _create_inputs(self, p: dict) -> None:
        from geometry_msgs.msg import PoseStamped
        from mirage_ros.action import Imagine, ImagineCandidates
        from mirage_ros.srv import LoadMemory, SaveMemory
        from nav_msgs.msg import Odometry, Path
        from sensor_msgs.msg import CameraInfo, Image
        from std_srvs.srv import Trigger

        sensor = qos.profile("sensor", reliability=p["qos.sensor_reliability"], depth=p["qos.sensor_depth"])
        core = self.core
        e = self._ents
        if p["input.image_transport"] == "compressed":
            from sensor_msgs.msg import CompressedImage

            e.append(self.create_subscription(CompressedImage, "image/compressed", self._guard(core.on_compressed_image),
                                              sensor))
        else:
            e.append(self.create_subscription(Image, "image", self._guard(core.on_image), sensor))
        e.append(self.create_subscription(CameraInfo, "camera_info", self._guard(core.on_camera_info), sensor))
        src = p["pose.source"]
        if src == "pose":
            e.append(self.create_subscription(PoseStamped, "pose", self._guard(core.on_pose), sensor))
        elif src == "odometry":
            e.append(self.create_subscription(Odometry, "odom", self._guard(core.on_odometry), sensor))
        else:
            self._create_tf_input(p)
        if p["depth.provider"] == "topic":
            if p["input.depth_transport"] == "compressedDepth":
                from sensor_msgs.msg import CompressedImage

                e.append(self.create_subscription(CompressedImage, "depth/compressedDepth",
                                                  self._guard(core.on_compressed_depth), sensor))
            else:
                e.append(self.create_subscription(Image, "depth", self._guard(core.on_depth), sensor))
        if p["masks.provider"] == "labels":
            e.append(self.create_subscription(Image, "labels", self._guard(core.on_labels), sensor))
        e.append(self.create_subscription(Path, "plan", self._on_plan, qos.profile("plan")))
        e.append(self.create_service(Trigger, "reset", self._srv_reset))
        e.append(self.create_service(SaveMemory, "save_memory", self._srv_save))
        e.append(self.create_service(LoadMemory, "load_memory", self._srv_load))
        # The action server lives on a helper node spun by its own executor thread: rclpy turns a
        # goal request into Python objects (~50 us per pose here) before any callback can look at
        # its length, and a huge path must not stall the sensor and service executor meanwhile.
        # The action keeps the name this node resolves (its namespace and remaps apply).
        name = self.resolve_topic_name("imagine")
        self._goal_node = rclpy.create_node(f"{self.get_name()}_imagine", namespace=self.get_namespace(),
                                            context=self.context, use_global_arguments=False,
                                            start_parameter_services=False, enable_rosout=False)
        svc = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=ACTION_SERVICE_DEPTH,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self._action = ActionServer(
            self._goal_node, Imagine, name, execute_callback=self._execute, goal_callback=self._on_goal,
            cancel_callback=self._on_cancel, goal_service_qos_profile=svc, result_service_qos_profile=svc,
            cancel_service_qos_profile=svc, result_timeout=60,
        )
        # planners: K candidate trajectories per goal; same helper node, same queue and workers
        self._cand_action = ActionServer(
            self._goal_node, ImagineCandidates, self.resolve_topic_name("imagine_candidates"),
            execute_callback=self._execute_candidates, goal_callback=self._on_candidates_goal,
            cancel_callback=self._on_cancel, goal_service_qos_profile=svc, result_service_qos_profile=svc,
            cancel_service_qos_profile=svc, result_timeout=60,
        )
        self._goal_exec = SingleThreadedExecutor(context=self.context)
        self._goal_exec.add_node(self._goal_node)
        self._goal_spin_stop = threading.Event()
        self._goal_spin = threading.Thread(target=self._spin_goals, name="mirage-goal-executor", daemon=True)
        self._goal_spin.start()
        self._last_cloud = self._last_stats = 0.0

    def _create_tf_input(self, p: dict) -> None:
        """pose.source tf: tf2_ros' buffer and listener where installed (tf.listener auto /
        tf2_ros), else the core's own buffer fed by /tf + /tf_static subscriptions with tf2's QoS.
        Either way the core's queue asks for world_frame <- camera frame at each image's stamp,
        and a 20 ms timer retries images still waiting for their transform."""
        core, e = self.core, self._ents
        tf2_ros = None
        if p["tf.listener"] in ("auto", "tf2_ros"):
            try:
                import tf2_ros
            except ImportError:
                if p["tf.listener"] == "tf2_ros":
                    raise RuntimeError("tf.listener is 'tf2_ros' but tf2_ros is not installed (it is not on PyPI; "
                                       "use tf.listener auto or builtin)") from None
        if tf2_ros is not None:
            from rclpy.duration import Duration
            from rclpy.time import Time

            buf = tf2_ros.Buffer(cache_time=Duration(nanoseconds=int(p["tf.cache_time"] * 1e9)))
            self._tf = (buf, tf2_ros.TransformListener(buf, self))

            def lookup(target, source, stamp_ns):
                tr = buf.lookup_transform(target, source, Time(nanoseconds=int(stamp_ns)))
                return cv.pose_to_matrix(_Pose(tr.transform.translation, tr.transform.rotation), "tf")

            core.use_tf_lookup(lookup)
        else:
            from tf2_msgs.msg import TFMessage

            # raw: the executor only queues the bytes; the tf thread deserialises and stores them (a
            # 100k-transform message blocked the executor 4.5 s; a /tf flood starved the sensors)
            self._tf_queue = TfQueue()
            e.append(self.create_subscription(TFMessage, "/tf", lambda m: self._tf_queue.put(m, False),
                                              qos.profile("tf"), raw=True))
            e.append(self.create_subscription(TFMessage, "/tf_static", lambda m: self._tf_queue.put(m, True),
                                              qos.profile("tf_static", depth=100), raw=True))
            self._threads.append(threading.Thread(target=self._tf_loop, args=(TFMessage,), name="mirage-tf", daemon=True))
        if tf2_ros is not None:
            e.append(self.create_timer(0.02, self._poll_tf))
        self.get_logger().info(
            f"pose from tf: {p['world_frame']} <- {p['tf.camera_frame'] or 'each image header.frame_id'}"
            + (" (a camera link: + link -> optical rotation)" if p["tf.camera_is_link"] else "")
            + f" via {'tf2_ros' if tf2_ros is not None else 'the built-in /tf + /tf_static buffer'}")

    def _tf_loop(self, msg_type) -> None:
        """The built-in tf input: deserialise and store queued /tf and /tf_static messages (even while
        inactive: /tf_static is latched, it arrives once) and retry waiting images every 20 ms."""
        from rclpy.serialization import deserialize_message

        q = self._tf_queue
        while not self._stop.is_set():
            item = q.get(0.02)
            core = self.core
            if core is None:
                continue
            s = None
            try:
                if item is not None:
                    raw, static = item
                    s = core.on_tf(deserialize_message(raw, msg_type), static)
                else:
                    s = core.poll_tf()
            except Exception as exc:  # noqa: BLE001 - a bad message must not stop the tf input
                core.reject("tf", f"{type(exc).__name__}: {exc}")
            if q.dropped:
                core.reject("tf", f"{q.take_dropped()} /tf messages dropped: more than {q.max_bytes} bytes waited")
            if s is not None and self.active:
                self._offer(s)

    def _poll_tf(self) -> None:
        core = self.core
        if core is None:
            return
        s = core.poll_tf()
        if s is not None and self.active:
            self._offer(s)

    def _spin_goals(self) -> None:
        ex, stop = self._goal_exec, self._goal_spin_stop
        while not stop.is_set():
            try:
                ex.spin_once(timeout_sec=0.1)
            except (ExternalShutdownException, KeyboardInterrupt):
                return
            except Exception as exc:  # noqa: BLE001 - keep serving goals
                if not self.context.ok():
                    return
                self.get_logger().error(f"goal executor: {type(exc).__name__}: {exc}")

    def _destroy_goal_server(self) -> None:
        """After stop_work: stop the goal executor thread, then the action server and its node."""
        if self._goal_spin is not None:
            self._goal_spin_stop.set()
            self._goal_spin.join(timeout=5)
            self._goal_spin = None
        for what in (lambda: self._action.destroy(), lambda: self._cand_action.destroy(),
                     lambda: self._goal_exec.shutdown(timeout_sec=1.0), lambda: self._goal_node.destroy_node()):
            try:
                what()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._action = self._cand_action = self._goal_exec = self._goal_node = None

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.active = True
        self._published_version = -1
        ret = super().on_activate(state)
        self.get_logger().info("active: " + (self.core.backend.description if self.core and self.core.backend else ""))
        return ret

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.active = False
        with self._plan_cv:
            self._plan_seq += 1
        return super().on_deactivate(state)

    def stop_work(self, timeout: float = 30.0) -> None:
        """Stop goal work and the node's threads and wait for them: before any entity, the node
        or the context goes away (a thread still inside rclpy then aborts the process)."""
        self.active = False
        self._stop.set()
        if self._goals is not None:
            left = self._goals.stop(timeout)
            if self._goals._workers:
                self.get_logger().warning(f"a goal did not stop within {timeout:.0f} s")
            for job, fut, short in list(self._jobs.values()):
                if job in left and not fut.done():
                    fut.set_result(short(STATUS_NOT_READY, "the node stopped before this goal started"))
        with self._obs_cv:
            self._obs_cv.notify_all()
        with self._plan_cv:
            self._plan_cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def _destroy_entities(self) -> None:
        self.stop_work()
        if self._goal_node is not None:
            self._destroy_goal_server()
        for ent in self._ents:
            try:
                if isinstance(ent, ActionServer):
                    ent.destroy()
                elif hasattr(ent, "timer_period_ns"):
                    self.destroy_timer(ent)
                elif hasattr(ent, "srv_type"):
                    self.destroy_service(ent)
                else:
                    self.destroy_subscription(ent)
            except Exception:  # noqa: BLE001
                pass
        self._ents = []
        for pub in self._pubs.values():
            try:
                self.destroy_lifecycle_publisher(pub)
            except Exception:  # noqa: BLE001
                pass
        self._pubs = {}
        self._tf = None

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.active = False
        self._destroy_entities()
        if self.core is not None:
            self.core.release()
        self.core = None
        self.get_logger().info("cleaned up: backend released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        return self.on_cleanup(state)

    # -- inputs -------------------------------------------------------------------------------
    def _guard(self, fn):
        def cb(msg):
            if not self.active or self.core is None:
                return
            s = fn(msg)
            if s is not None:
                self._offer(s)
        return cb

    def _offer(self, s) -> None:
        """Hand a complete set to the observer thread; a set still waiting is superseded."""
        if not self.core.wants(s.stamp_ns):
            self.core.counts["frames_skipped"] += 1
            return
        with self._obs_cv:
            if self._obs_next is not None:
                self.core.counts["frames_skipped"] += 1
            self._obs_next = s
            self._obs_cv.notify()

    def _observe_loop(self) -> None:
        while not self._stop.is_set():
            with self._obs_cv:
                while self._obs_next is None and not self._stop.is_set():
                    self._obs_cv.wait(0.5)
                s, self._obs_next = self._obs_next, None
            core = self.core
            if s is None or core is None or not self.active:
                continue
            try:
                core.observe(s)
            except Exception as exc:  # noqa: BLE001 - never let the observer die
                core.reject("observation", f"{type(exc).__name__}: {exc}")

    # -- imagination --------------------------------------------------------------------------
    def _on_goal(self, goal_request) -> GoalResponse:
        """O(1), on the executor: a path longer than imagined.max_frames (from the list's length,
        before any per-pose work) or a full queue is rejected and the reason logged; any other
        goal is accepted, and a malformed one is aborted with its reason in the result."""
        if self._goals is None or self.core is None:
            return GoalResponse.ACCEPT  # answered NOT_READY by _execute
        reason = self._goals.admit(len(goal_request.path.poses), int(goal_request.num_frames))
        if reason is None:
            return GoalResponse.ACCEPT
        self.core.reject_goal(reason)
        return GoalResponse.REJECT

    def _on_candidates_goal(self, goal_request) -> GoalResponse:
        """As ``_on_goal``, from the K paths' lengths alone (``goals.candidates_reason``: count,
        per-path and total frames), then a place in the one goal queue."""
        if self._goals is None or self.core is None:
            return GoalResponse.ACCEPT  # answered NOT_READY by _execute_candidates
        p = self.core.p
        reason = candidates_reason([len(c.poses) for c in goal_request.candidates], int(goal_request.num_frames),
                                   p["imagined.max_frames"], p["candidates.max_candidates"],
                                   p["candidates.max_total_frames"])
        if reason is None:
            reason = self._goals.admit(0, 0)
        if reason is None:
            return GoalResponse.ACCEPT
        self.core.reject_goal(f"imagine_candidates: {reason}")
        return GoalResponse.REJECT

    def _on_cancel(self, goal_handle) -> CancelResponse:
        """A queued goal is cancelled at once; a running one stops after its current chunk."""
        entry = self._jobs.get(bytes(goal_handle.goal_id.uuid))
        if entry is not None and self._goals is not None:
            job, fut, short = entry
            if self._goals.cancel(job) and not fut.done():
                fut.set_result(short(STATUS_CANCELED, "canceled while queued, before it started"))
        return CancelResponse.ACCEPT

    def _short_result(self, status: int, message: str, action=None):
        """(status, ``action``.Result) for a goal that did no work (default action: Imagine)."""
        if action is None:
            from mirage_ros.action import Imagine as action

        result = action.Result(status=status, message=message)
        core = self.core
        if core is not None:
            if core.backend is not None:
                result.backend, result.generative = core.backend.name, bool(core.backend.generative)
            key = {STATUS_SUCCEEDED: "goals_succeeded", STATUS_CANCELED: "goals_canceled"}.get(status, "goals_aborted")
            core.counts[key] += 1
        return status, result

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _publish_chunks(self, req, cancel, goal_frames: int, on_chunk=None, t_accept: Optional[float] = None):
        """Run the backend along ``req`` and publish images, chunks; returns a summary dict."""
        core, p, T = self.core, self.core.p, self._types
        summary = {"frames": 0, "chunks": 0, "coverage": [], "first": None}
        self._pubs["path"].publish(out.imagined_path_msg(T, req.camera_to_world, req.stamps_ns, p["world_frame"]))
        fid = core.imagined_frame
        zpub = self._pubs.get("image_compressed")
        for chunk in core.imagine(req, cancel=cancel):
            images = out.frame_images(T, chunk, req.stamps_ns, fid)
            zimgs = (out.frame_compressed_images(T, chunk, req.stamps_ns, fid, p["imagined.compressed"],
                                                 p["imagined.jpeg_quality"], p["imagined.png_level"])
                     if zpub is not None else [None] * len(images))
            infos = out.frame_camera_infos(T, chunk, req.stamps_ns, req.K, req.height, req.width, fid)
            tfs = (out.frame_transforms(T, chunk, req.camera_to_world, req.stamps_ns, p["world_frame"], fid)
                   if "tf" in self._pubs else [None] * len(images))
            for img, info, tf, zimg in zip(images, infos, tfs, zimgs):  # the transform first, so viewers can place the image
                if tf is not None:
                    self._pubs["tf"].publish(tf)
                self._pubs["camera_info"].publish(info)
                self._pubs["image"].publish(img)
                if zimg is not None:
                    zpub.publish(zimg)
                if summary["first"] is None:
                    summary["first"] = time.perf_counter() - (t_accept or time.perf_counter())
            # imagined/chunk: indices, poses, visibility; the images are on imagined/image only
            msg = out.chunk_msg(T, chunk, req.camera_to_world, req.stamps_ns, req.K, req.height, req.width,
                                p["world_frame"], fid, goal_frames, core.backend.name, core.backend.generative)
            self._pubs["chunk"].publish(msg)
            summary["frames"] += len(images)
            summary["chunks"] += 1
            summary["coverage"].extend(list(msg.coverage))
            if on_chunk is not None:
                on_chunk(chunk, msg, summary, images)
        return summary

    async def _execute(self, goal_handle):
        """Queues the goal for the fixed goal workers and awaits it: the (single-threaded)
        executor keeps taking sensor messages, cancel requests and other goals meanwhile."""
        return await self._execute_job(goal_handle, self._run_goal, self._short_result)

    async def _execute_candidates(self, goal_handle):
        from mirage_ros.action import ImagineCandidates

        return await self._execute_job(goal_handle, self._run_candidates,
                                       lambda st, msg: self._short_result(st, msg, ImagineCandidates))

    async def _execute_job(self, goal_handle, run, short):
        """``run(goal_handle)`` -> (status, result) on a goal worker; ``short(status, message)``
        answers a goal that never ran (canceled while queued, node stopping)."""
        from rclpy.task import Future

        fut = Future(executor=self._goal_exec)
        fut.add_done_callback(lambda _f: None)  # completion from a worker wakes the goal executor
        key = bytes(goal_handle.goal_id.uuid)

        def done(ok, value):
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        goals = self._goals
        if goals is None:
            status, result = short(STATUS_NOT_READY, "the node is not configured")
        elif goal_handle.is_cancel_requested:
            goals.release()
            status, result = short(STATUS_CANCELED, "canceled before it started")
        else:
            try:
                self._jobs[key] = (goals.submit(lambda: run(goal_handle), done), fut, short)
            except RuntimeError as exc:  # shutting down
                fut.set_result(short(STATUS_NOT_READY, str(exc)))
            try:
                status, result = await fut
            finally:
                self._jobs.pop(key, None)
        if status == STATUS_SUCCEEDED:
            goal_handle.succeed()
        elif status == STATUS_CANCELED:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return result

    def _goal_start(self, goal_handle, result, what: str, t0: float):
        """What both actions do first: ``finish(status, message)`` (fills the result, counts the
        outcome, logs a failure; returns (status, result)) and the early answer (not active,
        canceled before it started) or None."""
        core = self.core
        if core is not None and core.backend is not None:
            result.backend, result.generative = core.backend.name, bool(core.backend.generative)
        self._client_check = None  # a goal that starts has a client: forget an earlier "gone"

        def finish(status: int, message: str):
            result.status, result.message = status, message
            result.total_time = time.perf_counter() - t0
            if core is not None:
                key = {STATUS_SUCCEEDED: "goals_succeeded", STATUS_CANCELED: "goals_canceled"}.get(status, "goals_aborted")
                core.counts[key] += 1
            if status not in (STATUS_SUCCEEDED, STATUS_CANCELED):
                self.get_logger().warning(f"{what} goal {STATUS_NAMES[status]}: {message}")
            return status, result

        if not self.active or core is None:
            return finish, finish(STATUS_NOT_READY, "the node is not active (lifecycle state is not 'active')")
        if goal_handle.is_cancel_requested:
            return finish, finish(STATUS_CANCELED, "canceled before it started")
        return finish, None

    def _goal_cancelled(self, goal_handle, t0: Optional[float] = None, why: Optional[list] = None) -> bool:
        """A running goal stops (after its current chunk) on a cancel, deactivation or shutdown, when
        it has run ``goals.max_seconds`` (from ``t0``), or when no action client is left to take its
        result (a client that died mid-goal left a 1024-frame goal holding the worker > 60 s);
        ``why`` gets the reason of the last two."""
        if goal_handle.is_cancel_requested or not self.active or not goal_handle.is_active or self._stop.is_set():
            return True
        core = self.core
        if core is not None and t0 is not None and time.perf_counter() - t0 > core.p["goals.max_seconds"]:
            if why is not None:
                why[:] = [f"aborted after {time.perf_counter() - t0:.0f} s: longer than goals.max_seconds = "
                          f"{core.p['goals.max_seconds']:g}"]
            return True
        if self._clients_gone():
            if why is not None:
                why[:] = ["aborted: no action client is left to take its result (the client vanished)"]
            return True
        return False

    def _clients_gone(self) -> bool:
        """True when both actions' feedback topics have had no subscriber for over a second (every
        action client subscribes its action's feedback), checked at most every 0.5 s."""
        now = time.monotonic()
        last = getattr(self, "_client_check", None)
        if last is not None and now - last[0] < 0.5:
            return last[1]
        node = self._goal_node
        try:
            n = sum(node.count_subscribers(f"{self.resolve_topic_name(a)}/_action/feedback")
                    for a in ("imagine", "imagine_candidates")) if node is not None else 1
        except Exception:  # noqa: BLE001 - a graph query failure is not a vanished client
            n = 1
        since = None if n else (last[2] if last is not None and last[2] is not None else now)
        gone = since is not None and now - since > 1.0
        self._client_check = (now, gone, since)
        return gone

    def _run_goal(self, goal_handle):
        """The goal's work (a worker thread); returns (status, result)."""
        from mirage_ros.action import Imagine

        t_accept = time.perf_counter()
        goal = goal_handle.request
        core = self.core
        result = Imagine.Result()
        finish, early = self._goal_start(goal_handle, result, "imagine", t_accept)
        if early:
            return early
        try:
            req = core.prepare(goal.path, int(goal.num_frames), goal.prompt or None, self._now_ns())
        except GoalError as exc:
            return finish(exc.status, exc.message)
        n = len(req.cameras)
        why: list = []
        cancel = lambda: self._goal_cancelled(goal_handle, t_accept, why)  # noqa: E731

        def feedback(chunk, msg, summary, images):
            fb = Imagine.Feedback()
            if core.p["imagined.feedback_frames"]:
                msg.frames = images  # the feedback alone carries the images with the chunk
            else:
                msg.masks = []
            fb.chunk, fb.frames_done, fb.frames_total = msg, summary["frames"], n
            goal_handle.publish_feedback(fb)

        try:
            s = self._publish_chunks(req, cancel, n, feedback, t_accept)
        except GoalError as exc:
            return finish(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - report backend failures as a result, keep serving
            return finish(STATUS_FAILED, f"backend raised {type(exc).__name__}: {exc}")
        result.num_frames, result.num_chunks = s["frames"], s["chunks"]
        result.mean_coverage = float(np.mean(s["coverage"])) if s["coverage"] else 0.0
        result.first_frame_latency = float(s["first"] or 0.0)
        if goal_handle.is_cancel_requested:
            return finish(STATUS_CANCELED, f"canceled after {s['frames']} of {n} frames")
        if s["frames"] < n:
            return finish(STATUS_NOT_READY if not self.active else STATUS_FAILED,
                          f"stopped after {s['frames']} of {n} frames ({why[0] if why else 'node deactivated'})")
        return finish(STATUS_SUCCEEDED, f"imagined {n} frames in {s['chunks']} chunks with the {core.backend.name} backend"
                      + ("" if core.backend.generative else " (no generative model: memory readouts)")
                      + f"; mean memory coverage {result.mean_coverage:.2f}")

    def _run_candidates(self, goal_handle):
        """An imagine_candidates goal on a worker thread: validate every candidate (the core), send
        the scores as the first feedback, then one feedback per imagined chunk; returns (status,
        result). Nothing is published on imagined/* and nothing enters the memory."""
        from mirage_ros.action import ImagineCandidates as Action

        t0 = time.perf_counter()
        goal = goal_handle.request
        core = self.core
        result = Action.Result()
        finish, early = self._goal_start(goal_handle, result, "imagine_candidates", t0)
        if early:
            return early
        why: list = []
        cancel = lambda: self._goal_cancelled(goal_handle, t0, why)  # noqa: E731
        try:
            creq = core.prepare_candidates(goal.candidates, int(goal.num_frames), goal.prompt or None, self._now_ns())
            creq = core.prepare_goal(creq, getattr(goal, "goal_image", None), getattr(goal, "goal_camera_info", None),
                                     getattr(goal, "goal_metric", ""))  # getattr: interfaces built before the goal image
            run = core.imagine_candidates(creq, cancel)
        except GoalError as exc:
            return finish(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - report backend failures as a result, keep serving
            return finish(STATUS_FAILED, f"backend raised {type(exc).__name__}: {exc}")
        T, p, reqs = self._types, core.p, creq.requests
        result.scores_time = float(run.scores_time)
        n_total = creq.num_frames
        goal_handle.publish_feedback(Action.Feedback(
            kind=Action.Feedback.KIND_SCORES, frames_total=n_total,
            scores=[out.candidate_result_msg(T, k, run.scores[k], r.stamps_ns) for k, r in enumerate(reqs)]))
        coverage = [[] for _ in reqs]
        images = [[] for _ in reqs] if goal.return_frames else [None] * len(reqs)
        done = chunks = 0
        if not goal.scores_only:
            fid, backend = core.imagined_frame, core.backend
            try:
                for k, chunk in run:
                    r = reqs[k]
                    msg = out.chunk_msg(T, chunk, r.camera_to_world, r.stamps_ns, r.K, r.height, r.width,
                                        p["world_frame"], fid, len(r.cameras), backend.name, backend.generative)
                    coverage[k].extend(msg.coverage)
                    if images[k] is not None:
                        images[k].extend(out.frame_images(T, chunk, r.stamps_ns, fid))
                    done += len(chunk.frame_indices)
                    chunks += 1
                    if chunks == 1:
                        result.first_chunk_latency = time.perf_counter() - t0
                    goal_handle.publish_feedback(Action.Feedback(kind=Action.Feedback.KIND_CHUNK, candidate=k, chunk=msg,
                                                                 frames_done=done, frames_total=n_total))
            except GoalError as exc:
                return finish(exc.status, exc.message)
            except Exception as exc:  # noqa: BLE001
                return finish(STATUS_FAILED, f"backend raised {type(exc).__name__}: {exc}")
        result.candidates = [out.candidate_result_msg(T, k, run.scores[k], r.stamps_ns, coverage[k], images[k],
                                                      None if goal.scores_only else run.goal_result(k))
                             for k, r in enumerate(reqs)]
        result.num_chunks = chunks
        known = ", ".join(f"{s['known']:.2f}" for s in run.scores)
        if creq.goal is not None:
            sims = [c.goal_similarity for c in result.candidates]
            best = int(np.nanargmax(sims)) if np.isfinite(sims).any() else -1
            known += f"; goal ({creq.goal_metric}): most similar candidate {best}" + (f" ({sims[best]:.3f})" if best >= 0 else "")
        if goal.scores_only:
            return finish(STATUS_SUCCEEDED, f"scored {len(reqs)} candidates ({n_total} frames), no model run; known: {known}")
        if goal_handle.is_cancel_requested:
            return finish(STATUS_CANCELED, f"canceled after {done} of {n_total} frames")
        if done < n_total:
            return finish(STATUS_NOT_READY if not self.active else STATUS_FAILED,
                          f"stopped after {done} of {n_total} frames ({why[0] if why else 'node deactivated'})")
        return finish(STATUS_SUCCEEDED, f"imagined {len(reqs)} candidates ({n_total} frames, {chunks} chunks) with the "
                      f"{core.backend.name} backend from one memory snapshot, none written into it; known: {known}")

    def _on_plan(self, msg) -> None:
        if not self.active or self.core is None:
            return
        with self._plan_cv:
            self._plan_seq += 1
            self._plan_next = (self._plan_seq, msg)
            self._plan_cv.notify()

    def _plan_loop(self) -> None:
        """Streaming mode: imagine the newest plan; a newer plan preempts the running one."""
        while not self._stop.is_set():
            with self._plan_cv:
                while self._plan_next is None and not self._stop.is_set():
                    self._plan_cv.wait(0.5)
                item, self._plan_next = self._plan_next, None
            if item is None or self.core is None:
                continue
            seq, msg = item
            try:
                req = self.core.prepare(msg, 0, None, self._now_ns())
            except GoalError as exc:
                self.core.reject_goal(exc.message, kind="plan")
                continue
            cancel = lambda: self._plan_seq != seq or not self.active or self._stop.is_set()  # noqa: E731
            try:
                self._publish_chunks(req, cancel, len(req.cameras))
            except Exception as exc:  # noqa: BLE001
                self.get_logger().error(f"plan: backend raised {type(exc).__name__}: {exc}")

    # -- services -----------------------------------------------------------------------------
    def _srv_reset(self, request, response):
        if self.core is None or self.core.backend is None:
            response.success, response.message = False, "the node is not configured"
            return response
        n = self.core.backend.memory.num_points
        self.core.reset()
        response.success, response.message = True, f"memory cleared ({n} points removed)"
        self.get_logger().info(response.message)
        return response

    def _srv_save(self, request, response):
        try:
            path, n = self.core.save(request.path, bool(getattr(request, "overwrite", False)))
            response.success, response.path, response.num_points = True, path, n
            response.message = f"saved {n} points to {path}"
        except Exception as exc:  # noqa: BLE001
            response.success, response.message = False, f"save failed: {exc}"
            self.get_logger().warning(response.message)
        return response

    def _srv_load(self, request, response):
        try:
            n = self.core.load(request.path)
            response.success, response.num_points = True, n
            response.message = f"loaded {n} points from {request.path}"
            self.get_logger().info(response.message)
        except Exception as exc:  # noqa: BLE001 - the memory is unchanged on failure
            response.success = False
            response.num_points = self.core.backend.memory.num_points if self.core and self.core.backend else 0
            response.message = f"load failed, memory unchanged: {exc}"
            self.get_logger().warning(response.message)
        return response

    # -- periodic outputs ---------------------------------------------------------------------
    def _output_loop(self) -> None:
        """memory/stats every viz.stats_period; memory/points and memory/frustums at most every
        viz.cloud_period and only when the memory changed (a thread: a large cloud never holds
        up the sensor callbacks)."""
        while not self._stop.wait(0.02):
            core = self.core
            if core is None or not self.active:
                continue
            try:
                self._publish_outputs(core)
            except Exception as exc:  # noqa: BLE001 - keep publishing
                self.get_logger().error(f"outputs: {type(exc).__name__}: {exc}")

    def _publish_outputs(self, core) -> None:
        now = time.monotonic()
        p = core.p
        stamp = self._now_ns()
        if now - self._last_stats >= p["viz.stats_period"]:
            self._last_stats = now
            self._pubs["stats"].publish(out.stats_msg(self._types, core.stats(), stamp, p["world_frame"]))
        if now - self._last_cloud >= p["viz.cloud_period"] and core.version != self._published_version:
            self._last_cloud = now
            self._published_version = core.version
            self.publish_cloud(stamp)
            cam = core.last_camera
            K, H, W = cam if cam is not None else (None, 0, 0)
            self._pubs["frustums"].publish(out.frustum_markers(
                self._types, list(core.observed_poses), list(core.imagined_poses), K, H, W,
                p["viz.frustum_scale"], stamp, p["world_frame"]))

    def publish_cloud(self, stamp_ns: int) -> float:
        """Build and publish memory/points; returns the seconds it took."""
        t0 = time.perf_counter()
        cloud = self.core.cloud()
        self._pubs["points"].publish(out.cloud_msg(self._types, cloud, stamp_ns, self.core.p["world_frame"]))
        return time.perf_counter() - t0


def _plain(v):
    """rclpy array parameters come back as array.array / numpy: make them lists."""
    if isinstance(v, (str, bytes, bool, int, float)) or v is None:
        return v
    try:
        return [x.item() if hasattr(x, "item") else x for x in v]
    except TypeError:
        return v


class _Pose:
    def __init__(self, t, r):
        self.position, self.orientation = t, r


def main(argv=None) -> int:
    """Spin until SIGINT / SIGTERM; then stop goal work and threads FIRST, then destroy the node,
    then shut the context down (rclpy's own signal handler shut the context down while a goal
    thread was still inside rclpy, and the process aborted)."""
    argv = sys.argv if argv is None else argv
    net_warning = network_warning()  # the network as DDS will see it when the participant is made
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node = None
    executor = None
    code = 0
    try:
        node = MirageNode()
        if net_warning:
            node.get_logger().warning(net_warning)
        # Single-threaded: rclpy's MultiThreadedExecutor takes a fraction of the messages per
        # second; goals, observation and outputs run in their own threads instead.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)  # a signal is seen within 0.1 s
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001
        print(f"mirage_node: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            try:
                node.stop_work()
                node._destroy_entities()
            except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - best effort on the way out
                print(f"mirage_node: shutdown: {type(exc).__name__}: {exc}", file=sys.stderr)
        if executor is not None:
            try:
                executor.shutdown(timeout_sec=1.0)
            except (Exception, KeyboardInterrupt):  # noqa: BLE001
                pass
        if node is not None:
            try:
                node.destroy_node()
            except (Exception, KeyboardInterrupt):  # noqa: BLE001
                pass
        try:
            rclpy.try_shutdown()
        except (Exception, KeyboardInterrupt):  # noqa: BLE001
            pass
    return code

if __name__ == "__main__":
    sys.exit(main())
