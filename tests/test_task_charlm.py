"""The charlm task of `fusedrnn train`: a tiny model beats the unigram baseline, checkpoints
round-trip through `evaluate` and `generate`, the PyTorch twin's first steps give fusedrnn's
losses (dropout masks included), and bad data files are one-line errors."""
import argparse
import json
import math

import numpy as np
import pytest

from fusedrnn import optim
from fusedrnn.cli import main
from fusedrnn.tasks.charlm import CharLM, load_default_corpus
from fusedrnn.tasks.trainer import GENERIC_DEFAULTS

TINY = ["--hidden", "32", "--layers", "1", "--seq-len", "20", "--batch-size", "8",
        "--lr", "0.01", "-q"]


def make_text(n_sentences=1500, seed=0):
    """Sentences of a tiny grammar: 26 characters, ~4.1 bits/char unigram, easy to learn."""
    rng = np.random.default_rng(seed)
    subj = ["the cat", "a dog", "my friend", "the old man", "a bird"]
    verb = ["sat on", "ran to", "looked at", "jumped over", "sang to"]
    obj = ["the mat", "a tree", "the house", "the river", "a small box"]
    return "".join(f"{subj[rng.integers(5)]} {verb[rng.integers(5)]} {obj[rng.integers(5)]}.\n"
                   for _ in range(n_sentences))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("charlm")
    path = d / "toy.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--data", str(toy), *TINY, "--steps", "60", "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "metrics.json").read_text())


def one_line_error(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fusedrnn: error: "), err
    assert "Traceback" not in err and needle in err, err


def test_tiny_model_beats_unigram_baseline(trained):
    _, m = trained
    final = m["final"]
    assert final["baseline_bpc"] == pytest.approx(4.07, abs=0.05)
    assert final["bpc"] < final["baseline_bpc"] - 2.0, final
    assert m["steps"] == 60 and m["history"][-1]["step"] == 60
    assert m["throughput"]["unit"] == "char" and m["throughput"]["per_second"] > 0


def test_evaluate_matches_training_report(trained, capsys):
    out, m = trained
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.safetensors"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "charlm"
    assert res["bpc"] == pytest.approx(m["final"]["bpc"], rel=1e-6)
    assert res["baseline_bpc"] == pytest.approx(m["final"]["baseline_bpc"], rel=1e-12)


def test_generate_is_deterministic_with_seed(trained, capsys):
    ckpt = str(trained[0] / "model.safetensors")
    outs = []
    for seed in ("1", "1", "2"):
        capsys.readouterr()
        assert main(["generate", ckpt, "--prime", "the ", "--length", "80", "--seed", seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] != outs[2]
    assert outs[0].startswith("the ") and len(outs[0]) == 4 + 80 + 1
    assert main(["generate", ckpt, "--prime", "the ", "--length", "20",
                 "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main(["generate", ckpt, "--prime", "the ", "--length", "20",
                 "--temperature", "0", "--seed", "5"]) == 0
    assert capsys.readouterr().out == greedy


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("temperature", ["1e-310", "5e-324", "1e-300", "1e-30"])
def test_generate_tiny_temperature_is_greedy(trained, capsys, temperature):
    """A positive temperature so small that logits / T overflows samples from its limit (the
    most likely character, as --temperature 0), with no NaN and no numpy warning (it was
    'Probabilities contain NaN')."""
    ckpt = str(trained[0] / "model.safetensors")
    capsys.readouterr()
    assert main(["generate", ckpt, "--prime", "the ", "--length", "40",
                 "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    rc = main(["generate", ckpt, "--prime", "the ", "--length", "40",
               "--temperature", temperature, "--seed", "3"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out == greedy and cap.err == ""


def test_softmax_with_temperature_is_stable():
    from fusedrnn.tasks.charlm import _softmax_t
    z = np.array([1.0, 3.0, -2.0, 3.0 - 1e-12])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for t in (1e-310, 5e-324):
            np.testing.assert_array_equal(_softmax_t(z, t), [0, 1, 0, 0])
        e = np.exp((z - 3.0) / 0.7)
        np.testing.assert_allclose(_softmax_t(z, 0.7), e / e.sum(), rtol=1e-15)
        np.testing.assert_array_equal(_softmax_t(z, 1e308), np.full(4, 0.25))


def test_generate_length_has_a_maximum(trained, capsys):
    from fusedrnn import cli
    from fusedrnn.tasks.charlm import MAX_GENERATE_LENGTH
    assert cli.MAX_GENERATE_LENGTH == MAX_GENERATE_LENGTH == 10_000_000
    ckpt = str(trained[0] / "model.safetensors")
    capsys.readouterr()
    rc = main(["generate", ckpt, "--length", "100000000000"])
    one_line_error(capsys, rc, "must be <= 10,000,000")
    rc = main(["generate", ckpt, "--length", str(MAX_GENERATE_LENGTH + 1)])
    one_line_error(capsys, rc, "--length")
    task = CharLM.__new__(CharLM)   # the Python API refuses it too, before any model step
    with pytest.raises(ValueError, match=r"--length must be an integer in \[0, 10,000,000\]"):
        task.generate(None, "a", MAX_GENERATE_LENGTH + 1)


def test_generate_unknown_prime_character_is_one_line(trained, capsys):
    rc = main(["generate", str(trained[0] / "model.safetensors"), "--prime", "The Zebra"])
    one_line_error(capsys, rc, "not in the model's vocabulary")


def test_predict_scores_lines(trained, capsys):
    ckpt = str(trained[0] / "model.safetensors")
    capsys.readouterr()
    import io
    import sys
    old = sys.stdin
    sys.stdin = io.StringIO("the cat sat on the mat.\nmat the on sat cat the.\n")
    try:
        assert main(["predict", ckpt]) == 0
    finally:
        sys.stdin = old
    good, bad = (float(x) for x in capsys.readouterr().out.split())
    assert good < bad


@pytest.mark.parametrize("kind", ["missing", "binary", "latin1", "short"])
def test_bad_data_file_is_one_line_error(kind, tmp_path, capsys):
    path = tmp_path / "data.txt"
    if kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "latin1":
        path.write_bytes("café au lait ".encode("latin-1") * 500)
    elif kind == "short":
        path.write_text("too short\n", encoding="utf-8")
    rc = main(["train", "--data", str(path), *TINY, "--steps", "2", "--out",
               str(tmp_path / "o")])
    needle = {"missing": "does not exist", "binary": "binary", "latin1": "not UTF-8",
              "short": "too short"}[kind]
    one_line_error(capsys, rc, needle)
    assert not (tmp_path / "o").exists()


def test_default_corpus_facts():
    text = load_default_corpus()
    assert 400_000 < len(text) < 600_000
    assert 90 <= len(set(text)) <= 120


# -- the PyTorch twin ----------------------------------------------------------------------------
def _args(**kw):
    a = argparse.Namespace(**GENERIC_DEFAULTS)
    a.__dict__.update(dict(task="charlm", cell="lstm", hidden=24, layers=2, dropout=0.0,
                           seq_len=16, batch_size=4, embed=12, seed=3, given=[]))
    a.__dict__.update(kw)
    return a


@pytest.mark.parametrize("cell,dropout", [("lstm", 0.0), ("lstm", 0.3), ("gru", 0.0),
                                          ("rnn", 0.3)])
def test_torch_twin_first_steps_match(toy, cell, dropout):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    task = CharLM(_args(data=str(toy), cell=cell, dropout=dropout))
    task.prepare()
    model = task.build_model()
    twin = task.torch_model(model)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    topt = torch.optim.Adam(twin.parameters(), lr=3e-3)
    fb = task.batches(np.random.default_rng(0))
    tb = task.batches(np.random.default_rng(0))
    for step in range(6):
        model.zero_grad()
        loss, n = task.train_step(model, next(fb))
        optim.clip_grad_norm_(model, 1.0)
        opt.step()
        topt.zero_grad()
        tloss, tn = task.torch_train_step(twin, next(tb))
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        topt.step()
        assert n == tn == 16 * 4
        assert abs(loss - tloss) < 1e-5 * max(1.0, abs(loss)), (step, loss, tloss)
    model.eval()
    twin.eval()
    with torch.no_grad():
        tm = task.torch_evaluate(twin)
    fm = task.evaluate(model)
    assert fm["bpc"] == pytest.approx(tm["bpc"], abs=1e-4)
    assert math.isclose(fm["baseline_bpc"], tm["baseline_bpc"])


def test_compare_torch_command(toy, tmp_path, capsys):
    pytest.importorskip("torch")
    rc = main(["train", "--data", str(toy), *TINY, "--layers", "2", "--dropout", "0.2",
               "--steps", "12", "--compare-torch", "--threads", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "--compare-torch: 12 steps each" in out and "| chars/second" in out
    assert "; 1 thread\n" in out or "; 1 thread;" in out, out       # not "1 threads"
    m = json.loads((tmp_path / "metrics.json").read_text())
    f, t = m["train_loss_per_step"], m["compare_torch"]["train_loss_per_step"]
    assert len(f) == len(t) == 12
    np.testing.assert_allclose(f[:5], t[:5], rtol=1e-5)
    fh = [e["bpc"] for e in m["history"]]
    th = [e["bpc"] for e in m["compare_torch"]["history"]]
    np.testing.assert_allclose(fh, th, atol=2e-3)


def test_compare_torch_resume_gives_the_twin_the_optimiser_state(toy, tmp_path, capsys):
    """--compare-torch --resume from an Adam checkpoint: the torch twin starts from the
    checkpoint's weights and Adam moments/step, so the losses agree beyond the first step
    (without the state, they differed from step 2 by ~1e-2)."""
    pytest.importorskip("torch")
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--data", str(toy), *TINY, "--optimizer", "adam", "--steps", "8",
                 "--out", str(first)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(first / "model.safetensors"), "--steps", "8",
                 "--compare-torch", "--out", str(second), "-q"]) == 0
    m = json.loads((second / "metrics.json").read_text())
    f, t = m["train_loss_per_step"], m["compare_torch"]["train_loss_per_step"]
    # fusedrnn's per-step losses go on from the resumed run's (all 16 steps); the twin's are
    # this run's 8
    assert len(f) == 16 and len(t) == 8
    f = f[8:]
    np.testing.assert_allclose(f[:5], t[:5], rtol=1e-5)
