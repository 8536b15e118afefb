"""FUSEDRNN_ADAPTIVE_THREADS: the documented spellings of on and off (any case), unset or empty
= the default (on); any other value (it was silently "on") is a ValueError naming the variable
and the accepted values where it is first read, as a bad FUSEDRNN_ISA is: the first kernel
call, get_adaptive_threads(), and the command line's start (one line, exit 2)."""
import json
import os
import subprocess
import sys

import pytest

from fusedrnn import _openmp_env


def _run(code, value):
    # (an editable install's rebuild check stays silent: it would print on stdout / stderr)
    env = dict(os.environ, SKBUILD_EDITABLE_VERBOSE="0")
    env.pop("FUSEDRNN_ADAPTIVE_THREADS", None)
    if value is not None:
        env["FUSEDRNN_ADAPTIVE_THREADS"] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("value,on", [(None, True), ("", True), ("  ", True), ("1", True),
                                      ("TRUE", True), ("On", True), (" yes ", True),
                                      ("0", False), ("False", False), ("OFF", False),
                                      ("no", False)])
def test_accepted_spellings(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("FUSEDRNN_ADAPTIVE_THREADS", raising=False)
    else:
        monkeypatch.setenv("FUSEDRNN_ADAPTIVE_THREADS", value)
    assert _openmp_env.adaptive_threads_from_env() is on
    assert _openmp_env.Contention(cpus=2).enabled is on


@pytest.mark.parametrize("value", ["bogus", "2", "enable", "nope", "-1"])
def test_other_values_are_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("FUSEDRNN_ADAPTIVE_THREADS", value)
    c = _openmp_env.Contention(cpus=2)         # constructing reads nothing (import works)
    msg = rf"FUSEDRNN_ADAPTIVE_THREADS={value!r} is neither on nor off; accepted"
    with pytest.raises(ValueError, match=msg):
        c.enabled
    with pytest.raises(ValueError, match=msg):
        c.cap(1)                               # the first kernel call, whatever its threads
    c.enabled = False                          # set_adaptive_threads overrides the variable
    assert c.cap(4) == 4


def test_fresh_process_import_works_first_use_raises():
    code = ("import numpy as np, fusedrnn\n"
            "try:\n"
            "    fusedrnn.LSTM(2, 3).forward(np.zeros((2, 1, 2), np.float32))\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    r = _run(code, "bogus")
    assert r.returncode == 0, r.stderr
    assert "FUSEDRNN_ADAPTIVE_THREADS='bogus' is neither on nor off" in r.stdout
    assert "1, true, on, yes" in r.stdout and "0, false, off, no" in r.stdout
    r = _run("import json, fusedrnn; print(json.dumps(fusedrnn.get_adaptive_threads()))", "")
    assert json.loads(r.stdout) is True


def test_cli_reports_a_bad_value_in_one_line():
    r = _run("import sys; from fusedrnn.cli import main; sys.exit(main(['info']))", "maybe")
    err = r.stderr.strip()
    assert r.returncode == 2, (r.stdout, err)
    assert len(err.splitlines()) == 1 and err.startswith("fusedrnn: error: "), err
    assert "FUSEDRNN_ADAPTIVE_THREADS='maybe'" in err
