"""Run independent tasks in worker processes, each task under its own wall-clock limit.

``StructureMatcher`` and ``CrystalNN`` occasionally spend minutes (or forever) on a pathological
generated structure. A plain ``multiprocessing.Pool`` cannot stop one stuck task, so this module
keeps its own small set of worker processes, gives each one task at a time, and kills and
replaces a worker whose task runs past ``timeout``. The task is reported as timed out; the
others carry on.

Workers are started with the ``spawn`` method: the parent may hold torch/OpenMP threads (after
sampling), which makes ``fork`` unsafe. A worker imports the task function's module, then says
it is ready; a task's clock starts only when the task is sent, so import time never counts.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

#: How long a fresh worker may take to import the task function's module and report ready.
STARTUP_TIMEOUT_S = 300.0

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class TaskOutcome:
    """What became of one task: ``status`` is "ok" (``value`` holds the return value),
    "timeout" (killed after ``timeout`` seconds) or "error" (``error`` holds the exception)."""

    status: Literal["ok", "timeout", "error"]
    value: Any = None
    error: str | None = None


def run_tasks(
    function: Callable[..., Any],
    arguments: Sequence[tuple[Any, ...]],
    *,
    workers: int = 2,
    timeout: float | None = 30.0,
) -> list[TaskOutcome]:
    """``function(*arguments[i])`` for every ``i``, in ``workers`` processes.

    ``function`` must be importable by name (a module-level function). ``timeout`` is the
    wall-clock limit per task in seconds (None: no limit). ``workers=0`` runs every task in this
    process, one after the other, with no time limit (for debugging and small inputs).
    Returns one :class:`TaskOutcome` per task, in the order of ``arguments``.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive (seconds) or None, got {timeout}")
    if workers == 0:
        return [_call(function, args) for args in arguments]
    if not arguments:
        return []
    pool = _WorkerPool(function, min(workers, len(arguments)))
    try:
        return pool.run(list(arguments), timeout)
    finally:
        pool.close()


def _call(function: Callable[..., Any], args: tuple[Any, ...]) -> TaskOutcome:
    try:
        return TaskOutcome("ok", function(*args))
    except Exception as error:  # noqa: BLE001 - a failing task is an outcome, not a crash
        return TaskOutcome("error", error=f"{type(error).__name__}: {error}")


def _worker_main(connection: Connection, pickled_function: bytes) -> None:
    """Worker loop: receive ``(index, args)``, send back ``(index, outcome)``; None stops."""
    for name in _THREAD_ENV:  # one thread per worker: the workers are the parallelism
        os.environ.setdefault(name, "1")
    function = pickle.loads(pickled_function)
    connection.send("ready")
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, args = message
        connection.send((index, _call(function, args)))


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    started: float
    ready: bool = False
    task: int | None = None
    deadline: float | None = None


class _WorkerPool:
    def __init__(self, function: Callable[..., Any], size: int) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._pickled_function = pickle.dumps(function)
        self._workers = [self._start() for _ in range(size)]

    def _start(self) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child_end, self._pickled_function), daemon=True
        )
        process.start()
        child_end.close()
        return _Worker(process, parent_end, time.monotonic())

    def _replace(self, worker: _Worker) -> None:
        position = self._workers.index(worker)
        self._stop(worker)
        self._workers.insert(position, self._start())

    def _stop(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join()
        worker.connection.close()
        self._workers.remove(worker)

    def run(self, arguments: list[tuple[Any, ...]], timeout: float | None) -> list[TaskOutcome]:
        outcomes: list[TaskOutcome | None] = [None] * len(arguments)
        pending = deque(range(len(arguments)))
        remaining = len(arguments)

        def dispatch(worker: _Worker) -> None:
            worker.task = None
            worker.deadline = None
            if pending:
                index = pending.popleft()
                worker.connection.send((index, arguments[index]))
                worker.task = index
                worker.deadline = None if timeout is None else time.monotonic() + timeout

        while remaining:
            now = time.monotonic()
            waits = [
                w.deadline - now if w.ready else w.started + STARTUP_TIMEOUT_S - now
                for w in self._workers
                if w.deadline is not None or not w.ready
            ]
            ready_connections = wait(
                [w.connection for w in self._workers], timeout=max(0.0, min(waits, default=1.0))
            )
            for worker in list(self._workers):
                if worker.connection in ready_connections:
                    try:
                        message = worker.connection.recv()
                    except (EOFError, OSError):  # the worker died (e.g. out of memory)
                        if not worker.ready:
                            raise RuntimeError(
                                "a metrics worker process exited while starting"
                            ) from None
                        if worker.task is not None:
                            outcomes[worker.task] = TaskOutcome(
                                "error", error="worker process died during the task"
                            )
                            remaining -= 1
                        if pending:
                            self._replace(worker)
                        else:
                            self._stop(worker)
                        continue
                    if message == "ready":
                        worker.ready = True
                    else:
                        index, outcome = message
                        outcomes[index] = outcome
                        remaining -= 1
                    dispatch(worker)
                    continue
                now = time.monotonic()
                if worker.deadline is not None and now >= worker.deadline:
                    outcomes[worker.task] = TaskOutcome("timeout")  # type: ignore[index]
                    remaining -= 1
                    if pending:
                        self._replace(worker)
                    else:  # nothing left to give it: stop it for good
                        self._stop(worker)
                elif not worker.ready and now >= worker.started + STARTUP_TIMEOUT_S:
                    raise RuntimeError(
                        f"a metrics worker process did not start within {STARTUP_TIMEOUT_S:.0f} s"
                    )
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        for worker in self._workers:
            if worker.process.is_alive():
                try:
                    worker.connection.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
