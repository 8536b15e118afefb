"""OpenMP settings that must be in place before the kernels' OpenMP runtime loads (imported by
fusedrnn/__init__.py before fusedrnn._core), and the default thread count.

Spin, then sleep. The kernels' threads meet at a barrier a few times per time step. libgomp's
default lets a waiting thread spin 300 000 iterations (milliseconds) before it sleeps; when
another process takes one of the cores, the spinning thread burns the time its descheduled
partner needs, and 2 threads became 5x slower than 1 (LSTM T=100 N=64 H=256 inference on this
project's 2-core machine under load). With GOMP_SPINCOUNT=1000 (the count libgomp itself switches
to when it knows it has more threads than CPUs: tens of microseconds of spinning, then a futex
sleep) the same run measured 1.14x, and the passive policy 1.12x. The variable is set only when
neither GOMP_SPINCOUNT nor OMP_WAIT_POLICY is set (an explicit choice wins), and it only takes
effect if no other module loaded the system libgomp first. C++ programs set it themselves.
Results never depend on it (the kernels' work split does not depend on timing).

Default thread count: OMP_NUM_THREADS when set (OpenMP's meaning: the kernels' threads);
otherwise the CPUs this process may run on (its affinity mask, as OpenMP counts them) capped by
its cgroup CPU quota (a container limited to 2 CPUs on a 64-core host gets 2 threads, not 64:
more threads than the quota allows are descheduled at every barrier).
"""
from __future__ import annotations

import math
import os
import time

SPIN_COUNT = "1000"

if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit():
    """CPUs the cgroup CPU quota allows this process (rounded up), or None when unlimited or
    unknown. cgroup v2 (cpu.max of the process's group and its ancestors) or v1 (cfs quota)."""
    limits = []
    cg = _read("/proc/self/cgroup") or ""
    for line in cg.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":          # v2 unified hierarchy
            p = path
            while True:
                v = _read(os.path.join("/sys/fs/cgroup", p.lstrip("/"), "cpu.max"))
                if v:
                    q, _, period = v.partition(" ")
                    if q != "max" and period:
                        limits.append(int(q) / int(period))
                if p in ("/", ""):
                    break
                p = os.path.dirname(p)
        elif "cpu" in controllers.split(","):          # v1
            for base in ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"):
                d = os.path.join(base, path.lstrip("/"))
                q, period = _read(os.path.join(d, "cpu.cfs_quota_us")), \
                    _read(os.path.join(d, "cpu.cfs_period_us"))
                if q and period and int(q) > 0:
                    limits.append(int(q) / int(period))
                    break
    valid = [x for x in limits if x > 0]
    return max(1, math.ceil(min(valid))) if valid else None


def default_threads(openmp_max_threads: int) -> int:
    """The kernels' thread count when set_num_threads was not called (see the module doc)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return openmp_max_threads
    q = cgroup_cpu_limit()
    return max(1, min(openmp_max_threads, q)) if q else openmp_max_threads


# ----------------------------------------------------------------------------------------------
# Threads under contention. Every time step of a kernel ends at a barrier, so a team of threads
# runs at the pace of its slowest member: when another process keeps one of our CPUs busy, the
# scheduler time-slices our thread on that CPU with it, and each barrier waits for that thread's
# next slice (a 2-thread call measured 5-18x slower than 1 thread on this 2-CPU machine). A
# short spin (above) stops the waiting thread from burning its partner's CPU, but it cannot give
# the descheduled thread its CPU back. So the kernels' team shrinks while other processes keep
# CPUs busy. At most every WINDOW seconds (never inside a call) two measures of the others are
# taken, and the smaller counts:
#   over time: the CPU time the whole system spent since the last sample (/proc/stat: all CPUs,
#     all processes, steal included) minus this process's own (os.times: all its threads), per
#     second of wall time: how many CPUs the others kept busy on average;
#   right now: the runnable tasks of the system (/proc/loadavg) minus this process's runnable
#     threads (/proc/self/task/*/stat).
# Each alone misleads: a process that works only while this one waits for it (a server and its
# client taking turns) takes CPU time but never competes, and a short-lived task may be
# runnable at the instant of a sample. A neighbour that really competes shows in both.
# A call then runs on at most the CPUs left free, rounded, at least 1. Results never depend on
# it: the kernels' arithmetic does not depend on the thread count (bitwise, tested).

WINDOW = 0.1                   # seconds between two samples
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _system_cpu_seconds():
    """CPU seconds all CPUs have spent busy since boot (user, nice, system, irq, softirq, steal;
    not idle or iowait), or None where /proc/stat is unreadable."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != b"cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks) - idle) / _TICK


def _own_cpu_seconds():
    t = os.times()
    return t.user + t.system


def _runnable_others():
    """Runnable tasks of other processes right now, or None where /proc is unreadable."""
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                    st = f.read()
            except OSError:         # the thread ended meanwhile
                continue
            if st[st.rindex(b")") + 2:][:1] == b"R":
                own += 1
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - own)


ADAPTIVE_ON, ADAPTIVE_OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def adaptive_threads_from_env() -> bool:
    """FUSEDRNN_ADAPTIVE_THREADS: 1 / true / on / yes and 0 / false / off / no (any case,
    surrounding blanks ignored); unset or empty: the default, on. Any other value was silently
    "on"; it is a ValueError naming the variable and the accepted values, raised where the
    variable is first read (the first kernel call, get_adaptive_threads(), the command line's
    start), as a bad FUSEDRNN_ISA is, and again at each use until fixed or overridden by
    set_adaptive_threads."""
    raw = os.environ.get("FUSEDRNN_ADAPTIVE_THREADS", "")
    v = raw.strip().lower()
    if v in ADAPTIVE_ON or not v:
        return True
    if v in ADAPTIVE_OFF:
        return False
    raise ValueError(f"FUSEDRNN_ADAPTIVE_THREADS={raw!r} is neither on nor off; accepted (any "
                     f"case): {', '.join(ADAPTIVE_ON)} (adapt the thread count to other "
                     f"processes' load), {', '.join(ADAPTIVE_OFF)} (keep it fixed); unset or "
                     f"empty: on")


class Contention:
    """The CPUs other processes leave free, sampled at most every WINDOW seconds."""

    def __init__(self, cpus=None, clock=None, system=None, own=None, runnable=None):
        self.cpus = cpus or os.cpu_count() or 1
        self._clock = clock or time.monotonic
        self._system = system or _system_cpu_seconds
        self._own = own or _own_cpu_seconds
        self._runnable = runnable or _runnable_others
        self._last = None               # (wall, system busy, own) at the last sample
        self.free = None                # CPUs left free at the last sample (float), or None
        self._enabled = None            # None: FUSEDRNN_ADAPTIVE_THREADS not read yet

    @property
    def enabled(self) -> bool:
        """Whether the thread count adapts (set_adaptive_threads); until set, read from
        FUSEDRNN_ADAPTIVE_THREADS on first use (adaptive_threads_from_env)."""
        if self._enabled is None:
            self._enabled = adaptive_threads_from_env()
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value

    def cap(self, n: int) -> int:
        """The threads a call asking for n runs on: n, or fewer while other processes keep the
        CPUs busy."""
        if not self.enabled or n <= 1:   # (enabled first: a bad variable is reported by the
            return n                     # first kernel call, whatever its thread count)
        now = self._clock()
        last = self._last
        if last is None or now - last[0] >= WINDOW:
            # a sample every WINDOW seconds, also where /proc/stat is unreadable (busy None:
            # nothing is measured, and the file is not tried again at every call)
            busy, own = self._system(), self._own()
            if busy is not None and last is not None and last[1] is not None and now > last[0]:
                over_time = max(0.0, (busy - last[1] - (own - last[2])) / (now - last[0]))
                right_now = self._runnable()
                others = over_time if right_now is None else min(over_time, right_now)
                self.free = self.cpus - others
            self._last = (now, busy, own)
        if self.free is None:
            return n
        return max(1, min(n, int(self.free + 0.5)))


contention = Contention()
