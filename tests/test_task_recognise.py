"""``--task recognise``: the generated speech-like data, edit distance, a tiny biLSTM + CTC that
beats the trivial baseline, checkpoints, and ``--data`` .npz files."""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest

import fusedrnn
from fusedrnn.tasks import DataError, get_task
from fusedrnn.tasks.recognise import (CtcRecognizer, Recognise, edit_distance, make_utterances,
                                      phone_means)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_task(n_train=300, n_valid=40, **kw):
    base = dict(task="recognise", cell=None, hidden=32, layers=None, bidirectional=None,
                dropout=None, batch_size=16, seed=0, data=None, lr=None)
    base.update(kw)
    task = Recognise(argparse.Namespace(**base))
    task.n_train, task.n_valid, task.n_beam = n_train, n_valid, 20
    task.prepare()
    return task


def test_registry_and_data():
    assert get_task("recognise") is Recognise
    means, silence = phone_means()
    utts = make_utterances(np.random.default_rng(0), 200, means, silence)
    lengths = [len(l) for _, l in utts]
    assert min(lengths) >= 3 and max(lengths) <= 15
    for x, l in utts:
        assert x.dtype == np.float32 and x.shape[1] == 16
        assert len(x) >= 3 * len(l) and all(1 <= k <= 10 for k in l)   # >= 3 frames per word
    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([], [4, 4]) == 2
    assert edit_distance([1, 2], [2, 1]) == 2 and edit_distance([5], [5]) == 0


@pytest.fixture(scope="module")
def trained():
    fusedrnn.set_num_threads(1)
    task = small_task(n_train=600, n_valid=60, lr=1e-2)
    model = task.build_model()
    opt = fusedrnn.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    rng = np.random.default_rng(0)
    for _, batch in zip(range(150), task.batches(rng)):
        model.zero_grad()
        loss, count = task.train_step(model, batch)
        assert count == batch[0].shape[1]
        losses.append(loss)
        fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return task, model, losses, task.evaluate(model)


def test_tiny_model_beats_baseline(trained):
    task, _, losses, m = trained
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert m["baseline_ler"] == pytest.approx(1.0)
    assert m["ler"] < 0.6 * m["baseline_ler"], m
    assert m["ler_beam"] <= m["ler_greedy_100"] + 0.05, m


def test_checkpoint_round_trip(trained, tmp_path):
    task, model, _, m = trained
    path = tmp_path / "rec.safetensors"
    fusedrnn.save(path, model, task=task.metadata())
    ck = fusedrnn.load(path)
    assert isinstance(ck.model, CtcRecognizer)
    meta = json.loads(json.dumps(ck.metadata["task"]))
    fresh = Recognise(argparse.Namespace(task="recognise", data=None, seed=0))
    fresh.restore(meta)
    assert (fresh.features, fresh.classes, fresh.symbols) == \
        (task.features, task.classes, task.symbols)
    fresh.n_train, fresh.n_valid, fresh.n_beam = task.n_train, task.n_valid, task.n_beam
    fresh.prepare()
    assert fresh.evaluate(ck.model.eval()) == pytest.approx(m)


def test_npz_data(tmp_path):
    means, silence = phone_means(F=5, seed=3)
    utts = make_utterances(np.random.default_rng(1), 30, means, silence, max_len=4)
    path = tmp_path / "speech.npz"
    np.savez(path, features=np.concatenate([x for x, _ in utts]),
             frames=np.array([len(x) for x, _ in utts]),
             labels=np.concatenate([l for _, l in utts]),
             label_counts=np.array([len(l) for _, l in utts]),
             symbols=np.array(list("abcdefghij")))
    task = small_task(data=str(path))
    assert task.features == 5 and task.classes == 11 and task.symbols[0] == "a"
    assert len(task.valid_utts) == 3 and len(task.train_utts) == 27
    model = task.build_model()
    loss, _ = task.train_step(model, next(task.batches(np.random.default_rng(0))))
    assert np.isfinite(loss)
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((3, 2)), frames=np.array([3]))
    with pytest.raises(DataError, match="lacks the arrays"):
        small_task(data=str(bad))
    with pytest.raises(DataError, match="does not exist"):
        small_task(data=str(tmp_path / "none.npz"))


# -- --data files the probes found unchecked (session 18) ---------------------------------------
def _npz(path, M=20, F=3, labels_hi=4, seed=0, **change):
    """A valid recognise .npz of M utterances (labels 1..labels_hi-1), with arrays replaced by
    ``change`` (a callable receives the valid array)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(5, 10, M)
    counts = rng.integers(1, 3, M)
    d = dict(features=rng.standard_normal((frames.sum(), F)).astype(np.float32),
             frames=frames, labels=rng.integers(1, labels_hi, counts.sum()),
             label_counts=counts)
    for k, v in change.items():
        d[k] = v(d[k].copy()) if callable(v) else v
    np.savez(path, **d)
    return str(path)


def test_npy_file_is_a_data_error(tmp_path):
    path = tmp_path / "feat.npy"
    np.save(path, np.zeros((50, 4), np.float32))
    with pytest.raises(DataError, match=r"feat\.npy holds one array .*not an \.npz archive"):
        small_task(data=str(path))


def test_utterances_ctc_cannot_align_are_refused(tmp_path):
    # fewer frames than labels (plus one per label repeated in a row): no alignment, an infinite
    # CTC loss, which training's zero_infinity counted as 0 ("train loss 0.0000")
    frames = np.full(12, 5)
    frames[4] = 2
    labels = [[1, 2]] * 12
    labels[4] = [3, 3]
    path = tmp_path / "short.npz"
    np.savez(path, features=np.zeros((frames.sum(), 3), np.float32), frames=frames,
             labels=np.concatenate(labels), label_counts=np.full(12, 2))
    with pytest.raises(DataError, match=r"utterance 4 has 2 frames for 2 labels \(1 repeated "
                                        r"in a row\): CTC needs at least 3 frames"):
        small_task(data=str(path))
    frames[4] = 3                                       # exactly enough: taken
    np.savez(path, features=np.zeros((frames.sum(), 3), np.float32), frames=frames,
             labels=np.concatenate(labels), label_counts=np.full(12, 2))
    small_task(data=str(path))


def test_negative_label_counts_are_refused(tmp_path):
    def shift(c):          # still sums to len(labels): only the sign shows the mistake
        c[1] += c[0] + 2
        c[0] = -2
        return c
    with pytest.raises(DataError, match="label_counts must be >= 0 .*-2 for utterance 0"):
        small_task(data=_npz(tmp_path / "neg.npz", label_counts=shift))


def test_a_huge_label_is_refused_before_anything_of_its_size(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_MEMORY_LIMIT", str(8 << 30))
    def huge(l):
        l[0] = 10 ** 8
        return l
    from fusedrnn.tasks.guards import TooLarge
    with pytest.raises(TooLarge, match="labels up to 100000000 .*100000001 classes"):
        small_task(data=_npz(tmp_path / "huge.npz", labels=huge))
    small_task(data=_npz(tmp_path / "ok.npz", labels_hi=1000))   # 1000 classes fit


@pytest.mark.parametrize("value, dtype, match", [
    (np.nan, np.float32, "holds nan .*must be finite"),
    (-np.inf, np.float32, "holds -inf .*must be finite"),
    (1e39, np.float64, "holds 1e\\+39 .*float32"),
])
def test_features_must_be_finite_float32_values(tmp_path, value, dtype, match):
    def spoil(f):
        f = f.astype(dtype)
        f[7, 2] = value
        return f
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # no numpy overflow warning on the way
        with pytest.raises(DataError, match=r"features\[7, 2\] \(frame 7, utterance \d+\) "
                                            + match):
            small_task(data=_npz(tmp_path / "bad.npz", features=spoil))


def test_restored_task_keeps_the_checkpoint_labels(tmp_path):
    task = small_task(data=_npz(tmp_path / "nine.npz", labels_hi=10), hidden=8)
    assert task.classes == 10 and len(task.symbols) == 9
    model = task.build_model()
    meta = json.loads(json.dumps(task.metadata()))
    few = _npz(tmp_path / "three.npz", labels_hi=4, seed=1)
    fresh = Recognise(argparse.Namespace(task="recognise", data=few, seed=0))
    fresh.restore(meta)
    fresh.prepare()
    assert (fresh.classes, fresh.symbols) == (10, task.symbols)
    assert len(fresh.summary(model)) == len(fresh.valid_utts)   # labels 4..9 keep names
    named = _npz(tmp_path / "named.npz", labels_hi=4, seed=1,
                 symbols=np.array(["1", "x", "3"]))
    fresh = Recognise(argparse.Namespace(task="recognise", data=named, seed=0))
    fresh.restore(meta)
    with pytest.raises(DataError, match="names label 2 'x', the checkpoint '2'"):
        fresh.prepare()


def test_cli_data_errors_are_one_line(tmp_path, capsys):
    from fusedrnn.cli import main
    path = tmp_path / "feat.npy"
    np.save(path, np.zeros((50, 4), np.float32))
    rc = main(["train", "--task", "recognise", "--data", str(path), "--steps", "1", "-q",
               "--hidden", "8", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("fusedrnn: error: recognise: ") and "\n" not in err, err
