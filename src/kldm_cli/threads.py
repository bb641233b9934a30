"""CPU threads: one rule for every command's ``--threads`` default.

Why a rule at all: torch runs its CPU kernels on GNU OpenMP threads. With OpenMP's own waiting, a
thread that reaches a barrier first *spins* for a while, and a thread whose core is taken by
another process stalls every parallel region until the scheduler gives it a turn. Sampling a few
small crystals runs tens of thousands of tiny parallel regions, so beside one busy process two
threads on two cores were ~18x *slower* than one thread (``docs/benchmarks.md``, Threads).

The rule:

1. ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once) is set when ``kldm_cli`` is
   imported, unless the environment already sets it; it must be set before torch is loaded.
2. :func:`default_threads`: one thread per physical core, but no more threads than cores left
   idle by other processes (1-minute load average) and one thread per
   :data:`MIN_ATOMS_PER_THREAD` atoms of a batch; at least one. Beside a busy process, or for a
   few small crystals, that is one thread.
"""

from __future__ import annotations

import os

#: Below this many atoms per thread in a sampling or training batch, extra threads only add
#: synchronisation (measured: ``benchmarks/bench_threads.py``).
MIN_ATOMS_PER_THREAD = 256


def use_passive_openmp_wait() -> None:
    """Make OpenMP threads sleep instead of spinning while they wait (``OMP_WAIT_POLICY``).

    Effective only before torch is first imported; a value set by the user is kept."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads not counted)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as handle:
            physical, core = "0", None
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    physical = value
                elif key == "core id":
                    core = value
                elif not key and core is not None:
                    cores.add((physical, core))
                    physical, core = "0", None
            if core is not None:
                cores.add((physical, core))
    except OSError:
        pass
    count = len(cores) or os.cpu_count() or 1
    return max(1, min(count, available or count))


def busy_cores() -> int:
    """Cores other processes keep busy: the whole part of the 1-minute load average (0 where
    the platform has none)."""
    try:
        return int(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def default_threads(
    work_atoms: int | None = None, *, cores: int | None = None, busy: int | None = None
) -> int:
    """The CPU threads a command uses without ``--threads``: the smallest of

    - the physical cores (``cores``, default :func:`physical_cores`);
    - the cores not kept busy by other processes (``cores - busy``, ``busy`` default
      :func:`busy_cores`): a thread that has to share its core stalls the others;
    - one thread per :data:`MIN_ATOMS_PER_THREAD` atoms of work (``work_atoms``: the atoms in
      the largest sampling batch; ``None``: large, as in training);

    and at least one.
    """
    cores = physical_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    by_work = cores if work_atoms is None else work_atoms // MIN_ATOMS_PER_THREAD
    return max(1, min(cores, cores - busy, by_work))


def set_threads(threads: int | None = None, *, work_atoms: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``threads``, or :func:`default_threads` if ``None``.

    Returns the number set. Raises ``ValueError`` for a count below one.
    """
    import torch

    if threads is None:
        threads = default_threads(work_atoms)
    if threads < 1:
        raise ValueError(f"the number of threads must be positive, got {threads}")
    torch.set_num_threads(threads)
    return threads
