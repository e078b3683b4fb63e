"""The one ``main`` loop of mirage_node, mirage_sim_node and mirage_multi_node (imports rclpy).

``spin_until_signal(make_nodes, name)`` initialises rclpy WITHOUT its signal handler, makes the
nodes, spins them on one single-threaded executor (rclpy's MultiThreadedExecutor takes a fraction
of the messages per second; the nodes' work runs on their own threads) until SIGINT / SIGTERM,
then shuts down in the order that does not abort: each node's ``stop_work()`` (its threads leave
rclpy) and ``destroy_entities()`` first, then the executor, the nodes and the context (rclpy's own
handler shut the context down while a goal thread was still inside rclpy, and the process
aborted). Returns the exit code: 0, or 1 after an error (printed on one line).
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Callable, List

__all__ = ["spin_until_signal"]


def _quietly(what: Callable[[], object], label: str = "") -> None:
    try:
        what()
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - best effort on the way out
        if label:
            print(f"{label}: shutdown: {type(exc).__name__}: {exc}", file=sys.stderr)


def spin_until_signal(make_nodes: Callable[[], List[object]], name: str, argv=None) -> int:
    """``make_nodes()`` (after rclpy.init) returns the nodes to spin; those with ``stop_work`` /
    ``destroy_entities`` get them called first on the way out. The network warning of
    ``dds.network_warning`` is logged by the first node."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from .dds import network_warning

    argv = sys.argv if argv is None else argv
    net_warning = network_warning()  # the network as DDS will see it when the participant is made
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    nodes: List[object] = []
    executor = None
    code = 0
    try:
        nodes = list(make_nodes())
        if net_warning and nodes:
            nodes[0].get_logger().warning(net_warning)
        executor = SingleThreadedExecutor()
        for n in nodes:
            executor.add_node(n)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)  # a signal is seen within 0.1 s
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - one line, exit 1
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        for n in nodes:
            if hasattr(n, "stop_work"):
                _quietly(n.stop_work, name)
        for n in nodes:
            if hasattr(n, "destroy_entities"):
                _quietly(n.destroy_entities)
        if executor is not None:
            _quietly(lambda: executor.shutdown(timeout_sec=1.0))
        for n in nodes:
            _quietly(n.destroy_node)
        _quietly(rclpy.try_shutdown)
    return code
