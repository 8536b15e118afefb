"""Seeded end-to-end training runs through the whole Python API: layers, losses, optimisers,
clipping, schedulers, truncated BPTT and checkpoints. Each must reduce its loss by a set factor;
a checkpoint taken mid-run must resume bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import losses, optim
from fusedrnn.data import batchify, bptt_chunks


@fusedrnn.register_module
class Classifier(fusedrnn.Module):
    """Recurrent encoder + linear head on the last valid step."""

    def __init__(self, cell, input_size, hidden, classes, seed):
        super().__init__()
        self._record(cell=cell, input_size=input_size, hidden=hidden, classes=classes, seed=seed)
        cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[cell]
        self.rnn = cls(input_size, hidden, num_layers=2, bidirectional=True, seed=seed)
        self.head = fusedrnn.Linear(2 * hidden, classes, seed=seed + 1)

    def forward(self, x, lengths):
        out, _ = self.rnn.forward(x, lengths=lengths)
        self._lengths = lengths
        return self.head.forward(out)                       # [T, N, classes]

    def backward(self, d_logits):
        return self.rnn.backward(self.head.backward(d_logits))


def classification_batch(rng, N=32, T=12, C=3):
    """Label = whether the sum of feature 0 over a sequence's valid steps is positive."""
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    lengths = rng.integers(3, T + 1, N)
    valid = np.arange(T)[:, None] < lengths[None, :]
    y = ((x[:, :, 0] * valid).sum(0) > 0).astype(np.int64)
    return x, lengths, y


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_sequence_classification_learns(cell, tmp_path):
    rng = np.random.default_rng(0)
    model = Classifier(cell, 3, 16, 2, seed=1)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))   # warm-up
    history = []
    for step in range(120):
        x, lengths, y = classification_batch(rng)
        model.zero_grad()
        logits = model.forward(x, lengths)
        loss, d = losses.cross_entropy_last(logits, y, lengths)
        model.backward(d)
        fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(loss)
        if step == 59:
            fusedrnn.save(tmp_path / "mid.safetensors", model, opt, step=step)
            rng_state = rng.bit_generator.state
    first, last = np.mean(history[:10]), np.mean(history[-10:])
    assert last < first / 3, f"{cell}: loss {first:.3f} -> {last:.3f}"

    # Resume from the checkpoint: the last 60 steps again give identical weights.
    ck = fusedrnn.load(tmp_path / "mid.safetensors")
    assert ck.metadata == {"step": 59}
    resumed = ck.model
    opt2 = optim.Adam(resumed.parameters(), lr=1e-2)
    opt2.load_state_dict(ck.optimizer_state)
    sched2 = optim.LambdaLR(opt2, lambda step: min(1.0, (step + 1) / 10), last_epoch=-1)
    for _ in range(60):
        sched2.step()
    rng.bit_generator.state = rng_state
    for step in range(60, 120):
        x, lengths, y = classification_batch(rng)
        resumed.zero_grad()
        _, d = losses.cross_entropy_last(resumed.forward(x, lengths), y, lengths)
        resumed.backward(d)
        fusedrnn.clip_grad_norm_(resumed.parameters(), 1.0)
        opt2.step()
        sched2.step()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)


@fusedrnn.register_module
class CharModel(fusedrnn.Module):
    def __init__(self, vocab, hidden, seed):
        super().__init__()
        self._record(vocab=vocab, hidden=hidden, seed=seed)
        self.embed = fusedrnn.Embedding(vocab, 8, seed=seed)
        self.rnn = fusedrnn.LSTM(8, hidden, num_layers=2, dropout=0.1, seed=seed + 1)
        self.head = fusedrnn.Linear(hidden, vocab, seed=seed + 2)

    def forward(self, tokens, state=None):
        out, state = self.rnn.forward(self.embed.forward(tokens), state)
        return self.head.forward(out), state

    def backward(self, d_logits):
        self.embed.backward(self.rnn.backward(self.head.backward(d_logits)))


def test_language_model_with_truncated_bptt():
    """Next-character prediction on a periodic stream, state carried across chunks."""
    text = ("the quick brown fox jumps over the lazy dog; " * 60).encode()
    vocab = sorted(set(text))
    tokens = np.array([vocab.index(c) for c in text], dtype=np.int64)
    streams = batchify(tokens, 8)
    model = CharModel(len(vocab), 48, seed=3)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.CosineAnnealingLR(opt, T_max=6 * 17)
    history = []
    for epoch in range(6):
        state = None
        for x, y in bptt_chunks(streams, 20):
            model.zero_grad()
            logits, state = model.forward(x, state)
            loss, d = losses.cross_entropy(logits, y)
            model.backward(d)
            fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            history.append(loss)
    assert np.mean(history[-5:]) < np.log(len(vocab)) / 10, history[::10]
