"""The `fusedrnn` command: one-line errors with exit status 2, `info`, a tiny `train` with its
outputs, `--resume`, and the entry points (`python -m fusedrnn`, the console script)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedrnn
from fusedrnn.cli import main

TINY = ["--hidden", "16", "--layers", "1", "--seq-len", "20", "--batch-size", "8",
        "--lr", "0.01", "-q"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "one", "two", "three"]
    text = "\n".join(" ".join(rng.choice(words, 6)) for _ in range(600)) + "\n"
    path = tmp_path_factory.mktemp("cli") / "text.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(text_file), *TINY, "--steps", "20",
                 "--eval-every", "5", "--out", str(out)]) == 0
    return out


def assert_one_line_error(capsys, rc, needle=""):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fusedrnn: error: ") and "Traceback" not in err, err
    assert needle in lines[0], err


@pytest.mark.parametrize("argv,needle", [
    (["train", "--task", "nope"], "invalid choice: 'nope'"),
    (["train", "--cell", "lstmx"], "--cell"),
    (["train", "--hidden", "-4"], "--hidden"),
    (["train", "--hidden", "many"], "--hidden"),
    (["train", "--dropout", "1.5"], "--dropout"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--bidirectional"], "--bidirectional does not apply to task charlm"),
    (["train", "--optimizer", "lbfgs"], "--optimizer"),
    (["train", "--eval-every", "often"], "--eval-every"),
    (["train", "--horizon", "3"], "--horizon does not apply to task charlm"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["train", "--threads", "5000"], "argument --threads: must be <= 4096, got 5000"),
    (["predict", "ck", "--threads", "4097"], "argument --threads: must be <= 4096"),
    (["experiment", "adding", "--threads", "5000"], "argument --threads: must be <= 4096"),
    (["train", "--resume", "/nonexistent/model.safetensors"], "does not exist"),
    (["evaluate", "/nonexistent/model.safetensors"], "does not exist"),
    (["generate", "/nonexistent/model.safetensors"], "does not exist"),
    (["frobnicate"], "invalid choice"),
])
def test_argument_errors_are_one_line(argv, needle, capsys):
    assert_one_line_error(capsys, main(argv), needle)


@pytest.mark.parametrize("task, why", [
    ("classify", "--min-length and --max-length set its sequence lengths"),
    ("forecast", "--window and --horizon set its sequence length"),
    ("tag", "its sequences are the utterances of its data"),
    ("translate", "its sequences are the sentences of its data"),
    ("recognise", "its sequences are the utterances of its data")])
def test_seq_len_is_refused_where_the_task_does_not_read_it(task, why, tmp_path, capsys):
    """Only charlm reads --seq-len; the other tasks ignored it, recorded it and counted it in
    the memory estimate (--task tag --seq-len 100000000 was refused as needing 1.5 TiB)."""
    for n in ("7", "100000000"):
        rc = main(["train", "--task", task, "--seq-len", n, "--steps", "1",
                   "--out", str(tmp_path / "o")])
        assert_one_line_error(capsys, rc, f"--seq-len does not apply to task {task} ({why})")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("task", ["tag", "translate", "recognise", "classify", "forecast"])
def test_seq_len_is_neither_estimated_nor_recorded_where_unread(task):
    """The memory estimate of a task that reads no --seq-len does not depend on it, and the
    flags it records hold none (an older checkpoint's seq_len is dropped on reading)."""
    import argparse
    from fusedrnn.tasks import get_task
    from fusedrnn.tasks.trainer import resolve
    cls = get_task(task)
    parts = []
    for seq_len in (None, 100_000_000):
        a = resolve(argparse.Namespace(task=task, steps=1, out="o"), cls,
                    {"seq_len": 100} if seq_len is None else None)
        assert a.seq_len is None
        a.seq_len = seq_len              # (the Python API: a task made with a stray value)
        parts.append(cls(a).memory_parts())
    assert parts[0] == parts[1]
    assert max(b for _, b in parts[0]) < 2 ** 30


def test_charlm_reads_seq_len():
    import argparse
    from fusedrnn.tasks import get_task
    from fusedrnn.tasks.trainer import resolve
    cls = get_task("charlm")
    a = resolve(argparse.Namespace(task="charlm", steps=1, out="o", seq_len=None), cls)
    assert a.seq_len == 100
    small = cls(a).memory_parts()
    a.seq_len = 1000
    assert cls(a).memory_parts()[1][1] == 10 * small[1][1]


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x10\x00\x00\x00\x00\x00\x00\x00"
                                     + b'{"a": 1}' + b" " * 8])
@pytest.mark.parametrize("command", ["train --resume", "evaluate", "generate", "predict"])
def test_corrupt_checkpoint_is_one_line(command, content, tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    extra = ["--out", str(tmp_path / "o")] if command.startswith("train") else []
    rc = main(command.split() + [str(path)] + extra)
    assert_one_line_error(capsys, rc, str(path))


def test_foreign_safetensors_file_is_one_line(tmp_path, capsys):
    from fusedrnn.io import save_tensors
    path = tmp_path / "other.safetensors"
    save_tensors(path, {"w": np.zeros(3, np.float32)})
    assert_one_line_error(capsys, main(["evaluate", str(path)]), "not a fusedrnn checkpoint")
    model = fusedrnn.Linear(2, 2)
    fusedrnn.save(path, model)
    assert_one_line_error(capsys, main(["evaluate", str(path)]), "fusedrnn train")


def test_info_prints_the_instruction_set(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    isa = fusedrnn.build_info()["instruction_set"]
    assert "instruction set" in out and isa in out and fusedrnn.__version__ in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["instruction_set"] == isa and "charlm" in info["tasks"]


def test_train_writes_checkpoint_metrics_and_plot(run_dir):
    assert (run_dir / "model.safetensors").is_file()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["task"] == "charlm" and m["steps"] == 20
    assert [e["step"] for e in m["history"]] == [5, 10, 15, 20]
    assert m["config"]["hidden"] == 16 and m["config"]["embed"] == 64   # task default
    assert m["config"]["optimizer"] == "adam" and m["config"]["clip"] == 1.0
    assert m["final"]["bpc"] < m["final"]["baseline_bpc"]
    assert m["versions"]["fusedrnn"] == fusedrnn.__version__
    assert len(m["train_loss_per_step"]) == 20
    if _has_matplotlib():
        assert (run_dir / "loss.png").stat().st_size > 1000
    meta = fusedrnn.load(run_dir / "model.safetensors").metadata
    assert meta["task"] == "charlm" and meta["trainer"]["step"] == m["best_step"]
    assert meta["task_metadata"]["flags"]["hidden"] == 16


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def test_resume_continues_step_count(run_dir, text_file, tmp_path, capsys):
    ckpt = run_dir / "model.safetensors"
    start = fusedrnn.load(ckpt).metadata["trainer"]["step"]
    assert main(["train", "--resume", str(ckpt), "--steps", "10", "--eval-every", "5",
                 "--out", str(tmp_path), "-q"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["steps"] == start + 10
    steps = [e["step"] for e in m["history"]]
    assert steps[-2:] == [start + 5, start + 10] and steps[:-2] == \
        [s for s in (5, 10, 15, 20) if s <= start]
    assert m["config"]["hidden"] == 16          # the model shape comes from the checkpoint
    saved = fusedrnn.load(tmp_path / "model.safetensors")
    assert saved.optimizer_state is not None
    assert saved.metadata["trainer"]["step"] in (start, start + 5, start + 10)
    # a shape flag that contradicts the checkpoint is refused
    capsys.readouterr()
    rc = main(["train", "--resume", str(ckpt), "--hidden", "32", "--out", str(tmp_path)])
    assert_one_line_error(capsys, rc, "--hidden 32 differs from the checkpoint's 16")


def test_evaluate_prints_metrics(run_dir, capsys):
    assert main(["evaluate", str(run_dir / "model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "bpc" in out and "baseline_bpc" in out


def test_predict_reads_input_file(run_dir, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("alpha beta\ngamma one two\n", encoding="utf-8")
    assert main(["predict", str(run_dir / "model.safetensors"), "--input", str(inp)]) == 0
    assert len(capsys.readouterr().out.split()) == 2
    rc = main(["predict", str(run_dir / "model.safetensors"), "--input", str(tmp_path / "no")])
    assert_one_line_error(capsys, rc, "does not exist")


def test_compare_torch_without_twin_or_torch_is_refused_before_training(monkeypatch, tmp_path,
                                                                       capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    rc = main(["train", "--compare-torch", "--steps", "1", "--out", str(tmp_path / "o")])
    assert_one_line_error(capsys, rc, "needs PyTorch")
    assert not (tmp_path / "o").exists()


def test_python_dash_m_and_console_script_help():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "fusedrnn", "--help"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and "train" in r.stdout and "generate" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fusedrnn", "train", "--help"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "--time-budget" in r.stdout and "--compare-torch" in r.stdout
    script = Path(sys.executable).parent / "fusedrnn"
    if not script.exists():
        pytest.skip("the console script is not installed (reinstall the package)")
    r = subprocess.run([str(script), "info"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and "instruction set" in r.stdout


def test_pyproject_declares_the_command():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'fusedrnn = "fusedrnn.cli:main"' in text
    assert "tqdm" in text and 'plot = ["matplotlib' in text


def test_task_checkpoints_load_in_a_fresh_interpreter(tmp_path):
    """fusedrnn.load rebuilds a task's model in an interpreter that imported only fusedrnn (the
    task modules register their classes when imported: the loader imports them)."""
    assert main(["train", "--task", "tag", "--steps", "1", "--hidden", "8", "--batch-size", "4",
                 "--out", str(tmp_path / "tag"), "--quiet"]) == 0
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    code = ("import sys, fusedrnn; "
            "print(type(fusedrnn.load(sys.argv[1]).model).__name__)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tag" / "model.safetensors")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.split()[-1] == "SequenceTagger", r.stderr


def test_report_to_an_unwritable_path_is_one_line(tmp_path, capsys):
    assert main(["train", *TINY, "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    rc = main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "no" / "dir" / "r.html")])
    assert_one_line_error(capsys, rc, "cannot write")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc = main(["report", str(tmp_path / "run"), "--out", str(fifo)])
    assert_one_line_error(capsys, rc, "not a regular file")
    assert fifo.is_fifo()
    # an empty --out is a mistake, not "the default path"
    rc = main(["report", str(tmp_path / "run"), "--out", ""])
    assert_one_line_error(capsys, rc, "--out must name a file, got an empty string")
    assert not (tmp_path / "run" / "report.html").exists()


@pytest.mark.parametrize("field,value,message", [
    ("flags", [1], "task_metadata.flags is not a mapping"),
    ("trainer", [], "trainer is not a mapping"),
    ("step", "abc", "trainer.step = 'abc' is not a step count"),
    ("seq_len", 0, "flag seq_len = 0 is not a positive integer"),
    ("best", "abc", "trainer.best = 'abc' is not a number"),
    ("history", [1, 2], "trainer.history is not a list of records"),
    ("time_s", -1, "trainer.time_s = -1 is not a number of seconds"),
    ("step_losses", [1.0, "x"], "trainer.step_losses is not a list of numbers"),
    ("data", {"path": 5}, "trainer.data is not a data description")])
def test_checkpoint_metadata_of_the_wrong_type_is_one_line(tmp_path, capsys, field, value,
                                                           message):
    """A checkpoint whose trainer metadata has a wrong type or value (damaged, hand-edited) is
    one error line for evaluate and --resume, not a traceback."""
    import fusedrnn.io as fio
    assert main(["train", *TINY, "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    tensors, meta = fio.load_tensors(str(tmp_path / "run" / "model.safetensors"))
    user = json.loads(meta["metadata"])
    if field in ("flags",):
        user["task_metadata"][field] = value
    elif field == "trainer":
        user["trainer"] = value
    elif field == "seq_len":
        user["task_metadata"]["flags"][field] = value
    else:
        user["trainer"][field] = value
    bad = tmp_path / "bad.safetensors"
    fio.save_tensors(str(bad), tensors, dict(meta, metadata=json.dumps(user)))
    capsys.readouterr()
    assert_one_line_error(capsys, main(["evaluate", str(bad)]), message)
    assert_one_line_error(capsys, main(["train", "--resume", str(bad), "--steps", "1", "--out",
                                        str(tmp_path / "again"), "--quiet"]), message)


def test_resume_without_out_continues_the_run_in_place(tmp_path, monkeypatch):
    """`train --resume DIR` with no --out continues DIR (README: "--resume <out> continues that
    model in place"), not ./runs/<task>."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--steps", "2", "--out", "run", "--quiet"]) == 0
    assert main(["train", "--resume", "run", "--steps", "2", "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 4
    assert not (tmp_path / "runs").exists()


def test_resume_continues_the_time_and_the_per_step_losses(tmp_path):
    """After --resume, metrics.json's history times go on from the checkpoint's training time
    (they restarted at 0: loss.png's curves against time ran backwards) and the per-step
    losses cover every step, the earlier run's included; a checkpoint from before time_s was
    recorded continues from its last recorded time."""
    import fusedrnn.io as fio
    run = tmp_path / "run"
    base = ["--task", "classify", "--hidden", "8", "--min-length", "5", "--max-length", "8",
            "--steps", "20", "--eval-every", "5", "-q"]
    assert main(["train", *base, "--out", str(run)]) == 0
    first = json.loads((run / "metrics.json").read_text())
    meta = fio.load(run / "model.safetensors").metadata["trainer"]
    assert meta["time_s"] == first["history"][-1]["time_s"] > 0
    assert meta["step_losses"] == first["train_loss_per_step"] and len(meta["step_losses"]) == 20
    assert main(["train", "--resume", str(run), *base]) == 0
    m = json.loads((run / "metrics.json").read_text())
    steps = [e["step"] for e in m["history"]]
    times = [e["time_s"] for e in m["history"]]
    assert steps == list(range(5, 45, 5))
    assert all(b > a for a, b in zip(times, times[1:])), times
    assert m["history"][:4] == first["history"]
    assert m["steps"] == 40 and len(m["train_loss_per_step"]) == 40
    assert m["train_loss_per_step"][:20] == first["train_loss_per_step"]
    # an older checkpoint (no time_s, no step_losses): time goes on from its last record
    tensors, raw = fio.load_tensors(str(run / "model.safetensors"))
    user = json.loads(raw["metadata"])
    for k in ("time_s", "step_losses"):
        del user["trainer"][k]
    last = user["trainer"]["history"][-1]["time_s"]
    old = tmp_path / "old.safetensors"
    fio.save_tensors(str(old), tensors, dict(raw, metadata=json.dumps(user)))
    assert main(["train", "--resume", str(old), *base, "--out", str(tmp_path / "o2")]) == 0
    m = json.loads((tmp_path / "o2" / "metrics.json").read_text())
    assert min(e["time_s"] for e in m["history"] if e["step"] > 40) > last
    assert m["steps"] == 60 and len(m["train_loss_per_step"]) == 20


def test_resume_on_other_data_fine_tunes(text_file, tmp_path, capsys):
    """--resume CKPT --data OTHER ranked the new data's validations against the old data's
    best: the fine-tuned model was never saved and the printed best and baseline were the old
    data's. The change is detected (path, or the file's SHA-256), best, baseline, validation
    history and epochs start afresh on the new data, with one printed line."""
    rng = np.random.default_rng(1)
    other = tmp_path / "other.txt"
    chars = sorted(set(text_file.read_text(encoding="utf-8")))   # the model's vocabulary
    other.write_text("".join(rng.choice(chars, 30000)), encoding="utf-8")
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--data", str(text_file), *TINY, "--steps", "20", "--eval-every",
                 "10", "--out", str(a)]) == 0
    first = json.loads((a / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["train", "--resume", str(a), "--data", str(other), "--steps", "20",
                 "--eval-every", "10", "--out", str(b), "-q"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "fine-tuning from step 20" in notes[0], out
    assert str(other) in notes[0] and str(text_file) in notes[0]
    m = json.loads((b / "metrics.json").read_text())
    assert [e["step"] for e in m["history"]] == [30, 40]      # the new data's scores only
    assert m["best_step"] in (30, 40) and m["final"]["step"] == m["best_step"]
    assert m["final"]["baseline_bpc"] != first["final"]["baseline_bpc"]
    # epochs of the new data, from 0 (not added to the old data's)
    assert 2 * m["history"][0]["epoch"] == pytest.approx(m["history"][1]["epoch"], rel=0.05)
    assert m["fine_tuned_from"]["step"] == 20 and m["fine_tuned_from"]["data"] == str(text_file)
    assert len(m["train_loss_per_step"]) == 40
    saved = fusedrnn.load(b / "model.safetensors").metadata["trainer"]
    assert saved["step"] == m["best_step"] > 20                  # the fine-tuned model is kept
    assert saved["data"]["path"] == str(other) and len(saved["data"]["sha256"]) == 64
    assert f"best validation bpc {m['final']['bpc']:.4f}" in out
    # the same data again (resumed in place): no note, the best goes on
    assert main(["train", "--resume", str(b), "--steps", "10", "--eval-every", "10",
                 "-q"]) == 0
    assert "note:" not in capsys.readouterr().out
    # the same path with other contents is a change too
    other.write_text("".join(rng.choice(chars, 30000)), encoding="utf-8")
    assert main(["train", "--resume", str(b), "--steps", "10", "--eval-every", "10",
                 "-q"]) == 0
    assert "changed since the checkpoint: fine-tuning" in capsys.readouterr().out


def test_translate_picture_path_is_checked_before_training(tmp_path, capsys):
    (tmp_path / "out" / "translate.png").mkdir(parents=True)
    rc = main(["train", "--task", "translate", "--steps", "1", "--hidden", "8",
               "--out", str(tmp_path / "out"), "--quiet"])
    assert_one_line_error(capsys, rc, "translate.png is a directory")
    assert not (tmp_path / "out" / "model.safetensors").exists()


# -- text files: lines split at "\n" only, a leading byte-order mark dropped (probe s18) -------
def test_split_lines_splits_at_newline_only():
    from fusedrnn.tasks.guards import split_lines
    text = "a\x0cb\r\nc\u2028d\x85e\x1cf\n\nlast"
    assert split_lines(text) == ["a\x0cb", "c\u2028d\x85e\x1cf", "", "last"]
    assert split_lines("x\n") == ["x"] and split_lines("") == [] and split_lines("\n") == [""]


@pytest.fixture(scope="module")
def odd_run_dir(tmp_path_factory):
    """A charlm model whose vocabulary holds a form feed and U+2028 (its data file starts with
    a byte-order mark)."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "page\x0cbreak", "line\u2028sep"]
    d = tmp_path_factory.mktemp("odd")
    path = d / "odd.txt"
    path.write_text(" ".join(rng.choice(words, 2000)), encoding="utf-8-sig")
    out = d / "run"
    assert main(["train", "--data", str(path), *TINY, "--steps", "2", "--out", str(out)]) == 0
    return out


def test_data_and_input_files_lose_their_byte_order_mark(odd_run_dir, tmp_path, capsys):
    from fusedrnn.io import load_tensors
    _, meta = load_tensors(str(odd_run_dir / "model.safetensors"))
    vocab = json.loads(meta["metadata"])["task_metadata"]["vocab"]
    assert "\ufeff" not in vocab
    inp = tmp_path / "bom.txt"
    inp.write_text("alpha beta\n", encoding="utf-8-sig")     # "\ufeff" is not in the vocabulary
    capsys.readouterr()
    assert main(["predict", str(odd_run_dir), "--input", str(inp)]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 2


def test_predict_gives_one_output_per_input_line(odd_run_dir, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("alpha page\x0cbreak beta\r\nbeta line\u2028sep alpha\nbeta beta\n",
                   encoding="utf-8", newline="")
    capsys.readouterr()
    assert main(["predict", str(odd_run_dir), "--input", str(inp)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    inp.write_text("alpha\u2028beta\nb\nalpha\n", encoding="utf-8")    # line 2 is too short
    rc = main(["predict", str(odd_run_dir), "--input", str(inp)])
    assert_one_line_error(capsys, rc, "input line 2 ")


def test_stdout_that_cannot_encode_the_text(tmp_path, monkeypatch, capsys):
    """PYTHONIOENCODING=ascii: train escapes its sample (one warning) and saves; generate,
    whose output is the text, stops with a one-line error."""
    import io
    path = tmp_path / "accents.txt"
    path.write_text(" ".join(["héllo", "wörld", "\U0001f600", "the"] * 600), encoding="utf-8")
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    out = tmp_path / "run"
    assert main(["train", "--data", str(path), *TINY, "--steps", "1", "--out", str(out)]) == 0
    ascii_out.flush()
    text = ascii_out.buffer.getvalue().decode("ascii")
    assert "sample (" in text and "saved " in text and (out / "model.safetensors").exists()
    assert "\\xe9" in text or "\\xf6" in text or "\\U0001f600" in text
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fusedrnn: warning: standard output (ascii)")
    rc = main(["generate", str(out), "--prime", "h", "--length", "300"])
    assert_one_line_error(capsys, rc, "PYTHONIOENCODING=utf-8")


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--column", "x"], "--column does not apply to task charlm"),
    (["evaluate", "--beam", "2"], "--beam does not apply to task charlm"),
    (["predict", "--beam", "2"], "--beam does not apply to task charlm"),
])
def test_evaluate_and_predict_refuse_flags_the_task_ignores(run_dir, argv, needle, capsys):
    capsys.readouterr()
    rc = main([argv[0], str(run_dir), *argv[1:]])
    assert_one_line_error(capsys, rc, needle)
