"""Every instruction-set copy of the kernels is correct: FUSEDRNN_ISA forces a copy in a fresh
process, which checks itself against the NumPy reference (the copy is chosen once per process)."""
import functools
import json
import os
import subprocess
import sys

import pytest

import fusedrnn

LEVELS = {"baseline": "sse2", "avx2": "avx2", "avx512": "avx512"}
ORDER = ["sse2", "avx2", "avx512"]

CHECK = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import fusedrnn
from test_kernels import GRID, TOL, make_case, option_kw, run, as64, assert_close
from fusedrnn import reference as ref
checked = 0
for cell, option in GRID:
    for dtype in (np.float64, np.float32):
        for reverse in (False, True):
            okw, opt = option_kw(cell, option, (6, 5, 7, 37))
            args, kw, cot = make_case(cell, (6, 5, 7, 37), dtype, lengths=True, **okw)
            got = run(fusedrnn, cell, args, kw, cot, opt, reverse)
            want = run(ref, cell, [a.astype(np.float64) for a in args], as64(kw), as64(cot), opt,
                       reverse)
            for g, w in zip(got, want):
                assert_close(g, w, TOL[dtype], f"{cell} {option} {np.dtype(dtype).name}")
            checked += 1
# The vector activations of this copy: accuracy against float64 and saturation at large |x|.
from test_kernels import (test_sigmoid_is_accurate_and_saturates,
                          test_tanh_is_accurate_and_saturates)
activations = 0
for dtype in (np.float32, np.float64):
    test_tanh_is_accurate_and_saturates(dtype)
    test_sigmoid_is_accurate_and_saturates(dtype)
    activations += 2
print(json.dumps({"isa": fusedrnn.build_info()["instruction_set"], "checked": checked,
                  "activations": activations}))
"""


@functools.lru_cache(maxsize=None)
def _run_forced(level):
    env = dict(os.environ)
    if level is None:
        env.pop("FUSEDRNN_ISA", None)
    else:
        env["FUSEDRNN_ISA"] = level
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", CHECK, tests_dir], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_build_info_names_the_copies():
    info = fusedrnn.build_info()
    compiled = [s.strip() for s in info["compiled_isas"].split(",")]
    assert info["instruction_set"] in compiled
    assert compiled[0] in ("sse2", "neon", "scalar", "avx", "avx2", "avx512")


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_forced_instruction_set_matches_reference(level):
    compiled = [s.strip() for s in fusedrnn.build_info()["compiled_isas"].split(",")]
    if LEVELS[level] not in compiled:
        pytest.skip(f"{level} copy not built here (compiled: {compiled})")
    best = _run_forced(None)["isa"]
    got = _run_forced(level)
    # A copy the CPU cannot run is never chosen: the widest one at or below the request runs.
    expected = ORDER[min(ORDER.index(LEVELS[level]), ORDER.index(best))]
    assert got["isa"] == expected
    assert got["activations"] == 4   # tanh and sigmoid accuracy, both dtypes, in this copy
    assert got["checked"] == 32   # 8 cell options (LSTM projection included) x 2 dtypes x 2


# FUSEDRNN_ISA (issue 23, item 20): the names build_info prints, in any case; anything else is
# an error naming the accepted values, never silently ignored.
def _forced_isa(value):
    env = dict(os.environ, FUSEDRNN_ISA=value)
    return subprocess.run([sys.executable, "-c",
                           "import fusedrnn; print(fusedrnn.build_info()['instruction_set'])"],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("value, copy", [
    ("baseline", "sse2"), ("BASELINE", "sse2"), ("sse2", "sse2"), ("SSE2", "sse2"),
    ("avx2", "avx2"), ("AVX2", "avx2"), ("Avx2", "avx2"), ("avx512", "avx512"),
    ("AVX512", "avx512"), ("", None)])
def test_fusedrnn_isa_accepts_the_names_build_info_prints(value, copy):
    best = _run_forced(None)["isa"]
    compiled = [s.strip() for s in fusedrnn.build_info()["compiled_isas"].split(",")]
    out = _forced_isa(value)
    assert out.returncode == 0, out.stderr[-2000:]
    got = out.stdout.strip().splitlines()[-1]  # (an editable install may log its rebuild)
    if copy is None:       # empty: as if unset
        assert got == best
    elif copy in compiled:
        assert got == ORDER[min(ORDER.index(copy), ORDER.index(best))]


@pytest.mark.parametrize("value", ["bogus", "avx", "avx-512", "neon", " avx2"])
def test_fusedrnn_isa_unknown_value_is_an_error_naming_the_accepted_ones(value):
    out = _forced_isa(value)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: FUSEDRNN_ISA=")
    assert repr(value) in last or f"'{value}'" in last
    for name in ("baseline", "sse2", "avx2", "avx512"):
        assert name in last


# One parser of FUSEDRNN_ISA for both choices (isa::requested_level): the low-precision tier
# names are accepted by the float32 kernels (as their widest copy, avx512) and every name, in
# any case, narrows the low-precision tier alike; an unknown value is an error for both.
def _forced_tiers(value):
    env = dict(os.environ, FUSEDRNN_ISA=value)
    code = ("import json, fusedrnn; from fusedrnn import lowp\n"
            "print(json.dumps([fusedrnn.build_info()['instruction_set'], lowp.active_tier()]))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("value, copy, tier", [
    ("amx", "avx512", "amx"), ("AMX", "avx512", "amx"), ("avx512_bf16", "avx512", "avx512_bf16"),
    ("AVX512_BF16", "avx512", "avx512_bf16"), ("Avx512", "avx512", "avx512"),
    ("SSE2", "sse2", "baseline"), ("Baseline", "sse2", "baseline"), ("AVX2", "avx2", "avx2")])
def test_fusedrnn_isa_one_parser_for_copy_and_low_precision_tier(value, copy, tier):
    from fusedrnn import lowp
    best = _run_forced(None)["isa"]
    out = _forced_tiers(value)
    assert out.returncode == 0, out.stderr[-2000:]
    got_copy, got_tier = json.loads(out.stdout.strip().splitlines()[-1])
    compiled = [s.strip() for s in fusedrnn.build_info()["compiled_isas"].split(",")]
    if copy in compiled:
        assert got_copy == ORDER[min(ORDER.index(copy), ORDER.index(best))]
    order = list(reversed(lowp.TIERS))  # narrowest first
    runs = [t for t in order if lowp.tiers()[t] and order.index(t) <= order.index(tier)]
    want = runs[-1] if runs else "baseline"
    assert got_tier == order[min(order.index(want), order.index(lowp.active_tier()))]


def test_fusedrnn_isa_unknown_value_is_an_error_for_the_low_precision_tier_too():
    env = dict(os.environ, FUSEDRNN_ISA="amx2")
    out = subprocess.run([sys.executable, "-c", "from fusedrnn import lowp; lowp.active_tier()"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: FUSEDRNN_ISA='amx2'")
    for name in ("baseline", "sse2", "avx2", "avx512", "avx512_bf16", "amx"):
        assert name in last
