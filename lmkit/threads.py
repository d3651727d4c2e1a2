"""How many CPU threads torch uses: the user's number, OMP_NUM_THREADS, or the physical cores nobody else is using.

torch starts one thread per core it sees. On a machine whose cores are busy with other jobs those threads
spin waiting for each other, and small models get slower, not faster: on a shared 2-core machine the
quickstart trained at ~1,250 tokens/s with torch's default and ~5,300 with one thread (docs/cli.md has the
measurements). So unless the user says otherwise lmkit takes the physical cores this process may run on,
less the ones other processes keep busy (the 1-minute load average, checked against the CPUs' own busy
counters over a fifth of a second), and at least one.

The order of precedence: an explicit count (`--threads`, `train.threads`), then the OMP_NUM_THREADS
environment variable (torch already honours it; torchrun sets it to 1 for several processes), then that rule.
The automatic count is measured once per process, as the first run starts: later the load average would
count this process's own work.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lmkit.errors import InputError

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and why, e.g. ThreadChoice(1, "auto: 2 physical cores, load 1.3")."""

    count: int
    reason: str


def usable_cpus() -> int:
    """The logical CPUs this process may run on (its affinity mask, less a cgroup CPU quota if one is set)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def physical_cores() -> int:
    """The physical cores among the CPUs this process may run on (hyper-threads of one core count once)."""
    if not hasattr(os, "sched_getaffinity"):
        return usable_cpus()
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            cores.add((package, (topology / "core_id").read_text().strip()))
        except OSError:
            return usable_cpus()  # no topology (a container without /sys): count logical CPUs
    return min(len(cores), usable_cpus()) if cores else usable_cpus()


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) time of all CPUs together since boot, in ticks, from /proc/stat (None where there is none)."""
    try:
        ticks = [int(field) for field in _PROC_STAT.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = sum(ticks[3:5])  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def busy_cores(look_s: float = 0.2) -> float:
    """Cores kept busy by other processes: the 1-minute load average (0 where the OS has none), or less where
    the CPUs' own counters, over a short look, show them idler. The load average also counts tasks that wait in
    the kernel without using a core (seen here: a load of 1.0 on an idle machine, which would cost a 2-core
    machine half its speed)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    before = _cpu_times()
    if before is None or load < 0.5:  # below 0.5 the load takes no core away (see _auto_threads)
        return load
    time.sleep(look_s)
    after = _cpu_times()
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return load
    return min(load, busy / total * (os.cpu_count() or 1))  # /proc/stat covers every CPU, not only ours


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """The thread count to use: `requested`, else OMP_NUM_THREADS, else the idle physical cores (at least 1)."""
    if requested is not None:
        if requested < 1:
            raise InputError(f"the thread count must be at least 1, got {requested}")
        return ThreadChoice(requested, "set by the user")
    from_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if from_env.isdigit() and int(from_env) > 0:
        return ThreadChoice(int(from_env), "OMP_NUM_THREADS")
    return _auto_threads()


@functools.cache
def _auto_threads() -> ThreadChoice:
    """The idle physical cores, measured once per process: later the load average counts this process's own
    work (a sweep's second run would see the first one's load and take fewer threads)."""
    cores, load = physical_cores(), busy_cores()
    count = max(1, min(cores, cores - round(load)))
    return ThreadChoice(count, f"auto: {cores} physical cores, load {load:.1f}")


def apply_threads(requested: int | None = None) -> ThreadChoice:
    """Choose the thread count (see `choose_threads`) and set torch to it; return the choice."""
    import torch

    choice = choose_threads(requested)
    if torch.get_num_threads() != choice.count:
        torch.set_num_threads(choice.count)
    return choice
