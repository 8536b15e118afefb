"""``--task tag``: slot filling with a bidirectional LSTM. Trains tiny configurations in a
local loop (the trainer's job in the CLI) and checks: the grammar and BIO chunking, that the
trained tagger beats the majority-tag baseline and that the bidirectional network beats the
unidirectional one on the right-context templates, predict, metadata / checkpoint round trips,
and CoNLL --data files."""
from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest

import fusedrnn
from fusedrnn.tasks import DataError, get_task
from fusedrnn.tasks.tag import SequenceTagger, Tag, generate, spans, span_f1


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_args(**kw):
    base = dict(task="tag", cell=None, hidden=32, embed=32, layers=None, bidirectional=None,
                dropout=None, batch_size=32, seed=0, data=None, lr=None)
    base.update(kw)
    return argparse.Namespace(**base)


def small_task(n_train=1500, n_valid=300, **kw):
    task = Tag(small_args(**kw))
    task.n_train, task.n_valid = n_train, n_valid
    task.prepare()
    return task


def train(task, steps, lr=1e-2, seed=0):
    model = task.build_model()
    opt = fusedrnn.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for batch in itertools.islice(task.batches(np.random.default_rng(seed)), steps):
        model.zero_grad()
        loss, count = task.train_step(model, batch)
        assert count == int(batch[2].sum())
        losses.append(loss)
        fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return model, losses


@pytest.fixture(scope="module")
def trained():
    """Bidirectional and unidirectional taggers trained on the same small configuration."""
    fusedrnn.set_num_threads(1)
    bi_task = small_task()
    bi, bi_losses = train(bi_task, 150)
    uni_task = small_task(bidirectional=False)
    uni, _ = train(uni_task, 150)
    return bi_task, bi, bi_losses, bi_task.evaluate(bi), uni_task.evaluate(uni)


# -- grammar and chunks ---------------------------------------------------------------------------
def test_registry_and_class_attributes():
    assert get_task("tag") is Tag
    assert Tag.metric == "f1" and Tag.higher_is_better and Tag.bidirectional_ok
    assert Tag.defaults["bidirectional"] is True and Tag.defaults["cell"] == "lstm"


def test_grammar_is_seeded_valid_bio_with_right_context_templates():
    a, b = generate(300, 5), generate(300, 5)
    assert a == b and a != generate(300, 6)
    types = set()
    for s in a:
        tags = [t for _, t in s]
        for i, t in enumerate(tags):        # every I-x continues a chunk of type x
            if t.startswith("I-"):
                assert i > 0 and tags[i - 1] != "O" and tags[i - 1][2:] == t[2:]
        types |= {typ for _, _, typ in spans(tags)}
    assert types == {"departure", "destination", "date", "time"}
    # utterances that start with a city, whose slot type only the words after it decide
    first = {s[0][1] for s in a if s[0][1] in ("B-departure", "B-destination")}
    assert first == {"B-departure", "B-destination"}
    words = {w.lower() for s in generate(2000, 0) for w, _ in s}
    assert 150 < len(words) < 600
    held = {w for s in generate(300, 1, heldout=True) for w, _ in s}
    assert "Reykjavik" in held or "Nairobi" in held
    assert not {"Reykjavik", "Nairobi", "Lima", "Oslo", "Perth", "Quito"} & \
        {w for s in generate(2000, 0) for w, _ in s}


def test_spans_follow_conlleval():
    assert spans(["B-a", "I-a", "O", "B-b"]) == [(0, 2, "a"), (3, 4, "b")]
    assert spans(["I-a", "I-a", "I-b", "B-b", "I-b"]) == [(0, 2, "a"), (2, 3, "b"), (3, 5, "b")]
    assert spans(["O", "I-a", "B-a", "O"]) == [(1, 2, "a"), (2, 3, "a")]
    m = span_f1([["B-a", "I-a", "O", "B-b"]], [["B-a", "O", "O", "B-b"]])
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.75)
    perfect = span_f1([["B-a", "I-a"]], [["B-a", "I-a"]])
    assert perfect["f1"] == 1.0


def test_batches_are_padded_and_use_word_dropout():
    task = small_task(n_train=200, n_valid=20, batch_size=16)
    it = task.batches(np.random.default_rng(0))
    unk = 0
    for x, y, lengths in itertools.islice(it, 30):
        assert x.shape == y.shape and x.shape[1] == 16 and x.dtype == np.int64
        assert x.shape[0] == lengths.max()
        pad = np.arange(x.shape[0])[:, None] >= lengths[None, :]
        assert (x[pad] == 0).all() and (x[~pad] > 0).all()
        unk += int((x == 1).sum())
    assert unk > 0
    assert task.epoch == pytest.approx(30 * 16 / 200)


def test_none_flags_take_the_task_defaults():
    ns = argparse.Namespace(task="tag", cell=None, hidden=None, embed=None, layers=None,
                            bidirectional=None, dropout=None, batch_size=None, seed=None,
                            data=None)
    task = Tag(ns)
    task.n_train, task.n_valid = 50, 10
    task.prepare()
    model = task.build_model()
    assert isinstance(model, SequenceTagger)
    d = Tag.defaults
    assert model.rnn.hidden_size == d["hidden"] and model.rnn.bidirectional
    assert model.embedding.embedding_dim == d["embed"] and model.embed_drop.p == d["dropout"]
    assert type(model.rnn).__name__ == "LSTM"


def test_cells_and_float64_train_step():
    task = small_task(n_train=64, n_valid=16, cell="gru", hidden=8, embed=8)
    model = task.build_model(dtype="float64")
    assert isinstance(model.rnn, fusedrnn.GRU) and model.head.weight.dtype == np.float64
    batch = next(task.batches(np.random.default_rng(0)))
    model.zero_grad()
    loss, _ = task.train_step(model, batch)
    assert np.isfinite(loss)
    assert all(np.abs(p.grad).sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError):
        small_task(n_train=20, n_valid=5, cell="transformer").build_model()


# -- training ------------------------------------------------------------------------------------
def test_tagger_beats_baseline(trained):
    task, _, losses, bi, _ = trained
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    assert 0.3 < bi["baseline_f1"] < 0.8
    assert bi["f1"] > bi["baseline_f1"] + 0.2
    assert bi["f1"] > 0.85 and bi["accuracy"] > bi["baseline_accuracy"]
    assert set(bi) >= {"f1", "precision", "recall", "accuracy", "loss", "baseline_f1",
                       "baseline_accuracy"}


def test_bidirectional_beats_unidirectional(trained):
    _, _, _, bi, uni = trained
    # utterances like "Taipei is where i arrive": only the right context decides the slot type
    assert bi["f1"] > uni["f1"] + 0.04, (bi["f1"], uni["f1"])


def test_predict_formats_word_slash_tag(trained):
    task, model, _, _, _ = trained
    out = task.predict(model, ["i want to fly from Boston to Denver on friday morning",
                               "", "Taipei is where i arrive on November 2nd"])
    assert len(out) == 3 and out[1] == ""
    pairs = [tok.rsplit("/", 1) for tok in out[0].split()]
    assert [w for w, _ in pairs] == "i want to fly from Boston to Denver on friday morning".split()
    assert dict(pairs)["Boston"] == "B-departure" and dict(pairs)["Denver"] == "B-destination"
    assert dict(pairs)["friday"] == "B-date" and dict(pairs)["morning"] == "B-time"
    pairs = dict(tok.rsplit("/", 1) for tok in out[2].split())
    assert pairs["Taipei"] == "B-destination"
    assert pairs["November"] == "B-date" and pairs["2nd"] == "I-date"
    assert task.summary(model) and all("/" in line for line in task.summary(model))


def test_checkpoint_round_trip(trained, tmp_path):
    task, model, _, metrics, _ = trained
    path = tmp_path / "tag.safetensors"
    fusedrnn.save(path, model, task=task.metadata())
    ck = fusedrnn.load(path)
    meta = json.loads(json.dumps(ck.metadata["task"]))
    assert meta["vocab"] == task.vocab and meta["tags"] == task.tags
    fresh = Tag(argparse.Namespace(task="tag", data=None, seed=5))  # split: the stored one
    fresh.restore(meta)
    assert fresh.args.hidden == 32 and fresh.args.embed == 32
    lines = ["leave Boston tomorrow at 9 am", "Denver to New York on the 3rd of May"]
    loaded = ck.model.eval()
    assert fresh.predict(loaded, lines) == task.predict(model, lines)
    fresh.n_train, fresh.n_valid = task.n_train, task.n_valid
    fresh.prepare()                       # keeps the restored vocabulary
    assert fresh.vocab == task.vocab and fresh.valid_data == task.valid_data
    again = fresh.evaluate(loaded)
    assert again["f1"] == pytest.approx(metrics["f1"])


def test_torch_twin_matches(trained, torch1):
    task, model, _, metrics, _ = trained
    tmodel = task.torch_model(model)
    tm = task.torch_evaluate(tmodel)
    assert tm["f1"] == pytest.approx(metrics["f1"], abs=1e-3)
    assert tm["loss"] == pytest.approx(metrics["loss"], rel=1e-3)
    batch = next(task.batches(np.random.default_rng(3)))
    tmodel.zero_grad()
    loss, count = task.torch_train_step(tmodel, batch)
    assert np.isfinite(loss) and count == int(batch[2].sum())
    assert all(p.grad is not None for p in tmodel.parameters())


def test_torch_twin_uses_the_same_dropout_masks(torch1):
    task = small_task(n_train=64, n_valid=16, layers=2, dropout=0.4, hidden=8, embed=8)
    model = task.build_model()
    tmodel = task.torch_model(model)
    for batch in itertools.islice(task.batches(np.random.default_rng(0)), 3):
        model.zero_grad()
        tmodel.zero_grad()
        loss, _ = task.train_step(model, batch)
        t_loss, _ = task.torch_train_step(tmodel, batch)
        assert t_loss == pytest.approx(loss, rel=1e-4)
        np.testing.assert_allclose(tmodel.head.weight.grad.numpy(), model.head.weight.grad,
                                   atol=1e-5)
        np.testing.assert_allclose(tmodel.rnn.layers[0].weight_ih_l0_reverse.grad.numpy(),
                                   model.rnn.weight_ih_l0_reverse.grad, atol=1e-5)


# -- --data files ----------------------------------------------------------------------------------
def write_conll(path, sentences):
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n",
                    encoding="utf-8")
    return path


def test_conll_file_trains(tmp_path):
    sents = generate(400, 3)
    path = write_conll(tmp_path / "train.conll", sents)
    task = Tag(small_args(data=str(path), hidden=16, embed=16))
    task.prepare()
    assert len(task.train_data) + len(task.valid_data) == 400 and len(task.valid_data) == 40
    assert task.tags[0] == "O" and "B-date" in task.tags
    model, losses = train(task, 40)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert 0 <= task.evaluate(model)["f1"] <= 1


def test_conll_extra_columns_docstart_and_iob1(tmp_path):
    text = "-DOCSTART- -X- O\n\n" + "\n\n".join(
        f"John NNP I-PER\nSmith NNP I-PER\nvisits VBZ O\nParis{i} NNP I-LOC" for i in range(12))
    path = tmp_path / "iob1.conll"
    path.write_text(text + "\n", encoding="utf-8")
    task = Tag(small_args(data=str(path)))
    task.prepare()
    s = task.train_data[0]
    assert [t for _, t in s] == ["B-PER", "I-PER", "O", "B-LOC"]
    assert task.tags == ["O", "B-LOC", "B-PER", "I-PER"]


@pytest.mark.parametrize("content, match", [
    ("Boston B-departure\nto\nDenver B-destination\n", "expected 'word TAG'"),
    ("Boston S-departure\n", "not BIO"),
    ("Boston departure\n", "not BIO"),
    ("Boston B-departure\n\nDenver B-destination\n", "at least 10"),
    ("a O\n\n" * 12, "no tagged chunk"),
])
def test_bad_conll_files_raise_data_error(tmp_path, content, match):
    path = tmp_path / "bad.conll"
    good = "\n\n".join(f"w{i} B-x\nv O" for i in range(12)) + "\n\n"
    path.write_text(good + content if match != "at least 10" and match != "no tagged chunk"
                    else content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        Tag(small_args(data=str(path))).prepare()


def test_missing_and_binary_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tag(small_args(data=str(tmp_path / "nope.conll"))).prepare()
    path = tmp_path / "binary.conll"
    path.write_bytes(b"\xff\xfe\x00word O\n")
    with pytest.raises(DataError, match="cannot read"):
        Tag(small_args(data=str(path))).prepare()


def test_conll_lines_split_at_newline_only_and_lose_the_byte_order_mark(tmp_path):
    from fusedrnn.tasks.tag import read_conll
    good = "\n\n".join(f"w{i} B-x\nv O" for i in range(12)) + "\n\n"
    path = tmp_path / "bom.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\n" + good, encoding="utf-8-sig")
    sents = read_conll(str(path))
    assert len(sents) == 12 and all("\ufeff" not in w for s in sents for w, _ in s)
    # U+2028 and a form feed are not line breaks: the bad tag is on line 3, as an editor counts
    path.write_text(good.replace("w0 B-x", "w\u20280 B-x", 1) + "a O\r\nb\x0c O\r\nc X-y\n",
                    encoding="utf-8", newline="")
    n = good.count("\n")
    with pytest.raises(DataError, match=f"bom.conll:{n + 3}: tag 'X-y'"):
        read_conll(str(path))


def test_a_tag_only_in_the_validation_split_is_a_tag_of_the_file(tmp_path):
    path = tmp_path / "rare.conll"
    sents = [f"fly O\nto O\n{c} B-dest\nnow O\n" for c in ["Paris", "Rome", "Oslo"] * 20]
    path.write_text("\n".join(sents + ["at O\nnoon B-time\n"]), encoding="utf-8")
    seen_in_valid = 0
    for seed in range(8):          # every seed works, whichever split the rare tag falls in
        task = Tag(small_args(data=str(path), seed=seed))
        task.prepare()
        assert "B-time" in task.tags
        seen_in_valid += any(t == "B-time" for s in task.valid_data for _, t in s)
    assert seen_in_valid                    # (the case that failed: tags of train only)


def test_tab_separated_conll_keeps_words_with_spaces(tmp_path):
    from fusedrnn.tasks.tag import read_conll
    path = tmp_path / "tabs.conll"
    body = "".join(f"fly\tO\nto \tO\nNew York{i}\tNNP\tB-dest\n\n" for i in range(12))
    path.write_text(body + "bad\t\tX-y\n", encoding="utf-8")
    with pytest.raises(DataError, match=":49: tag 'X-y'"):
        read_conll(str(path))
    path.write_text(body + "a b O\n", encoding="utf-8")     # no tab: whitespace columns
    sents = read_conll(str(path))
    assert sents[0] == [("fly", "O"), ("to", "O"), ("New York0", "B-dest")]
    assert sents[-1] == [("a", "O")]
