"""Threads beside other work: the OpenMP spin setting made before the runtime loads, the default
thread count under affinity masks and cgroup CPU quotas, and numpy's BLAS limited to one thread
for the duration of fusedrnn's own products (python/fusedrnn/_openmp_env.py, _blas.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _blas, _openmp_env


def _fresh(code, **env):
    e = {k: v for k, v in os.environ.items()
         if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


SHOW = ("import os, json, fusedrnn; print(json.dumps([os.environ.get('GOMP_SPINCOUNT'), "
        "fusedrnn.get_num_threads()]))")


def test_short_spin_is_set_before_the_runtime_loads_unless_chosen():
    assert _fresh(SHOW)[0] == _openmp_env.SPIN_COUNT
    assert _fresh(SHOW, GOMP_SPINCOUNT="5")[0] == "5"
    assert _fresh(SHOW, OMP_WAIT_POLICY="active")[0] is None


def test_omp_num_threads_is_the_kernels_thread_count():
    assert _fresh(SHOW, OMP_NUM_THREADS="3")[1] == 3
    assert _fresh(SHOW, OMP_NUM_THREADS="1")[1] == 1
    # more than a call takes counts as the most (4096): a kernel call runs (on 4096 threads
    # OpenMP would start; here only the count is checked), set_num_threads's bound
    assert _fresh(SHOW, OMP_NUM_THREADS="99999")[1] == 4096


def _fake_fs(monkeypatch, files):
    monkeypatch.setattr(_openmp_env, "_read", lambda p: files.get(p))


@pytest.mark.parametrize("files, want", [
    ({"/proc/self/cgroup": "0::/a/b", "/sys/fs/cgroup/a/b/cpu.max": "max 100000"}, None),
    ({"/proc/self/cgroup": "0::/a/b", "/sys/fs/cgroup/a/b/cpu.max": "200000 100000"}, 2),
    ({"/proc/self/cgroup": "0::/a/b", "/sys/fs/cgroup/a/b/cpu.max": "150000 100000"}, 2),
    ({"/proc/self/cgroup": "0::/a/b", "/sys/fs/cgroup/a/b/cpu.max": "max 100000",
      "/sys/fs/cgroup/a/cpu.max": "50000 100000"}, 1),        # an ancestor's quota counts
    ({"/proc/self/cgroup": "4:memory:/x\n2:cpu,cpuacct:/k",
      "/sys/fs/cgroup/cpu,cpuacct/k/cpu.cfs_quota_us": "300000",
      "/sys/fs/cgroup/cpu,cpuacct/k/cpu.cfs_period_us": "100000"}, 3),   # cgroup v1
    ({"/proc/self/cgroup": "2:cpu,cpuacct:/k",
      "/sys/fs/cgroup/cpu,cpuacct/k/cpu.cfs_quota_us": "-1",
      "/sys/fs/cgroup/cpu,cpuacct/k/cpu.cfs_period_us": "100000"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota(monkeypatch, files, want):
    _fake_fs(monkeypatch, files)
    assert _openmp_env.cgroup_cpu_limit() == want


def test_default_threads_capped_by_the_quota_not_by_omp_num_threads(monkeypatch):
    _fake_fs(monkeypatch, {"/proc/self/cgroup": "0::/c", "/sys/fs/cgroup/c/cpu.max":
                           "200000 100000"})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _openmp_env.default_threads(16) == 2
    assert _openmp_env.default_threads(1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert _openmp_env.default_threads(8) == 8      # an explicit choice wins


def test_one_blas_thread_inside_nested_and_restored():
    libs = _blas._blas_libs()
    if not libs:
        pytest.skip("threadpoolctl finds no BLAS library here")
    lib = libs[0]
    before = lib.get_num_threads()
    seen = []
    try:
        lib.set_num_threads(2)
        with _blas.single_threaded_blas():
            seen.append(lib.get_num_threads())
            with _blas.single_threaded_blas():       # nested (another thread's call)
                seen.append(lib.get_num_threads())
            seen.append(lib.get_num_threads())
        seen.append(lib.get_num_threads())
    finally:
        lib.set_num_threads(before)
    assert seen == [1, 1, 1, 2]


def test_linear_and_grad_norm_products_run_inside_the_limit(monkeypatch):
    import contextlib
    import fusedrnn.module as M
    import fusedrnn.optim as O
    calls = []

    @contextlib.contextmanager
    def spy():
        calls.append(1)
        yield

    monkeypatch.setattr(M, "single_threaded_blas", spy)
    monkeypatch.setattr(O, "single_threaded_blas", spy)
    lin = fusedrnn.Linear(8, 4, seed=0)
    y = lin.forward(np.ones((3, 2, 8), np.float32))
    lin.backward(np.ones_like(y))
    fusedrnn.clip_grad_norm_(lin.parameters(), 1.0)
    assert len(calls) == 2 + 2     # forward, backward; the norms of weight and bias


def test_cli_commands_hold_one_blas_thread_and_restore_it(monkeypatch):
    """`fusedrnn train` (and the other commands that run the kernels) hold _blas's limit for the
    whole command, also with OMP_NUM_THREADS exported, and give the BLAS its count back."""
    from fusedrnn import cli
    libs = _blas._blas_libs()
    if not libs:
        pytest.skip("threadpoolctl finds no BLAS library here")
    lib = libs[0]
    before = lib.get_num_threads()
    seen = []
    monkeypatch.setattr(cli, "cmd_train", lambda args, t0: seen.append(lib.get_num_threads()) or 0)
    monkeypatch.setattr(cli, "cmd_info", lambda args, t0: seen.append(lib.get_num_threads()) or 0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        lib.set_num_threads(2)
        assert cli.main(["train"]) == 0
        seen.append(lib.get_num_threads())
        assert cli.main(["info"]) == 0          # runs no kernels: the BLAS is left alone
    finally:
        lib.set_num_threads(before)
    assert seen == [1, 2, 2]


# ----------------------------------------------------------------------------------------------
# The thread count adapts to other processes' load (_openmp_env.Contention).

class _Clock:
    def __init__(self):
        self.t, self.busy, self.own, self.runnable = 0.0, 0.0, 0.0, 0


def _contention(cpus, clock):
    c = _openmp_env.Contention(cpus=cpus, clock=lambda: clock.t, system=lambda: clock.busy,
                               own=lambda: clock.own, runnable=lambda: clock.runnable)
    c.enabled = True
    return c


def _advance(clock, dt, others, own, runnable=None):
    """dt seconds pass; other processes keep `others` CPUs busy, this one `own`; at the end,
    `runnable` tasks of other processes are runnable (default: round(others))."""
    clock.t += dt
    clock.busy += (others + own) * dt
    clock.own += own * dt
    clock.runnable = round(others) if runnable is None else runnable


def test_contention_shrinks_the_team_while_other_processes_keep_cpus_busy():
    clock = _Clock()
    c = _contention(2, clock)
    assert c.cap(2) == 2                        # no window measured yet
    _advance(clock, 0.2, others=0.02, own=1.9)  # a quiet machine: this process uses both CPUs
    assert c.cap(2) == 2
    _advance(clock, 0.2, others=1.0, own=1.0)   # a busy neighbour: one CPU is left
    assert c.cap(2) == 1
    assert c.cap(1) == 1
    _advance(clock, 0.05, others=0.0, own=2.0)  # inside the window: no new sample
    assert c.cap(2) == 1
    _advance(clock, 0.2, others=0.1, own=1.0)   # the neighbour stopped
    assert c.cap(2) == 2
    _advance(clock, 0.2, others=7.0, own=0.5)   # far more runnable work than CPUs
    assert c.cap(2) == 1                        # never below one thread
    _advance(clock, 0.2, others=1.0, own=1.0, runnable=0)
    assert c.cap(2) == 2    # a process taking turns with this one: busy, but idle while we run
    _advance(clock, 0.2, others=0.05, own=2.0, runnable=3)
    assert c.cap(2) == 2    # tasks runnable at the instant of the sample only


def test_contention_on_a_large_machine_and_when_off_or_unmeasurable():
    clock = _Clock()
    c = _contention(16, clock)
    c.cap(8)
    _advance(clock, 0.5, others=9.6, own=2.0)   # 6.4 CPUs free
    assert c.cap(8) == 6
    assert c.cap(4) == 4
    c.enabled = False
    assert c.cap(8) == 8
    reads = []
    blind = _openmp_env.Contention(cpus=2, clock=lambda: clock.t,
                                   system=lambda: reads.append(clock.t),
                                   own=lambda: 0.0, runnable=lambda: 2)
    blind.enabled = True
    for _ in range(3):
        _advance(clock, 0.2, others=2.0, own=0.0)
        assert blind.cap(2) == 2                # /proc/stat unreadable: the asked count
        assert blind.cap(2) == 2                # and not tried again within the window
    assert len(reads) == 3


def test_kernel_calls_take_the_adapted_thread_count(monkeypatch):
    from fusedrnn import functional as F
    monkeypatch.setattr(_openmp_env.contention, "enabled", True)
    monkeypatch.setattr(_openmp_env.contention, "_last", (float("inf"), 0.0, 0.0))
    monkeypatch.setattr(_openmp_env.contention, "free", 1.2)
    old = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(2)
    try:
        assert F._threads() == 1
        assert fusedrnn.get_num_threads() == 2      # the setting itself is unchanged
        fusedrnn.set_adaptive_threads(False)
        assert F._threads() == 2
        fusedrnn.set_adaptive_threads(True)
        assert fusedrnn.get_adaptive_threads() is True
        with pytest.raises(TypeError, match="enabled must be a bool"):
            fusedrnn.set_adaptive_threads(1)
    finally:
        fusedrnn.set_num_threads(old)
        fusedrnn.set_adaptive_threads(False)


def test_a_busy_process_beside_us_is_measured():
    """The real sampler (/proc/stat and os.times) sees a busy-looping process pinned beside
    this one as one CPU taken."""
    if not os.path.exists("/proc/stat") or len(os.sched_getaffinity(0)) != os.cpu_count() or \
            os.cpu_count() < 2:
        pytest.skip("needs /proc/stat and the whole machine in the affinity mask")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        c = _openmp_env.Contention()
        c.enabled = True
        c.cap(2)
        import time
        time.sleep(0.3)
        assert c.cap(os.cpu_count()) <= os.cpu_count() - 1
        assert c.free <= os.cpu_count() - 0.6
        assert _openmp_env._runnable_others() >= 1
    finally:
        busy.kill()
        busy.wait()


def test_adaptation_is_on_by_default_and_off_by_the_variable():
    code = "import json, fusedrnn; print(json.dumps(fusedrnn.get_adaptive_threads()))"
    assert _fresh(code) is True
    assert _fresh(code, FUSEDRNN_ADAPTIVE_THREADS="0") is False
    assert _fresh(code, FUSEDRNN_ADAPTIVE_THREADS=" Off") is False
    assert _fresh(code, FUSEDRNN_ADAPTIVE_THREADS="1") is True
