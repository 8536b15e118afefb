"""Subnormal numbers inside the kernels are flushed to zero (MXCSR FTZ + DAZ, cpp/src/kernels/fpenv.h), in
every instruction-set copy, on one thread and on a team, forward and backward, and the caller's
own floating-point environment is left as it was."""
import functools
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "i686"),
                                reason="the flush is x86 (MXCSR) only")

LEVELS = {"baseline": "sse2", "avx2": "avx2", "avx512": "avx512"}

# tiny is subnormal; tiny * huge is a normal number (1e-9 / 1e-10) that only appears when the
# subnormal operand is read as itself; small * small is subnormal when written.
CASES = {"float32": (1e-39, 1e30, 1e-20), "float64": (1e-310, 1e300, 1e-160)}

CHECK = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import fusedrnn
from fusedrnn import functional as F
from test_subnormal import flush_results
out = {"isa": fusedrnn.build_info()["instruction_set"], "results": {}}
for threads in (1, 2):
    fusedrnn.set_num_threads(threads)
    for dtype in ("float32", "float64"):
        out["results"][f"{threads}/{dtype}"] = flush_results(dtype)
print(json.dumps(out))
"""


def flush_results(dtype):
    """Largest |value| of each quantity that must be exactly 0 when subnormals are flushed (and
    is about 1e-9 / 1e-10 / 1e-40 without the flush). Shapes big enough for a two-thread team
    (N=64, H=256) and batch 1 (one thread, the plain-call path)."""
    tiny, huge, small = CASES[dtype]
    dt = np.dtype(dtype)
    res = {}
    for N, H in ((1, 1), (64, 256)):
        T, C = 3, 4
        ones = np.ones((T, N, C), dt)
        # DAZ, forward: subnormal input times a huge input weight.
        for cell in ("rnn", "lstm"):
            w_ih = np.full((H if cell == "rnn" else 4 * H, C), huge, dt)
            w_hh = np.zeros((H if cell == "rnn" else 4 * H, H), dt)
            if cell == "rnn":
                y = F.rnn_forward(ones * dt.type(tiny), w_ih, w_hh, nonlinearity="relu",
                                  training=False).y
            else:
                y = F.lstm_forward(ones * dt.type(tiny), w_ih, w_hh, training=False).y
            res[f"daz-forward-{cell}-{N}x{H}"] = float(np.abs(y).max())
        # FTZ, forward: a product of two small normal numbers is subnormal.
        w = np.full((H, C), small, dt)
        y = F.rnn_forward(ones * dt.type(small), w, np.zeros((H, H), dt),
                          nonlinearity="relu", training=False).y
        res[f"ftz-forward-rnn-{N}x{H}"] = float(np.abs(y).max())
        # Backward: a subnormal output gradient times a huge weight (dx), times 1 (dw_ih: FTZ or
        # DAZ on the addition of subnormals).
        out = F.rnn_forward(ones, np.full((H, C), huge, dt), np.zeros((H, H), dt),
                            nonlinearity="relu")
        g = F.rnn_backward(out.cache, dy=np.full((T, N, H), tiny, dt))
        res[f"daz-backward-dx-{N}x{H}"] = float(np.abs(g.dx).max())
        res[f"daz-backward-dw-{N}x{H}"] = float(np.abs(g.dw_ih).max())
    return res


@functools.lru_cache(maxsize=None)
def _run_forced(level):
    env = dict(os.environ, FUSEDRNN_ISA=level)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", CHECK, tests_dir], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_subnormals_are_flushed_in_each_copy(level):
    compiled = [s.strip() for s in fusedrnn.build_info()["compiled_isas"].split(",")]
    if LEVELS[level] not in compiled:
        pytest.skip(f"{level} copy not built here (compiled: {compiled})")
    got = _run_forced(level)
    if got["isa"] != LEVELS[level]:
        pytest.skip(f"this CPU does not run the {level} copy")
    assert len(got["results"]) == 4
    for key, res in got["results"].items():
        assert len(res) == 10
        for what, v in res.items():
            assert v == 0.0, f"{level} {key} {what}: {v} (a subnormal was not flushed)"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_without_the_flush_the_same_cases_are_nonzero(dtype):
    """The cases above do discriminate: the NumPy reference (IEEE gradual underflow) gives the
    non-zero values the kernels would give without the flush."""
    from fusedrnn import reference as ref
    tiny, huge, small = CASES[dtype]
    dt = np.dtype(dtype)
    x = np.full((2, 1, 3), tiny, dt)
    y = ref.rnn_forward(x, np.full((1, 3), huge, dt), np.zeros((1, 1), dt),
                        nonlinearity="relu").y
    assert 1e-11 < float(y.max()) < 1e-8
    assert dt.type(small) * dt.type(small) != 0   # numpy here keeps gradual underflow


@pytest.mark.parametrize("threads", [1, 2])
def test_the_callers_floating_point_environment_is_restored(threads):
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(threads)
    try:
        for dt in (np.float32, np.float64):
            tiny, huge, small = CASES[np.dtype(dt).name]
            assert dt(tiny) * dt(huge) != 0 and dt(small) * dt(small) != 0
            F.lstm_forward(np.full((3, 64, 4), tiny, dt), np.full((1024, 4), huge, dt),
                           np.zeros((1024, 256), dt), training=False)
            # The calling thread reads and writes subnormals again after the call.
            assert dt(tiny) * dt(huge) != 0, "DAZ left set on the caller's thread"
            assert dt(small) * dt(small) != 0, "FTZ left set on the caller's thread"
            assert np.all(np.full(8, dt(small)) * dt(small) != 0)
    finally:
        fusedrnn.set_num_threads(before)
