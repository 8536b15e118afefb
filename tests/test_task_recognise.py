"""``--task recognise``: the generated speech-like data, edit distance, a tiny biLSTM + CTC that
beats the trivial baseline, checkpoints, and ``--data`` .npz files."""
from __future__ import annotations

import argparse
import json

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
