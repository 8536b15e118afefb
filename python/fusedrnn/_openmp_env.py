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
