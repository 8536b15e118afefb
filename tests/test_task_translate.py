"""``--task translate``: dates in human formats to ISO form with an LSTM encoder-decoder.
Checks the date formats and the split by date, that a tiny model trained in a local loop beats
the ISO-regex baseline, greedy and beam decoding, that the encoder receives the decoder's
gradient (finite differences through the whole seq2seq loss in float64), predict, metadata /
checkpoint round trips and --data files."""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import re

import numpy as np
import pytest

import fusedrnn
from fusedrnn import losses
from fusedrnn.tasks import DataError, get_task
from fusedrnn.tasks.translate import (EOS, FORMATS, Seq2Seq, Translate, beam_search,
                                      format_date, iso_baseline)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_args(**kw):
    base = dict(task="translate", cell=None, hidden=96, embed=16, layers=None,
                bidirectional=None, dropout=None, batch_size=32, seed=0, data=None, lr=None)
    base.update(kw)
    return argparse.Namespace(**base)


def small_task(n_valid=300, **kw):
    task = Translate(small_args(**kw))
    task.n_valid = n_valid
    task.prepare()
    return task


@pytest.fixture(scope="module")
def trained():
    fusedrnn.set_num_threads(1)
    task = small_task()
    model = task.build_model()
    opt = fusedrnn.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for batch in itertools.islice(task.batches(np.random.default_rng(0)), 500):
        model.zero_grad()
        loss, count = task.train_step(model, batch)
        assert count == batch[0].shape[1]
        history.append(loss)
        fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return task, model, history, task.evaluate(model)


# -- data ----------------------------------------------------------------------------------------
def test_registry_and_class_attributes():
    assert get_task("translate") is Translate
    assert Translate.metric == "accuracy" and Translate.higher_is_better


def test_formats():
    d = datetime.date(2026, 11, 2)
    got = {name: format_date(d, name) for name in FORMATS}
    for want in ("2nd of November 2026", "Nov 2, 2026", "02.11.26", "November 2nd, 2026",
                 "2026/11/02", "Monday, November 2, 2026", "2 Nov 26", "2026-11-02",
                 "11/02/2026", "20261102"):
        assert want in got.values()
    assert len(set(got.values())) == len(FORMATS)
    assert format_date(d, "month_d_y", "upper") == "NOVEMBER 2, 2026"
    # the weekday is the date's own
    rng = np.random.default_rng(0)
    for k in rng.integers(0, 36000, 50):
        day = datetime.date(1950, 1, 1) + datetime.timedelta(days=int(k))
        s = format_date(day, "day_month_d_y")
        assert datetime.datetime.strptime(s, "%A, %B %d, %Y").date() == day
        assert datetime.datetime.strptime(format_date(day, "dy_d_mon_y"),
                                          "%a, %d %b %Y").date() == day
    assert format_date(datetime.date(1975, 3, 1), "dmy_dots_short") == "01.03.75"
    assert [format_date(datetime.date(2000, 1, n), "nth_of_month_y")[:4]
            for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23)] == \
        ["1st ", "2nd ", "3rd ", "4th ", "11th", "12th", "13th", "21st", "22nd", "23rd"]


def test_split_is_by_date_and_formats_are_redrawn():
    task = small_task()
    valid = {t for _, t in task.valid_pairs}
    train = {d.isoformat() for d in task.train_dates}
    assert len(valid) == 300 and not valid & train
    assert len(train) + len(valid) == (datetime.date(2049, 12, 31)
                                        - datetime.date(1950, 1, 1)).days + 1
    assert len({iso_baseline(s) == "" for s, _ in task.valid_pairs}) == 2
    first = dict((t, s) for s, t in task.train_pairs)
    bs = task.args.batch_size
    it = task.batches(np.random.default_rng(0))
    for _ in itertools.islice(it, len(task.train_pairs) // bs + 1):   # into the second pass
        pass
    second = dict((t, s) for s, t in task.train_pairs)
    assert second.keys() == first.keys()
    assert sum(first[t] != second[t] for t in first) > 0.8 * len(first)
    assert task.epoch > 1


def test_batches_shapes():
    task = small_task(n_valid=20, batch_size=8)
    src, src_len, tin, tout, tgt_len = next(task.batches(np.random.default_rng(1)))
    assert src.shape == (src_len.max(), 8) and tin.shape == tout.shape == (11, 8)
    assert (tgt_len == 11).all() and (tin[0] == 1).all() and (tout[-1] == EOS).all()
    assert (tin[1:] == tout[:-1]).all()
    pad = np.arange(src.shape[0])[:, None] >= src_len[None, :]
    assert (src[pad] == 0).all() and (src[~pad] > 0).all()


def test_baseline_rule():
    assert iso_baseline("2026-11-02") == "2026-11-02"
    assert iso_baseline("2026/11/02") == iso_baseline("20261102") == "2026-11-02"
    assert iso_baseline("Nov 2, 2026") == "" and iso_baseline("02.11.26") == ""


def test_none_flags_take_the_task_defaults():
    ns = argparse.Namespace(task="translate", cell=None, hidden=None, embed=None, layers=None,
                            bidirectional=None, dropout=None, batch_size=None, seed=None,
                            data=None)
    task = Translate(ns)
    task.n_valid = 10
    task.prepare()
    model = task.build_model()
    d = Translate.defaults
    assert model.encoder.hidden_size == model.decoder.hidden_size == d["hidden"]
    assert not model.encoder.bidirectional and isinstance(model.encoder, fusedrnn.LSTM)
    assert model.src_embed.embedding_dim == d["embed"]
    assert task.beam == 4
    task.args.beam = 2
    assert task.beam == 2


# -- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell, bidirectional, layers", [("lstm", False, 1), ("lstm", True, 2),
                                                         ("gru", False, 1)])
def test_encoder_gets_decoder_gradient_finite_differences(cell, bidirectional, layers):
    task = small_task(n_valid=10, hidden=3, embed=2, cell=cell, bidirectional=bidirectional,
                      layers=layers)
    model = task.build_model(dtype="float64")
    assert model.head.weight.dtype == np.float64
    batch = task.make_batch([("2nd of May 2001", "2001-05-02"), ("02.11.26", "2026-11-02"),
                             ("Mon, 1 Jan 1990", "1990-01-01")])
    src, src_len, tin, tout, tgt_len = batch

    def loss_value():
        logits = model.forward(src, src_len, tin, tgt_len)
        return losses.cross_entropy(logits, tout, lengths=tgt_len)[0]

    model.zero_grad()
    task.train_step(model, batch)
    eps = 1e-6
    checked = 0
    for name, p in model.named_parameters():
        if not name.startswith(("encoder.", "src_embed.")):
            continue
        flat, grad = p.data.reshape(-1), p.grad.reshape(-1)
        idx = int(np.argmax(np.abs(grad)))
        old = flat[idx]
        flat[idx] = old + eps
        up = loss_value()
        flat[idx] = old - eps
        down = loss_value()
        flat[idx] = old
        fd = (up - down) / (2 * eps)
        assert abs(grad[idx]) > 1e-6, name        # the encoder does receive gradient
        assert fd == pytest.approx(grad[idx], rel=1e-5, abs=1e-9), name
        checked += 1
    assert checked >= 4


# -- training and decoding -----------------------------------------------------------------------
def test_tiny_model_beats_baseline(trained):
    task, _, history, m = trained
    assert np.mean(history[-20:]) < 0.3 * np.mean(history[:20])
    assert 0.05 < m["baseline_accuracy"] < 0.3
    assert m["accuracy"] > m["baseline_accuracy"] + 0.25, m
    assert m["char_accuracy"] > 0.85
    assert set(m) >= {"accuracy", "accuracy_greedy", "char_accuracy", "loss",
                      "baseline_accuracy"}


def test_greedy_and_beam_decoding(trained):
    task, model, _, _ = trained
    pairs = task.valid_pairs[:200]
    sources = [s for s, _ in pairs]
    greedy, g_score = task.translate(model, sources, beam=1)
    best, b_score = task.translate(model, sources, beam=5)
    assert (b_score >= g_score - 1e-12).all()
    assert np.mean(b_score) >= np.mean(g_score)
    # the reported scores are the length-normalised log-probabilities of the outputs
    ok = [i for i, (g, b) in enumerate(zip(greedy, best)) if re.fullmatch(r"[0-9-]+", g)
          and re.fullmatch(r"[0-9-]+", b)]
    assert len(ok) > 150
    rescored_g = task.score(model, [(sources[i], greedy[i]) for i in ok])
    rescored_b = task.score(model, [(sources[i], best[i]) for i in ok])
    np.testing.assert_allclose(rescored_g, g_score[ok], atol=1e-4)
    np.testing.assert_allclose(rescored_b, b_score[ok], atol=1e-4)
    # pure beam search with beam 1 is greedy decoding; a wider beam is still a valid search
    src, src_len = task._src(sources[:50])
    ids1, s1 = beam_search(model, src, src_len, 1, task.max_len)
    assert ["".join(task.tgt_vocab[k] for k in seq) for seq in ids1] == greedy[:50]
    np.testing.assert_allclose(s1, g_score[:50], atol=1e-5)
    ids5, s5 = beam_search(model, src, src_len, 5, task.max_len)
    assert (s5 >= s1 - 1e-5).mean() >= 0.9
    assert model.training is False


def test_predict(trained):
    task, model, _, metrics = trained
    out = task.predict(model, ["2nd of November 2026", "", "  2026-11-02  ", "Nov 2, 2026"])
    assert len(out) == 4 and out[1] == ""
    assert all(re.fullmatch(r"[0-9-]*", line) for line in out)
    assert task.summary(model)


def test_checkpoint_round_trip(trained, tmp_path):
    task, model, _, metrics = trained
    path = tmp_path / "translate.safetensors"
    fusedrnn.save(path, model, task=task.metadata())
    ck = fusedrnn.load(path)
    assert isinstance(ck.model, Seq2Seq)
    meta = json.loads(json.dumps(ck.metadata["task"]))
    fresh = Translate(argparse.Namespace(task="translate", data=None, seed=5))  # split: stored
    fresh.restore(meta)
    assert fresh.src_vocab == task.src_vocab and fresh.tgt_vocab == task.tgt_vocab
    assert fresh.max_len == task.max_len and fresh.args.hidden == 96
    lines = [s for s, _ in task.valid_pairs[:20]] + ["1 Jan 2000", "31.12.1999"]
    loaded = ck.model.eval()
    assert fresh.predict(loaded, lines) == task.predict(model, lines)
    fresh.n_valid = task.n_valid
    fresh.prepare()
    assert fresh.valid_pairs == task.valid_pairs
    assert fresh.evaluate(loaded)["accuracy"] == pytest.approx(metrics["accuracy"])


# -- --data files ----------------------------------------------------------------------------------
def test_tsv_data_file_trains_and_splits_by_target(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for k in range(200):
        d = datetime.date(2000, 1, 1) + datetime.timedelta(days=int(k * 7))
        for name in ("d_month_y", "dmy_dots"):
            lines.append(f"{format_date(d, name)}\t{d.isoformat()}")
    rng.shuffle(lines)
    path = tmp_path / "dates.tsv"
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    task = Translate(small_args(data=str(path), hidden=16, embed=8))
    task.prepare()
    valid = {t for _, t in task.valid_pairs}
    assert len(valid) == 20 and not valid & {t for _, t in task.train_pairs}
    assert len(task.train_pairs) + len(task.valid_pairs) == 400
    model = task.build_model()
    opt = fusedrnn.optim.Adam(model.parameters(), lr=1e-2)
    for batch in itertools.islice(task.batches(np.random.default_rng(0)), 20):
        model.zero_grad()
        loss, _ = task.train_step(model, batch)
        opt.step()
    assert np.isfinite(loss) and 0 <= task.evaluate(model)["accuracy"] <= 1


@pytest.mark.parametrize("content, match", [
    ("a\tb\tc\n", "source<TAB>target"),
    ("no tab here\n", "source<TAB>target"),
    ("\t2000-01-01\n", "source<TAB>target"),
    ("".join(f"x{i}\ty{i % 3}\n" for i in range(30)), "at least 10"),
])
def test_bad_tsv_files_raise_data_error(tmp_path, content, match):
    path = tmp_path / "bad.tsv"
    good = "".join(f"s{i}\tt{i}\n" for i in range(20)) if match != "at least 10" else ""
    path.write_text(good + content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        Translate(small_args(data=str(path))).prepare()


def test_missing_and_binary_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Translate(small_args(data=str(tmp_path / "nope.tsv"))).prepare()
    path = tmp_path / "binary.tsv"
    path.write_bytes(b"\xff\xfe\x00a\tb\n")
    with pytest.raises(DataError, match="cannot read"):
        Translate(small_args(data=str(path))).prepare()


@pytest.mark.parametrize("layers, bidirectional, dropout", [(1, False, 0.0), (2, True, 0.3)])
def test_torch_twin(trained, layers, bidirectional, dropout, torch1):
    torch = torch1
    task, model, _, metrics = trained
    if layers > 1:
        task = small_task(n_valid=50, layers=layers, bidirectional=bidirectional,
                          dropout=dropout, hidden=8, embed=4)
        model = task.build_model()
    tmodel = task.torch_model(model)
    assert set(tmodel.export()) == set(model.state_dict())
    batch = task.make_batch(task.valid_pairs[:48])
    src, src_len, tin, tout, tgt_len = batch
    args = [torch.from_numpy(a) for a in (src, src_len, tin, tgt_len)]
    model.eval()
    tmodel.eval()
    with torch.no_grad():
        t_logits = tmodel(*args).numpy()
    logits = model.forward(src, src_len, tin, tgt_len)
    valid = np.arange(tin.shape[0])[:, None] < tgt_len[None, :]
    np.testing.assert_allclose(t_logits[valid], logits[valid], atol=1e-4)
    if layers == 1:
        assert task.torch_evaluate(tmodel)["accuracy"] == pytest.approx(metrics["accuracy"])
    # training steps: same loss and gradients (same dropout masks)
    model.train()
    for _ in range(2):
        model.zero_grad()
        tmodel.zero_grad()
        loss, _ = task.train_step(model, batch)
        t_loss, count = task.torch_train_step(tmodel, batch)
        assert count == 48 and t_loss == pytest.approx(loss, rel=1e-4)
    grads = {n: p.grad for n, p in model.named_parameters()}
    for k, layer in enumerate(tmodel.encoder.layers):
        for name, p in layer.named_parameters():
            np.testing.assert_allclose(p.grad.numpy(),
                                       grads["encoder." + name.replace("_l0", f"_l{k}")],
                                       atol=1e-4)
    model.eval()


def test_tsv_lines_split_at_newline_only_and_lose_the_byte_order_mark(tmp_path):
    from fusedrnn.tasks.translate import read_pairs
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"s\u2028{i}\x0cx\tt{i}\r\n" for i in range(12)),
                    encoding="utf-8-sig", newline="")
    pairs = read_pairs(str(path))
    assert pairs[0] == ("s\u20280\x0cx", "t0") and len(pairs) == 12
    path.write_text("".join(f"s{i}\x85\tt{i}\n" for i in range(12)) + "no tab\n",
                    encoding="utf-8")
    with pytest.raises(DataError, match="pairs.tsv:13: expected"):
        read_pairs(str(path))
