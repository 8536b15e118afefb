"""``--task translate --attention ...`` and ``--problem numbers``: finite differences of the whole
seq2seq loss through attention (float64), decoding with attention (beam states, step equals the
teacher-forced forward), the numbers data, checkpoints, and the torch twin."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import fusedrnn
from fusedrnn import losses
from fusedrnn.tasks.attention_seq2seq import (AttnSeq2Seq, AttnState, number_baseline,
                                              number_pairs, number_words, random_number)
from fusedrnn.tasks.translate import BOS, Translate, beam_search

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

KINDS = ("bahdanau", "luong", "luong_dot")


def small_task(n_valid=20, **kw):
    base = dict(task="translate", cell=None, hidden=3, embed=2, layers=None,
                bidirectional=None, dropout=None, batch_size=8, seed=0, data=None, lr=None,
                problem="numbers", attention="bahdanau")
    base.update(kw)
    task = Translate(argparse.Namespace(**base))
    task.n_valid = n_valid
    task.n_numbers = 200
    task.prepare()
    return task


def test_number_words():
    assert number_words(0) == "zero"
    assert number_words(19) == "nineteen" and number_words(40) == "forty"
    assert number_words(1002) == "one thousand two"
    assert number_words(402000070011) == "four hundred two billion seventy thousand eleven"
    assert number_words(999999999999).startswith("nine hundred ninety-nine billion")
    assert number_words(10 ** 9) == "one billion"
    with pytest.raises(ValueError, match="n must"):
        number_words(10 ** 12)
    rng = np.random.default_rng(0)
    lengths = {len(str(random_number(rng))) for _ in range(2000)}
    assert lengths == set(range(1, 13))
    assert number_baseline("seventy-two") == "72" and number_baseline("one hundred") == ""


def test_numbers_split_and_vocab():
    task = small_task()
    valid = {t for _, t in task.valid_pairs}
    assert len(valid) == 20 and not valid & {t for _, t in task.train_pairs}
    for s, t in task.valid_pairs + task.train_pairs[:50]:
        assert number_words(int(t)) == s
        assert all(c in task.src_id for c in s) and all(c in task.tgt_id for c in t)
    assert task.max_len == max(len(t) for _, t in task.train_pairs) + 1
    pairs, _ = number_pairs(np.random.default_rng(1), 5, exclude={int(t) for t in valid})
    assert len(pairs) == 5


@pytest.mark.parametrize("attention", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_seq2seq_loss_finite_differences(attention, bidirectional):
    """Every parameter of the attentional seq2seq (float64): the analytic gradient of the
    teacher-forced loss against central differences."""
    task = small_task(attention=attention, bidirectional=bidirectional, cell="gru")
    model = task.build_model(dtype="float64")
    assert isinstance(model, AttnSeq2Seq)
    batch = task.make_batch([("one thousand two", "1002"), ("seventy", "70"),
                             ("six million", "6000000")])
    src, src_len, tin, tout, tgt_len = batch

    def loss_value():
        logits = model.forward(src, src_len, tin, tgt_len)
        return losses.cross_entropy(logits, tout, lengths=tgt_len)[0]

    model.zero_grad()
    task.train_step(model, batch)
    eps = 1e-6
    names = set()
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        flat, grad = p.data.reshape(-1), p.grad.reshape(-1)
        picks = {int(np.argmax(np.abs(grad)))} | set(rng.integers(0, flat.size, 3).tolist())
        for idx in picks:
            old = flat[idx]
            flat[idx] = old + eps
            up = loss_value()
            flat[idx] = old - eps
            down = loss_value()
            flat[idx] = old
            fd = (up - down) / (2 * eps)
            assert fd == pytest.approx(grad[idx], rel=1e-5, abs=1e-9), (name, idx)
        names.add(name.split(".")[0])
    want = {"src_embed", "encoder", "tgt_embed", "decoder", "head", "combine"}
    if attention != "luong_dot":
        want.add("attention")
    assert want <= names


@pytest.mark.parametrize("attention", KINDS)
def test_step_decoding_equals_teacher_forcing(attention):
    """Greedy decoding attends step by step; feeding its output back teacher-forced gives the
    same logits (the batched and the step path agree), and beam states reorder correctly."""
    task = small_task(attention=attention, hidden=8, embed=4)
    model = task.build_model(dtype="float64").eval()
    src, src_len = task._src([s for s, _ in task.valid_pairs[:5]])
    state = model.encode(src, src_len)
    assert isinstance(state, AttnState)
    decoder = model.decoder.frozen()
    tokens = np.full(5, BOS, np.int64)
    steps, outs = [], []
    for _ in range(4):
        logits, state = model.step(tokens, state, decoder)
        steps.append(logits)
        tokens = logits.argmax(1)
        outs.append(tokens)
    tin = np.stack([np.full(5, BOS, np.int64)] + outs[:-1])
    full = model.forward(src, src_len, tin, np.full(5, 4, np.int64))
    np.testing.assert_allclose(full, np.stack(steps), rtol=1e-10, atol=1e-12)
    # a reordered, repeated state equals the state of reordered inputs
    s2 = np.repeat(model.encode(src, src_len), 2, axis=1)[:, [3, 0, 9]]
    ref = model.encode(src[:, [1, 0, 4]], src_len[[1, 0, 4]])
    l2, _ = model.step(np.full(3, BOS, np.int64), s2, decoder)
    l3, _ = model.step(np.full(3, BOS, np.int64), ref, decoder)
    np.testing.assert_allclose(l2, l3, rtol=1e-12)
    ids, _ = beam_search(model, src, src_len, 3, task.max_len)
    assert len(ids) == 5


@pytest.fixture(scope="module")
def trained_luong():
    fusedrnn.set_num_threads(1)
    task = small_task(n_valid=30, attention="luong", hidden=16, embed=8)
    model = task.build_model()
    opt = fusedrnn.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    first = last = None
    for k, batch in zip(range(40), task.batches(rng)):
        model.zero_grad()
        loss, _ = task.train_step(model, batch)
        first = loss if first is None else first
        last = loss
        opt.step()
    model.eval()
    return task, model, first, last


def test_training_reduces_loss_and_checkpoint_round_trip(trained_luong, tmp_path):
    task, model, first, last = trained_luong
    assert last < first
    path = tmp_path / "attn.safetensors"
    fusedrnn.save(path, model, task=task.metadata())
    ck = fusedrnn.load(path)
    assert isinstance(ck.model, AttnSeq2Seq) and ck.model.attention.kind == "general"
    meta = json.loads(json.dumps(ck.metadata["task"]))
    assert meta["flags"]["attention"] == "luong" and meta["flags"]["problem"] == "numbers"
    fresh = Translate(argparse.Namespace(task="translate", data=None, seed=5))
    fresh.restore(meta)
    lines = [s for s, _ in task.valid_pairs[:10]]
    assert fresh.predict(ck.model.eval(), lines) == task.predict(model, lines)
    m = task.evaluate(model)
    assert 0 <= m["accuracy"] <= 1 and "baseline_accuracy" in m


@pytest.mark.parametrize("attention", KINDS)
def test_torch_twin(attention, torch1):
    torch = torch1
    task = small_task(n_valid=30, attention=attention, hidden=8, embed=4, dropout=0.2,
                      bidirectional=attention == "luong")
    model = task.build_model()
    tmodel = task.torch_model(model)
    assert set(tmodel.export()) == set(model.state_dict())
    batch = task.make_batch(task.valid_pairs[:16])
    src, src_len, tin, tout, tgt_len = batch
    args = [torch.from_numpy(a) for a in (src, src_len, tin, tgt_len)]
    model.eval()
    tmodel.eval()
    with torch.no_grad():
        t_logits = tmodel(*args).numpy()
    logits = model.forward(src, src_len, tin, tgt_len)
    valid = np.arange(tin.shape[0])[:, None] < tgt_len[None, :]
    np.testing.assert_allclose(t_logits[valid], logits[valid], atol=1e-5)
    model.train()
    opt = fusedrnn.optim.Adam(model.parameters(), lr=1e-2)
    t_opt = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    for _ in range(3):       # same loss over the first steps (same dropout masks)
        model.zero_grad()
        t_opt.zero_grad()
        loss, _ = task.train_step(model, batch)
        t_loss, _ = task.torch_train_step(tmodel, batch)
        assert t_loss == pytest.approx(loss, rel=1e-4)
        grads = dict(model.grad_dict())
        t_grads = {"attention." + k: p.grad.numpy() for k, p in tmodel.att.items()}
        t_grads["combine.weight"] = tmodel.combine.weight.grad.numpy()
        for k, g in t_grads.items():
            np.testing.assert_allclose(g, grads[k], atol=2e-5, err_msg=k)
        opt.step()
        t_opt.step()
