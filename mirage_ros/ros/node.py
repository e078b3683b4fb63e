"""``mirage_node``: the rclpy entities around ``MirageCore`` (which holds all the logic).

Run: ``ros2 run mirage_ros mirage_node`` (colcon) or ``mirage_node`` (pip), with
``--ros-args --params-file config/mirage.yaml`` and remaps as usual. Default node name ``mirage``.
Its topics, services and actions are declared in ``interfaces`` (relative names: a namespace or a
remap moves them); its parameters in ``params``.

It is a lifecycle node: configure builds the backend (loads models) and the ROS interfaces,
activate starts processing, deactivate pauses (goals are refused), cleanup frees the models and
accelerator memory. With ``autostart`` (default) it configures and activates itself.

Threads: the executor only converts messages and answers requests; sets are observed on the
observer's thread (``observer.Observer``), plans on the plan thread, outputs on their own
(``outputs.PeriodicOutputs``), /tf on the tf thread (``intake.TfThread``), goals on the goal queue's
workers (``goal_runner``), and the action servers live on a helper node with its own executor
thread, so a huge goal request is turned into Python objects off the sensor executor.
"""
from __future__ import annotations

import functools
import sys
import threading
import time
from typing import Optional

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from . import convert as cv
from . import interfaces, qos
from .core import STATUS_NOT_READY, MirageCore
from .goal_runner import ClientWatch, GoalBook, GoalRunner, terminal_state
from .goals import GoalQueue
from .intake import PoseLike, TfThread
from .observer import Observer
from .outputs import PeriodicOutputs
from .params import PARAMS, check_change
from .requests import NOT_ACTIVE
from .slot import SlotWorker

__all__ = ["MirageNode", "main"]

ACTIONS = ("imagine", "imagine_candidates")


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
            bounds = p.bounds().replace(chr(92), "")
            desc = f"{p.description} [{bounds}; settable {p.mode.replace('launch', 'at launch only')}]"
            self.declare_parameter(p.name, p.default,
                                   ParameterDescriptor(description=desc, read_only=p.mode == "launch"))
        self._launch_values = {p.name: _plain(self.get_parameter(p.name).value) for p in PARAMS if p.mode == "launch"}
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.core: Optional[MirageCore] = None
        self.active = False
        self._stopping = threading.Event()
        self._ents, self._pubs = [], {}
        self._workers = []  # started at configure, stopped (in this order) by stop_work
        self._book: Optional[GoalBook] = None
        self._runner: Optional[GoalRunner] = None
        self._observer = self._plans = self._outputs = None
        self._goal_node = self._goal_exec = self._goal_spin = None
        self._actions = []
        self._tf = None
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # -- parameters and logging -------------------------------------------------------------------
    def _params(self) -> dict:
        return {p.name: _plain(self.get_parameter(p.name).value) for p in PARAMS}

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Any DDS peer may call set_parameters: ``params.check_change`` decides; a refused request
        changes nothing."""
        core = self.core
        new = {p.name: _plain(p.value) for p in params}
        reason, checked = check_change(new, self._launch_values, core.p if core is not None else self._params(),
                                       core is not None)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        if checked is not None:
            core.p.update(checked)
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

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _is_active(self) -> bool:
        return self.active and not self._stopping.is_set()

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
        core, p = self.core, self.core.p
        self._create_outputs(p)
        publish = {k: pub.publish for k, pub in self._pubs.items()}
        self._stopping.clear()
        self._book = GoalBook(GoalQueue(p["goals.max_active"], p["goals.max_queued"], p["imagined.max_frames"]), p)
        self._runner = GoalRunner(core, self._types, publish, self._is_active, ClientWatch(self._action_clients),
                                  self._now_ns)
        self._observer = Observer(core.wants, core.observe, core.report)
        self._plans = SlotWorker("mirage-plan", self._run_plan, lambda exc: core.log("error", f"plan: {exc}"))
        self._outputs = PeriodicOutputs(core, self._types, publish, self._now_ns, self._is_active)
        try:
            self._create_inputs(p)
            self._create_goal_server()
        except Exception as exc:  # noqa: BLE001 - a failed configure must say why and stay unconfigured
            self.get_logger().error(f"configure failed: {exc}")
            self.destroy_entities()
            core.release()
            self.core = None
            return TransitionCallbackReturn.FAILURE
        self._observer.start()
        self._plans.start()
        self._outputs.start(lambda exc: self.get_logger().error(f"outputs: {type(exc).__name__}: {exc}"))
        if isinstance(self._tf, TfThread):
            self._tf.start()
        self._book.queue.start()
        self.get_logger().info(f"configured: backend={p['backend']} device={p['device']} "
                               f"world_frame={p['world_frame']} "
                               f"inputs: {', '.join(t.name for t in interfaces.inputs(p) if t.key != 'plan')}")
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

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.active = True
        self._observer.active = True
        self._outputs.republish()
        ret = super().on_activate(state)
        self.get_logger().info("active: " + (self.core.backend.description if self.core and self.core.backend else ""))
        return ret

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.active = False
        self._observer.active = False
        self._plans.slot.bump()  # the running plan stops after its chunk
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.active = False
        self.destroy_entities()
        if self.core is not None:
            self.core.release()
        self.core = None
        self.get_logger().info("cleaned up: backend released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        return self.on_cleanup(state)

    def stop_work(self, timeout: float = 30.0) -> None:
        """Stop goal work and the node's threads and wait for them: before any entity, the node
        or the context goes away (a thread still inside rclpy then aborts the process)."""
        self.active = False
        self._stopping.set()
        if self._observer is not None:
            self._observer.active = False
        if self._book is not None and self._book.stop(timeout):
            self.get_logger().warning(f"a goal did not stop within {timeout:.0f} s")
        for w in (self._observer, self._plans, self._outputs, self._tf if isinstance(self._tf, TfThread) else None):
            if w is not None:
                w.stop()

    def destroy_entities(self) -> None:
        """stop_work, then the goal server, subscriptions, services, timers and publishers."""
        self.stop_work()
        if self._goal_node is not None:
            self._destroy_goal_server()
        for ent in self._ents:
            try:
                if hasattr(ent, "timer_period_ns"):
                    self.destroy_timer(ent)
                elif hasattr(ent, "srv_type"):
                    self.destroy_service(ent)
                else:
                    self.destroy_subscription(ent)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        for pub in self._pubs.values():
            try:
                self.destroy_lifecycle_publisher(pub)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._ents, self._pubs, self._tf = [], {}, None

    # -- entities -------------------------------------------------------------------------------
    def _create_outputs(self, p: dict) -> None:
        res = qos.profile("results", depth=p["qos.results_depth"])
        for t in interfaces.outputs(p):
            try:  # tf2_msgs: ROS, or scripts/build_interfaces.sh
                cls = getattr(self._types, t.type)
            except ImportError as exc:
                self.get_logger().warning(f"{t.type} is not importable ({exc}): {t.name} is not published")
                continue
            q = res if t.qos == "results" else qos.profile(t.qos)
            self._pubs[t.key] = self.create_lifecycle_publisher(cls, t.name, q)

    def _create_inputs(self, p: dict) -> None:
        from std_srvs.srv import Trigger

        from mirage_ros.srv import LoadMemory, SaveMemory

        intake = self.core.intake
        sensor = qos.profile("sensor", reliability=p["qos.sensor_reliability"], depth=p["qos.sensor_depth"])
        builtin_tf = p["pose.source"] == "tf" and not self._use_tf2_ros(p)
        for t in interfaces.inputs(p):
            cls = getattr(self._types, t.type)
            if t.key == "plan":
                self._ents.append(self.create_subscription(cls, t.name, self._on_plan, qos.profile("plan")))
            elif t.key in ("tf", "tf_static"):
                if builtin_tf:  # raw: the executor only queues the bytes, the tf thread deserialises them
                    static = t.key == "tf_static"
                    self._ents.append(self.create_subscription(
                        cls, t.name, lambda m, s=static: self._tf.put(m, s),
                        qos.profile(t.qos, depth=100 if static else None), raw=True))
            else:
                handler = getattr(intake, f"on_{t.key}")
                self._ents.append(self.create_subscription(cls, t.name, self._sensor(handler), sensor))
        for name, cb, typ in (("reset", self._srv_reset, Trigger), ("save_memory", self._srv_save, SaveMemory),
                              ("load_memory", self._srv_load, LoadMemory)):
            self._ents.append(self.create_service(typ, name, cb))

    def _use_tf2_ros(self, p: dict) -> bool:
        """pose.source tf: tf2_ros' buffer and listener where installed (tf.listener auto / tf2_ros),
        else the core's own buffer fed by /tf + /tf_static on the tf thread. Either way the intake
        asks for world_frame <- camera frame at each image's stamp and waiting images are retried
        every 20 ms. Sets ``self._tf``."""
        from rclpy.serialization import deserialize_message

        intake = self.core.intake
        tf2_ros = None
        if p["tf.listener"] in ("auto", "tf2_ros"):
            try:
                import tf2_ros
            except ImportError:
                if p["tf.listener"] == "tf2_ros":
                    raise RuntimeError("tf.listener is 'tf2_ros' but tf2_ros is not installed (it is not on PyPI; "
                                       "use tf.listener auto or builtin)") from None
        how = "the built-in /tf + /tf_static buffer"
        if tf2_ros is not None:
            from rclpy.duration import Duration
            from rclpy.time import Time

            buf = tf2_ros.Buffer(cache_time=Duration(nanoseconds=int(p["tf.cache_time"] * 1e9)))
            self._tf = (buf, tf2_ros.TransformListener(buf, self))

            def lookup(target, source, stamp_ns):
                tr = buf.lookup_transform(target, source, Time(nanoseconds=int(stamp_ns)))
                return cv.pose_to_matrix(PoseLike(position=tr.transform.translation,
                                                  orientation=tr.transform.rotation), "tf")

            intake.use_tf_lookup(lookup)
            self._ents.append(self.create_timer(0.02, lambda: self._observer.offer(intake.poll_tf())))
            how = "tf2_ros"
        else:
            msg_type = self._types.TFMessage
            self._tf = TfThread(intake, lambda raw: deserialize_message(raw, msg_type), self._observer.offer)
        self.get_logger().info(
            f"pose from tf: {p['world_frame']} <- {p['tf.camera_frame'] or 'each image header.frame_id'}"
            + (" (a camera link: + link -> optical rotation)" if p["tf.camera_is_link"] else "") + f" via {how}")
        return tf2_ros is not None

    def _create_goal_server(self) -> None:
        """The action servers live on a helper node spun by its own executor thread: rclpy turns a
        goal request into Python objects (~50 us per pose here) before any callback can look at its
        length, and a huge path must not stall the sensor and service executor meanwhile. The
        actions keep the names this node resolves (its namespace and remaps apply)."""
        import rclpy

        from mirage_ros.action import Imagine, ImagineCandidates

        self._goal_node = rclpy.create_node(f"{self.get_name()}_imagine", namespace=self.get_namespace(),
                                            context=self.context, use_global_arguments=False,
                                            start_parameter_services=False, enable_rosout=False)
        svc = qos.profile("action_services")
        book, runner = self._book, self._runner
        for name, action, admit, run in (("imagine", Imagine, book.admit, runner.imagine),
                                         ("imagine_candidates", ImagineCandidates, book.admit_candidates,
                                          runner.candidates)):
            self._actions.append(ActionServer(
                self._goal_node, action, self.resolve_topic_name(name),
                execute_callback=functools.partial(self._execute, action=action, run=run),  # still async
                goal_callback=lambda g, f=admit: self._on_goal(g, f), cancel_callback=self._on_cancel,
                goal_service_qos_profile=svc, result_service_qos_profile=svc, cancel_service_qos_profile=svc,
                result_timeout=60))
        self._goal_exec = SingleThreadedExecutor(context=self.context)
        self._goal_exec.add_node(self._goal_node)
        self._goal_spin_stop = threading.Event()
        self._goal_spin = threading.Thread(target=self._spin_goals, name="mirage-goal-executor", daemon=True)
        self._goal_spin.start()

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
        """After stop_work: stop the goal executor thread, then the action servers and their node."""
        if self._goal_spin is not None:
            self._goal_spin_stop.set()
            self._goal_spin.join(timeout=5)
            self._goal_spin = None
        steps = [a.destroy for a in self._actions]
        steps += [lambda: self._goal_exec.shutdown(timeout_sec=1.0), self._goal_node.destroy_node]
        for step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._actions, self._goal_exec, self._goal_node = [], None, None

    def _action_clients(self) -> int:
        """Subscribers of both actions' feedback topics (every action client subscribes its own)."""
        node = self._goal_node
        if node is None:
            return 1
        return sum(node.count_subscribers(f"{self.resolve_topic_name(a)}/_action/feedback") for a in ACTIONS)

    # -- callbacks ------------------------------------------------------------------------------
    def _sensor(self, handler):
        def cb(msg):
            if self.active and self.core is not None:
                self._observer.offer(handler(msg))
        return cb

    def _on_plan(self, msg) -> None:
        if self.active and self.core is not None:
            self._plans.slot.put(msg)

    def _run_plan(self, seq: int, msg) -> None:
        """Streaming mode: imagine the newest plan; a newer plan (or deactivation) preempts it."""
        slot = self._plans.slot
        self._runner.plan(msg, lambda: slot.seq != seq or not self._is_active())

    def _on_goal(self, goal_request, admit) -> GoalResponse:
        """O(1), on the goal executor: too long (from the lists' lengths, before any per-pose work)
        or a full queue is rejected and the reason logged (a rejected ROS 2 goal carries none); any
        other goal is accepted, and a malformed one is aborted with its reason in the result."""
        if self._book is None or self.core is None:
            return GoalResponse.ACCEPT  # answered NOT_READY by _execute
        reason = admit(goal_request)
        if reason is None:
            return GoalResponse.ACCEPT
        self.core.report.reject_goal(reason)
        return GoalResponse.REJECT

    def _on_cancel(self, goal_handle) -> CancelResponse:
        """A queued goal is canceled at once; a running one stops after its current chunk."""
        if self._book is not None:
            self._book.cancel(bytes(goal_handle.goal_id.uuid))
        return CancelResponse.ACCEPT

    async def _execute(self, goal_handle, action, run):
        """Hands the goal to the goal workers and awaits its answer: the goal executor keeps taking
        other goals and cancel requests meanwhile."""
        from rclpy.task import Future

        book, runner = self._book, self._runner
        gid = bytes(goal_handle.goal_id.uuid).hex()[:8]
        log = self.get_logger()
        log.info(f"goal {gid}: received ({action.__name__})")
        if book is None or runner is None:
            status, result = STATUS_NOT_READY, action.Result(status=STATUS_NOT_READY, message=NOT_ACTIVE)
        elif goal_handle.is_cancel_requested:
            status, result = book.skip(lambda st, m: runner.short(action, st, m))
        else:
            fut = Future(executor=self._goal_exec)
            fut.add_done_callback(lambda _f: None)  # completion from a worker wakes the goal executor
            book.submit(bytes(goal_handle.goal_id.uuid), lambda: run(goal_handle, action),
                        lambda st, m: runner.short(action, st, m),
                        lambda ok, value: fut.set_result(value) if ok else fut.set_exception(value))
            status, result = await fut
        getattr(goal_handle, terminal_state(status))()
        detail = f": {result.message}" if result.message else ""
        log.info(f"goal {gid}: {terminal_state(status)} (status {status}{detail})")
        return result

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
        except Exception as exc:  # noqa: BLE001 - the reason goes back to the caller
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


def _plain(v):
    """rclpy array parameters come back as array.array / numpy: make them lists."""
    if isinstance(v, (str, bytes, bool, int, float)) or v is None:
        return v
    try:
        return [x.item() if hasattr(x, "item") else x for x in v]
    except TypeError:
        return v


def main(argv=None) -> int:
    """Spin until SIGINT / SIGTERM (``runtime.spin_until_signal``), exit 0."""
    from .runtime import spin_until_signal

    return spin_until_signal(lambda: [MirageNode()], "mirage_node", argv)


if __name__ == "__main__":
    sys.exit(main())
