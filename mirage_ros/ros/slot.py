"""A latest-wins hand-over between a callback and one worker thread (no rclpy).

The executor thread must never wait for the memory or the model, so it hands work to a thread
through a ``LatestSlot``: ``put`` replaces what is still waiting (the newer observation or plan
wins; the caller learns that one was superseded), ``take`` waits for the next item. ``seq`` counts
every ``put`` (and ``bump``), so a running item can tell that a newer one has arrived and stop.
``SlotWorker`` runs ``handle(item)`` for each item on a daemon thread until stopped; ``Loop`` is
that thread (``step()`` again and again until ``stop``), shared by the node's other workers.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

__all__ = ["LatestSlot", "SlotWorker", "Loop"]


class LatestSlot:
    def __init__(self):
        self._cv = threading.Condition()
        self._item: Any = None
        self._full = False
        self.seq = 0  # bumps on every put: the newest item's number
        self.closed = False

    def put(self, item: Any) -> bool:
        """Offer ``item``; True when it replaced one still waiting (that one is dropped)."""
        with self._cv:
            superseded = self._full
            self.seq += 1
            self._item, self._full = item, True
            self._cv.notify()
            return superseded

    def bump(self) -> None:
        """Count as a newer item without one (a running item sees ``seq`` move and stops)."""
        with self._cv:
            self.seq += 1

    def take(self, timeout: float = 0.5) -> Optional[tuple]:
        """(seq, item) of the waiting item, or None after ``timeout`` s or once ``close``d."""
        with self._cv:
            if not self._full and not self.closed:
                self._cv.wait(timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return self.seq, item

    def close(self) -> None:
        """Wake a waiting ``take`` for good (the worker is stopping)."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def open(self) -> None:
        with self._cv:
            self.closed = False


class Loop:
    """``step()`` called again and again on one daemon thread named ``name``, from ``start()`` until
    ``stop()`` (which waits up to ``timeout`` s for the step in progress); ``stopping`` tells a step
    that it should return."""

    def __init__(self, name: str, step: Callable[[], None]):
        self.name, self.step = name, step
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when stopped meanwhile."""
        return self._stop.wait(seconds)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()


class SlotWorker:
    """``handle(seq, item)`` for each item ``put`` in ``slot``, on one daemon thread; an exception
    goes to ``on_error(exc)`` and the thread lives on."""

    def __init__(self, name: str, handle: Callable[[int, Any], None], on_error: Callable[[BaseException], None]):
        self.slot = LatestSlot()
        self.name, self.handle, self.on_error = name, handle, on_error
        self._loop = Loop(name, self._step)

    @property
    def stopping(self) -> bool:
        return self._loop.stopping

    def start(self) -> None:
        self.slot.open()
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.slot.close()
        self._loop.stop(timeout)

    def _step(self) -> None:
        got = self.slot.take(0.5)
        if got is None or self._loop.stopping:
            return
        try:
            self.handle(*got)
        except Exception as exc:  # noqa: BLE001 - the worker outlives a bad item
            self.on_error(exc)
