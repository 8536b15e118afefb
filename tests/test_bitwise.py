"""Numerics do not change bit for bit: every cell variant's outputs and gradients equal the
committed fixtures (tests/fixtures/bitwise, recorded before the architecture refactor of
issue 15 by tests/_bitwise.py), on 1 and 2 threads, in every instruction-set copy this machine
runs (FUSEDRNN_ISA, one fresh process per copy)."""
import json
import os
import subprocess
import sys

import pytest

import fusedrnn

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "bitwise")
LEVELS = {"baseline": "sse2", "avx2": "avx2", "avx512": "avx512"}


def _run(level):
    env = dict(os.environ, FUSEDRNN_ISA=level)
    return subprocess.run([sys.executable, os.path.join(HERE, "_bitwise.py"), "check", FIXTURES],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_outputs_and_gradients_equal_the_fixtures_bitwise(level):
    compiled = [s.strip() for s in fusedrnn.build_info()["compiled_isas"].split(",")]
    if LEVELS[level] not in compiled:
        pytest.skip(f"{level} copy not built here (compiled: {compiled})")
    out = _run(level)
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr[-3000:]
    got = json.loads(lines[-1])
    if got["isa"] != LEVELS[level]:
        pytest.skip(f"this CPU does not run the {level} copy (got {got['isa']})")
    assert out.returncode == 0 and got["n_mismatches"] == 0, got
    assert got["compared"] > 700


def test_fixtures_are_small_and_cover_every_copy_recorded():
    files = sorted(os.listdir(FIXTURES))
    assert set(files) >= {"sse2.npz", "avx2.npz", "avx512.npz"}
    assert sum(os.path.getsize(os.path.join(FIXTURES, f)) for f in files) < 1_000_000
