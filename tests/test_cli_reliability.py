"""Issue 23: nothing lost, no traceback. Each test is one failure found by using fusedrnn as a
careless or hostile user would; CLI cases run the real command in a subprocess and check the
exit status, the one-line message and what is on disk afterwards. Memory cases rely on the
estimate (nothing large is allocated); time cases use budgets of a few seconds."""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import fusedrnn
from fusedrnn import io as fio
from fusedrnn.cli import main
from fusedrnn.tasks.base import DataError
from fusedrnn.tasks.guards import dumps, read_lines

# a forecast run of a second or two: the command's T of the issue, made small
T = ["train", "--task", "forecast", "--steps", "4", "-q", "--threads", "1", "--hidden", "8",
     "--window", "8", "--horizon", "2", "--batch-size", "8"]


# one BLAS thread; an editable install's rebuild check stays silent (it would print on stdout)
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", SKBUILD_EDITABLE_VERBOSE="0")


def run(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120, env=None, cwd=None):
    e = dict(ENV, **(env or {}))
    return subprocess.run([sys.executable, "-m", "fusedrnn", *args], stdout=stdout,
                          stderr=subprocess.PIPE, stdin=stdin, timeout=timeout, env=e,
                          cwd=cwd, text=True)


def one_line_error(p, pattern, code=2):
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("fusedrnn: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in p.stderr and "Warning" not in p.stderr


def strict_json(text):
    def bad(c):
        raise ValueError(f"{c} is not JSON")
    return json.loads(text, parse_constant=bad)


@pytest.fixture(scope="module")
def forecast_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("fc") / "run"
    p = run(T + ["--out", str(out)])
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def charlm_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    text = d / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = d / "run"
    p = run(["train", "--task", "charlm", "--data", str(text), "--steps", "2", "-q",
             "--hidden", "8", "--layers", "1", "--embed", "8", "--seq-len", "16",
             "--batch-size", "4", "--threads", "1", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    return out


# -- 1, 4: standard output closed or full ----------------------------------------------------
def test_closed_stdout_keeps_the_run_and_exits_141(tmp_path):
    out = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "fusedrnn", *T, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    proc.stdout.close()                        # `| head -0`: nobody reads
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err.strip() == ""
    assert (out / "model.safetensors").is_file()
    assert strict_json((out / "metrics.json").read_text())["steps"] == 4


@pytest.mark.parametrize("cmd", ["info", "train", "evaluate", "generate"])
def test_full_stdout_is_one_line_error(cmd, tmp_path, forecast_ckpt, charlm_ckpt):
    args = {"info": ["info"], "train": T + ["--out", str(tmp_path / "o")],
            "evaluate": ["evaluate", str(forecast_ckpt), "--threads", "1"],
            "generate": ["generate", str(charlm_ckpt), "--length", "20", "--prime", "the "]}[cmd]
    with open("/dev/full", "w") as full:
        p = run(args, stdout=full)
    one_line_error(p, "cannot write to standard output: No space left on device")
    if cmd == "train":       # the model is saved all the same
        assert (tmp_path / "o" / "model.safetensors").is_file()


# -- 2: the output directory is checked before training ------------------------------------
@pytest.mark.parametrize("kind", ["empty", "proc", "file_parent", "ckpt_dir", "metrics_dir"])
def test_bad_out_fails_before_training(kind, tmp_path):
    (tmp_path / "regular.txt").write_text("x")
    d = tmp_path / "d"
    out, pattern = {
        "empty": ("", "--out must name a directory"),
        "proc": ("/proc/fusedrnn-nope", "cannot create the directory"),
        "file_parent": (str(tmp_path / "regular.txt" / "sub"), "cannot create the directory"),
        "ckpt_dir": (str(d), "model.safetensors is a directory"),
        "metrics_dir": (str(d), "metrics.json is a directory"),
    }[kind]
    if kind in ("ckpt_dir", "metrics_dir"):
        (d / ("model.safetensors" if kind == "ckpt_dir" else "metrics.json")).mkdir(parents=True)
    t0 = time.perf_counter()
    p = run(T[:3] + ["--steps", "100000"] + T[5:] + ["--out", out])
    one_line_error(p, pattern)
    assert time.perf_counter() - t0 < 30                  # not after 100000 steps
    assert sorted(os.listdir(tmp_path)) == sorted(["regular.txt"] + (["d"] if "dir" in kind
                                                                      else []))
    if "dir" in kind:
        assert not (d / "metrics.json").is_file() and not (d / "model.safetensors").is_file()


# -- 3: disk full during the save ----------------------------------------------------------------
def test_disk_full_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    assert main(T + ["--out", str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()

    def full(f, a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fio, "_write_tensor", full)
    assert main(T + ["--out", str(out), "--overwrite", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert str(out / "model.safetensors") in err[0] and re.search(r"\d+(\.\d)? \w*B\w* needed",
                                                                   err[0])
    assert (out / "model.safetensors").read_bytes() == before
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 512 KiB tmpfs (root with mount rights only; skipped elsewhere)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot run mount")
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_disk_full_on_a_real_tiny_filesystem(tiny_tmpfs):
    out = tiny_tmpfs / "run"
    assert run(T + ["--out", str(out)]).returncode == 0
    before = (out / "model.safetensors").read_bytes()
    p = run(T + ["--out", str(out), "--overwrite", "--hidden", "160"])
    one_line_error(p, r"cannot write .*model\.safetensors: No space left on device "
                      r"\(\d+\.\d MiB needed\)")
    assert (out / "model.safetensors").read_bytes() == before
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_disk_full_simulated_with_dev_full_for_metrics(tmp_path, monkeypatch):
    # metrics.json goes through the same atomic writer: a failing write names the path
    def full(f, a):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(fio.WriteError, match=r"cannot write .*x\.json: No space left .*needed"):
        monkeypatch.setattr(os, "fsync", lambda fd: full(None, None))
        fio.write_file(str(tmp_path / "x.json"), b"{}")
    assert os.listdir(tmp_path) == []


# -- 5: non-finite metrics, overflowing data ---------------------------------------------------
def test_nonfinite_metrics_do_not_lose_the_run(tmp_path, monkeypatch, capsys):
    from fusedrnn.tasks.forecast import Forecast
    real = Forecast.evaluate

    def evaluate(self, model):
        m = real(self, model)
        m["rmse_last"] = math.inf
        m["nrmse"] = math.nan
        return m
    monkeypatch.setattr(Forecast, "evaluate", evaluate)
    out = tmp_path / "o"
    assert main(T + ["--out", str(out)]) == 0
    m = strict_json((out / "metrics.json").read_text())
    assert m["final"]["rmse_last"] is None and m["final"]["nrmse"] is None
    assert "final.rmse_last" in m["non_finite_as_null"]
    assert fusedrnn.load(out / "model.safetensors").metadata["trainer"]["step"] == 4


def test_json_writer_has_no_nan():
    text = dumps({"a": [1.0, math.nan], "b": {"c": -math.inf}, "d": np.float32("inf")})
    assert strict_json(text) == {"a": [1.0, None], "b": {"c": None}, "d": None,
                                 "non_finite_as_null": ["a[1]", "b.c", "d"]}


def test_horizon_beyond_the_builtin_series(tmp_path):
    p = run(T[:-4] + ["--horizon", "1000", "--window", "8", "--out", str(tmp_path / "o")])
    one_line_error(p, r"--horizon 1000 need a series of at least \d+ values")
    assert not (tmp_path / "o").exists()


def test_csv_overflowing_float32_is_rejected(tmp_path):
    csv = tmp_path / "big.csv"
    csv.write_text("v\n" + "\n".join(f"{1e300 * (1 + math.sin(i))}" for i in range(200)))
    p = run(T + ["--data", str(csv), "--out", str(tmp_path / "o")])
    one_line_error(p, r"row 2 holds .* beyond .* float32")
    assert not (tmp_path / "o").exists()


# -- 6: an existing model is not overwritten -------------------------------------------------
def test_existing_model_needs_overwrite(forecast_ckpt, tmp_path):
    before = (forecast_ckpt / "model.safetensors").read_bytes()
    p = run(T + ["--out", str(forecast_ckpt), "--seed", "3"])
    one_line_error(p, r"already holds a model .*--overwrite")
    assert (forecast_ckpt / "model.safetensors").read_bytes() == before
    out = tmp_path / "o"                    # in-process from here (faster, same code path)
    assert main(T + ["--out", str(out)]) == 0
    first = (out / "model.safetensors").read_bytes()
    assert main(T + ["--out", str(out), "--overwrite", "--seed", "5"]) == 0
    assert (out / "model.safetensors").read_bytes() != first
    # resuming the model in --out continues it in place
    assert main(["train", "--resume", str(out), "--steps", "2", "-q", "--out", str(out)]) == 0
    assert fusedrnn.load(out / "model.safetensors").metadata["trainer"]["step"] == 6


# -- 7, 21: the atomic save ----------------------------------------------------------------------
def _model():
    return fusedrnn.RecurrentModel("gru", input_size=3, hidden_size=4, seed=0)


def test_stale_temporaries_are_cleaned(tmp_path):
    old = tmp_path / ".model.safetensors.0123456789ab.tmp"
    young = tmp_path / ".model.safetensors.ba9876543210.tmp"
    other = tmp_path / ".notes.0123456789ab.tmp"
    for f in (old, young, other):
        f.write_bytes(b"x" * 100)
    past = time.time() - 3600
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    fusedrnn.save(tmp_path / "model.safetensors", _model())
    assert not old.exists() and young.exists() and other.exists()


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "m.safetensors"
    code = f"""
import fusedrnn
m = fusedrnn.LSTM(512, 512, num_layers=2, seed=0)       # a 17 MB file
i = 0
while True:
    m.weight_ih_l0.data[0, 0] = i
    fusedrnn.save({str(path)!r}, m)
    i += 1
    print(i, flush=True)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=ENV,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "1"      # one save done, the next under way
        time.sleep(0.2)
    finally:
        p.kill()
        p.wait(timeout=60)
    ck = fusedrnn.load(path)                           # the last complete save
    assert ck.model.weight_ih_l0.data[0, 0] >= 0
    past = time.time() - 3600                          # older than STALE_TMP_SECONDS
    for n in os.listdir(tmp_path):
        os.utime(tmp_path / n, (past, past))
    fusedrnn.save(path, ck.model)                      # cleans what the kill left
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_to_directory_names_the_users_path(tmp_path):
    with pytest.raises(OSError, match=re.escape(f"cannot write {tmp_path}: it is a directory")):
        fusedrnn.save(tmp_path, _model())
    assert os.listdir(tmp_path) == []


def test_save_through_symlink_keeps_link_and_mode(tmp_path):
    target = tmp_path / "real.safetensors"
    fusedrnn.save(target, _model())
    os.chmod(target, 0o444)
    link = tmp_path / "link.safetensors"
    link.symlink_to(target.name)
    m = _model()
    m.head.bias.data[:] = 7
    fusedrnn.save(link, m)
    assert link.is_symlink() and os.readlink(link) == target.name
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert (fusedrnn.load(target).state_dict["head.bias"] == 7).all()


# -- 8: memory estimates before allocation ---------------------------------------------------
@pytest.mark.parametrize("flags, pattern", [
    (["--task", "forecast", "--hidden", "1000000000"], r"--hidden 1000000000"),
    (["--task", "forecast", "--batch-size", "1000000"], r"--batch-size 1000000"),
    (["--task", "classify", "--max-length", "100000000"], r"100000000"),
    (["--task", "classify", "--batch-size", "1000000"], r"--batch-size 1000000"),
])
def test_impossible_memory_is_refused_up_front(flags, pattern, tmp_path):
    t0 = time.perf_counter()
    p = run(["train", "--steps", "2", "-q", "--out", str(tmp_path / "o")] + flags)
    one_line_error(p, r"needs about .*(TiB|PiB|GiB).*" + pattern + r".*available"
                   if "hidden" not in pattern else pattern + r".*available")
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "o").exists()


def test_device_as_data_or_input_is_refused(tmp_path, forecast_ckpt):
    p = run(["train", "--task", "charlm", "--data", "/dev/zero", "--steps", "1", "-q",
             "--out", str(tmp_path / "o")])
    one_line_error(p, r"data file /dev/zero: is a device")
    p = run(["predict", str(forecast_ckpt), "--input", "/dev/zero"])
    one_line_error(p, r"--input /dev/zero: is a device")
    with open("/dev/zero") as z:
        p = run(["predict", str(forecast_ckpt)], stdin=z)
    one_line_error(p, r"standard input: is a device")
    with pytest.raises(DataError, match="larger than the 10 bytes"):
        big = tmp_path / "big.txt"
        big.write_text("x" * 100)
        read_lines(str(big), limit=10)


def test_beam_memory_is_estimated():
    from fusedrnn.tasks.translate import Translate
    task = Translate(argparse.Namespace(hidden=16, layers=1, bidirectional=False))
    task.tgt_vocab, task.max_len = list("abcdefghij"), 11
    task._check_beam_memory(4, 1000)                      # the default: fine
    with pytest.raises(ValueError, match=r"decoding needs about .*--beam 1000000000"):
        task._check_beam_memory(10 ** 9, 1000)


# -- 9, 10: forecast windows, divergence -----------------------------------------------------
def test_window_longer_than_series(tmp_path):
    p = run(T[:-4] + ["--window", "100000", "--out", str(tmp_path / "o")])
    one_line_error(p, r"--window 100000 and --horizon 20 need a series of at least")


def test_diverging_lr_is_one_clean_line(tmp_path):
    p = run(T + ["--lr", "1e30", "--steps", "30", "--out", str(tmp_path / "o")])
    one_line_error(p, r"^fusedrnn: error: the training loss became (nan|inf) at step \d+; try a "
                      r"lower --lr")
    assert p.stderr.count("fusedrnn:") == 1


def test_nonfinite_first_step_blames_the_data_not_the_lr():
    from fusedrnn.tasks.trainer import Run
    assert "--lr" not in Run._nonfinite_message(math.nan, "fusedrnn", 1)
    assert "data" in Run._nonfinite_message(math.nan, "fusedrnn", 1)
    assert "torch" in Run._nonfinite_message(math.inf, "torch   ", 5)


# -- 11: checkpoints checked against their config before building -----------------------------
def _rewrite_config(src, dst, **changes):
    tensors, meta = fio.load_tensors(src)
    cfg = json.loads(meta["model"])
    cfg.update(changes)
    meta["model"] = json.dumps(cfg)
    return tensors, meta


def test_load_rejects_config_larger_than_the_tensors(tmp_path):
    fusedrnn.save(tmp_path / "m.safetensors", _model())
    tensors, meta = _rewrite_config(tmp_path / "m.safetensors", None, hidden_size=20000)
    fio.save_tensors(tmp_path / "big.safetensors", tensors, meta)
    t0 = time.perf_counter()
    with pytest.raises(fio.CheckpointError, match=r"hidden size 20000.*does not match"):
        fusedrnn.load(tmp_path / "big.safetensors")
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize("kind", ["missing", "dtype", "shape", "directory"])
def test_load_problems_are_checkpoint_errors(kind, tmp_path):
    path = tmp_path / "m.safetensors"
    fusedrnn.save(path, _model())
    tensors, meta = fio.load_tensors(path)
    if kind == "missing":
        del tensors["head.bias"]
    elif kind == "dtype":
        tensors["head.bias"] = tensors["head.bias"].astype(np.float64)
    elif kind == "shape":
        tensors["head.bias"] = np.zeros(3, np.float32)
    if kind == "directory":
        path = tmp_path
    else:
        fio.save_tensors(path, tensors, meta)
    with pytest.raises(fio.CheckpointError, match=re.escape(str(path))):
        fusedrnn.load(path)


def test_cli_checkpoint_with_oversized_flags(forecast_ckpt, tmp_path):
    tensors, meta = fio.load_tensors(forecast_ckpt / "model.safetensors")
    user = json.loads(meta["metadata"])
    user["task_metadata"]["flags"]["hidden"] = 20000
    meta["metadata"] = json.dumps(user)
    bad = tmp_path / "bad.safetensors"
    fio.save_tensors(bad, tensors, meta)
    t0 = time.perf_counter()
    one_line_error(run(["evaluate", str(bad)]), r"hidden size 20000.*does not match")
    assert time.perf_counter() - t0 < 30


# -- 12, 13: time budget and validation schedule ----------------------------------------------
def test_time_budget_holds_with_a_slow_validation(tmp_path):
    out = tmp_path / "o"
    budget = 3.0
    p = run(["train", "--task", "charlm", "--time-budget", str(budget), "--layers", "150",
             "--hidden", "4", "--embed", "4", "--seq-len", "20", "--batch-size", "4", "-q",
             "--threads", "1", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    m = strict_json((out / "metrics.json").read_text())
    step = m["train_time_s"] / m["steps"]          # a training step is never cut
    assert m["train_time_s"] + m["eval_time_s"] <= budget * 1.1 + 0.5 + step + 0.5, m
    assert (out / "model.safetensors").is_file()      # kept even if no validation finished


def test_slow_validation_is_not_repeated_pathologically(tmp_path, monkeypatch):
    from fusedrnn.tasks.forecast import Forecast
    real = Forecast.evaluate

    def slow(self, model):
        time.sleep(0.3)
        return real(self, model)
    monkeypatch.setattr(Forecast, "evaluate", slow)
    out = tmp_path / "o"
    assert main(T[:3] + ["--steps", "20"] + T[5:] + ["--out", str(out)]) == 0
    m = strict_json((out / "metrics.json").read_text())
    steps = [e["step"] for e in m["history"]]
    assert steps[-1] == 20 and len(steps) <= 4, steps      # not 10 validations
    # an explicit --eval-every is obeyed
    assert main(T[:3] + ["--steps", "6"] + T[5:] + ["--out", str(out), "--overwrite",
                                                     "--eval-every", "2"]) == 0
    m = strict_json((out / "metrics.json").read_text())
    assert [e["step"] for e in m["history"]] == [2, 4, 6]


# -- 15, 16: inputs the model cannot score, non-finite weights ---------------------------------
def test_charlm_predict_short_lines(charlm_ckpt):
    p = subprocess.run([sys.executable, "-m", "fusedrnn", "predict", str(charlm_ckpt)],
                       input="the fox\n\n", capture_output=True, text=True, timeout=60,
                       env=ENV)
    one_line_error(p, r"input line 2 has fewer than 2 characters")
    assert p.stdout == ""


def test_forecast_predict_huge_values(forecast_ckpt):
    p = subprocess.run([sys.executable, "-m", "fusedrnn", "predict", str(forecast_ckpt)],
                       input=", ".join(["1e308"] * 8) + "\n", capture_output=True, text=True,
                       timeout=60, env=ENV)
    one_line_error(p, r"line 1: values must be finite and within")


def test_nan_weights_warn_and_json_stays_valid(forecast_ckpt, tmp_path):
    tensors, meta = fio.load_tensors(forecast_ckpt / "model.safetensors")
    tensors["head.bias"][:] = np.nan
    bad = tmp_path / "nan.safetensors"
    fio.save_tensors(bad, tensors, meta)
    p = run(["evaluate", str(bad), "--json", "--threads", "1"])
    assert p.returncode == 0, p.stderr
    m = strict_json(p.stdout)
    assert m["rmse"] is None and "rmse" in m["non_finite_as_null"]
    warn = p.stderr.strip().splitlines()
    assert len(warn) == 1 and warn[0].startswith("fusedrnn: warning: ") \
        and "non-finite" in warn[0] and "head.bias" in warn[0]


# -- 17: CSV rows ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, pattern", [
    ("v\n1\n2\n\n3\n4\n", r"row 4 is blank"),
    ("1.5\n2\n3\n", r"row 1 holds numbers, not column names"),
    ("a,b,a\n1,2,3\n", r"'a' more than once"),
])
def test_csv_layout_errors_name_the_row(text, pattern, tmp_path):
    from fusedrnn.tasks.forecast import read_csv_column
    f = tmp_path / "s.csv"
    f.write_text(text)
    with pytest.raises(DataError, match=pattern):
        read_csv_column(str(f), "a" if text.startswith("a") else None)


def test_csv_trailing_blank_lines_are_fine(tmp_path):
    from fusedrnn.tasks.forecast import read_csv_column
    f = tmp_path / "s.csv"
    f.write_text("v\n1\n2\n\n\n")
    assert read_csv_column(str(f), None).tolist() == [1.0, 2.0]


# -- 18: parameters ------------------------------------------------------------------------
def test_assigning_an_array_to_a_parameter_copies_into_it(tmp_path):
    layer = fusedrnn.LSTM(3, 4, seed=0)
    p = layer.weight_ih_l0
    layer.weight_ih_l0 = np.ones((16, 3))                # float64 into float32: same kind
    assert layer.weight_ih_l0 is p and (p.data == 1).all() and p.dtype == np.float32
    y, _ = layer.forward(np.zeros((2, 1, 3), np.float32))
    layer.backward(np.ones_like(y))
    fusedrnn.save(tmp_path / "l.safetensors", layer)
    assert (fusedrnn.load(tmp_path / "l.safetensors").model.weight_ih_l0.data == 1).all()
    with pytest.raises(ValueError, match=r"LSTM\.weight_ih_l0: expected a float array of "
                                         r"shape \(16, 3\)"):
        layer.weight_ih_l0 = np.zeros((3, 3))
    with pytest.raises(TypeError, match=r"LSTM\.weight_ih_l0 is a Parameter"):
        layer.weight_ih_l0 = None


def test_replacing_parameter_arrays_is_checked_at_assignment():
    layer = fusedrnn.LSTM(3, 4, seed=0)
    p = layer.weight_hh_l0
    ro = np.zeros((16, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"Parameter\.grad must be a writeable float32 array "
                                         r"of shape \(16, 4\), got a read-only array"):
        p.grad = ro
    with pytest.raises(ValueError, match=r"Parameter\.data .* got a float32 array of shape"):
        p.data = np.zeros((4, 4), np.float32)
    p.data = np.full((16, 4), 0.5, np.float32)           # same shape and dtype: fine
    assert (layer.weight_hh_l0.data == 0.5).all()


# -- item 20: a bad FUSEDRNN_ISA is a one-line error for every command, not a traceback ------------
@pytest.mark.parametrize("cmd", [["info"], ["train", "--steps", "1", "--hidden", "8", "-q"]])
def test_bad_fusedrnn_isa_is_one_line_error(cmd, tmp_path):
    p = run(cmd + (["--out", str(tmp_path / "o")] if cmd[0] == "train" else []),
            env={"FUSEDRNN_ISA": "bogus"})
    one_line_error(p, r"FUSEDRNN_ISA='bogus'.*accepted")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_training_saves_the_best_model_and_exits_with_its_status(tmp_path, sig,
                                                                                code):
    """SIGTERM (kill, docker stop, a batch system's limit) had ended the process with nothing
    saved; Ctrl-C saved the best model but exited 0, so `train ... && next` went on. Both stop
    the loop, save the best model so far, and exit 143 / 130."""
    import signal as _signal
    out = tmp_path / "run"
    argv = ["train", "--task", "forecast", "--steps", "1000000", "--threads", "1", "--hidden",
            "8", "--window", "8", "--horizon", "2", "--batch-size", "8", "--eval-every", "20",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "fusedrnn", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    seen = 0
    for line in proc.stdout:             # validations print a line each: the loop is running
        seen += " step " in line
        if seen >= 2:
            break
    proc.send_signal(getattr(_signal, sig))
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, err)
    assert (out / "model.safetensors").is_file()
    metrics = strict_json((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True and 0 < metrics["steps"] < 1000000


def test_empty_resume_and_out_are_refused(tmp_path):
    """`--resume "$CKPT"` with the variable unset had trained a fresh model (exit 0); `--out ""`
    in a directory holding a model was refused as 'already holds a model'."""
    (tmp_path / "model.safetensors").write_bytes(b"x")
    p = run(T + ["--resume", ""], cwd=tmp_path)
    one_line_error(p, r"--resume must name a checkpoint, got an empty string")
    p = run(T + ["--out", ""], cwd=tmp_path)
    one_line_error(p, r"--out must name a directory, got an empty string")
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
