"""Reliability: the non-finite check mode, extreme values, long sequences, memory that stays
flat, determinism, layers used from many threads, and the GIL released around kernels."""
from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pytest

import fusedrnn
from fusedrnn import losses, optim
from fusedrnn.models import RecurrentModel


# ----------------------------------------------------------------------------------------------
# Check mode

def test_check_mode_names_layer_step_and_sequence():
    layer = fusedrnn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3, 3))
    x[3, 1, 2] = np.nan
    out, _ = layer.forward(x)                      # off by default: NaN propagates silently
    assert np.isnan(out[3:, 1]).any() and np.isfinite(out[:, 0]).all()
    with fusedrnn.check_finite():
        with pytest.raises(FloatingPointError, match=r"input x: .*time step 3, sequence 1"):
            layer.forward(x)
    layer.forward(x)                               # the context manager restored "off"


def test_check_mode_finds_overflow_inside_a_layer():
    """A relu RNN whose recurrent weights are huge overflows to inf at a known step."""
    layer = fusedrnn.RNN(2, 3, num_layers=2, nonlinearity="relu", dtype="float32", seed=1)
    for p in layer.parameters():
        p.data[...] = 0
    layer.weight_ih_l0.data[...] = 1
    layer.weight_hh_l0.data[...] = np.eye(3) * 1e20  # h_t = 1e20 h_{t-1} + 2: inf at t = 2
    x = np.ones((5, 2, 2), np.float32)
    fusedrnn.set_check_finite(True)
    try:
        with pytest.raises(FloatingPointError, match=r"layer 0 output: .*time step 2, sequence 0"):
            layer.forward(x)
    finally:
        fusedrnn.set_check_finite(False)


def test_check_mode_in_backward():
    layer = fusedrnn.GRU(3, 4, bidirectional=True, batch_first=True, dtype="float64", seed=2)
    x = np.random.default_rng(1).standard_normal((2, 5, 3))
    with fusedrnn.check_finite():
        layer.forward(x)
        d = np.zeros((2, 5, 8))
        d[1, 4, 0] = np.inf
        with pytest.raises(FloatingPointError, match=r"d_output: .*time step 4, sequence 1"):
            layer.backward(d)
        d[1, 4, 0] = 1e300                            # finite, but its gradient overflows
        layer.weight_ih_l0.data *= 1e10               # the same pre-activations, but
        layer.forward(x * 1e-10)                     # dx = dg w_ih overflows
        with pytest.raises(FloatingPointError, match=r"layer 0 input gradient"):
            layer.backward(d)


def test_check_mode_checks_parameter_gradients_and_skips_padding():
    """Backward in check mode scans the parameters' gradients it added into (not only dx, which
    input_grad=False does not even compute); NaN in the padding past a sequence's length,
    which the kernels never read, raises nothing (input x, d_output)."""
    layer = fusedrnn.LSTM(3, 4, dtype="float64", seed=3)
    x = np.random.default_rng(2).standard_normal((5, 2, 3))
    x[:, :, 0] = 1e300                              # its weight column 0: a forward as usual,
    layer.weight_ih_l0.data[:, 0] = 0               # but dw_ih[:, 0] = dg x[..., 0] overflows
    with fusedrnn.check_finite():
        y, _ = layer.forward(x)
        with pytest.raises(FloatingPointError, match="gradient of weight_ih_l0"):
            layer.backward(np.full_like(y, 1e10), input_grad=False)
    padded = fusedrnn.GRU(3, 4, dtype="float64", seed=4)
    x = np.random.default_rng(3).standard_normal((6, 2, 3))
    lengths = np.array([6, 3])
    x[4, 1] = np.nan
    with fusedrnn.check_finite():
        y, _ = padded.forward(x, lengths=lengths)
        d = np.ones_like(y)
        d[5, 1] = np.nan
        padded.backward(d)
        x[2, 1, 0] = np.nan                         # inside sequence 1: still found
        with pytest.raises(FloatingPointError, match=r"input x: .*time step 2, sequence 1"):
            padded.forward(x, lengths=lengths)


def test_check_mode_is_per_thread():
    seen = []
    with fusedrnn.check_finite():
        t = threading.Thread(target=lambda: seen.append(fusedrnn.layers._checking()))
        t.start()
        t.join()
        assert fusedrnn.layers._checking()
    assert seen == [False]


# ----------------------------------------------------------------------------------------------
# Extreme values

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_huge_inputs_saturate_like_the_reference(cell):
    from test_kernels import make_case
    (x, w_ih, w_hh), kw, _ = make_case(cell, (6, 3, 4, 5), np.float64, bias=True, state=True)
    x *= 1e4
    got = getattr(fusedrnn, cell + "_forward")(x, w_ih, w_hh, **kw, training=False)
    want = getattr(fusedrnn.reference, cell + "_forward")(x, w_ih, w_hh, **kw)
    assert np.isfinite(got.y).all()
    np.testing.assert_allclose(got.y, want.y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_nonfinite_inputs_never_crash(cell, value):
    layer = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[cell](
        4, 5, num_layers=2, bidirectional=True, seed=3)
    x = np.random.default_rng(2).standard_normal((7, 3, 4)).astype(np.float32)
    x[2, 0, 1] = value
    out, _ = layer.forward(x, lengths=[7, 4, 1])
    dx = layer.backward(np.ones_like(out))
    assert out.shape == (7, 3, 10) and dx.shape == x.shape
    # Sequences that never saw the bad value stay finite.
    assert np.isfinite(out[:, 1:]).all() and np.isfinite(dx[:, 1:]).all()


def test_clipping_keeps_an_exploding_network_finite():
    """Recurrent weights at 1.5x identity: the gradient grows like 1.5^T; clipping keeps SGD
    finite where the unclipped run blows up."""
    def run(clip):
        model = RecurrentModel("rnn", input_size=2, hidden_size=8, output_size=1,
                               nonlinearity="relu", init="irnn", dtype="float64", seed=0)
        model.rnn.weight_hh_l0.data *= 1.5
        opt = optim.SGD(model.parameters(), lr=0.05)
        rng = np.random.default_rng(0)
        for _ in range(60):
            x = rng.standard_normal((40, 4, 2))
            model.zero_grad()
            y, _ = model.forward(x)
            loss, d = losses.mse(y, np.zeros_like(y))
            model.backward(d)
            if clip:
                fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return loss, [p.data for p in model.parameters()]
    with np.errstate(all="ignore"):
        loss, params = run(clip=True)
        assert np.isfinite(loss) and all(np.isfinite(p).all() for p in params)
        loss, params = run(clip=False)
        assert not (np.isfinite(loss) and all(np.isfinite(p).all() for p in params))


# ----------------------------------------------------------------------------------------------
# Long sequences and memory

def _traced_peak(f):
    tracemalloc.start()
    try:
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_inference_over_100k_steps_needs_no_cache():
    T, H = 100_000, 32
    x = np.zeros((T, 1, 8), np.float32)
    layer = fusedrnn.LSTM(8, H, seed=0).eval()
    peak = _traced_peak(lambda: layer.forward(x))
    y_bytes = T * H * 4
    # The output itself (once in the layer's buffer, once returned), nothing that grows with a
    # training cache (which alone would be ~6 x y).
    assert peak < 2 * y_bytes + 2 * 2 ** 20, f"{peak / 2**20:.1f} MiB"


def test_training_memory_is_linear_in_T():
    """Peak traced memory of a training step at T = 2000, 6000, 10000 grows by equal steps.
    (The per-thread kernel workspace is sized first, at the largest T, so every run reuses it.)"""
    layer = fusedrnn.GRU(8, 16, seed=0)

    def step(T):
        x = np.zeros((T, 2, 8), np.float32)

        def f():
            out, _ = layer.forward(x)
            layer.backward(np.ones_like(out))
        return f
    step(10_000)()
    layer.release_buffers()
    p = [_traced_peak(step(T)) for T in (2000, 6000, 10_000)]
    layer.release_buffers()
    d1, d2 = p[1] - p[0], p[2] - p[1]
    assert abs(d2 - d1) < 0.1 * d1, p
    assert p[2] < 5.5 * p[0], p


def _rss_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_rss_stays_flat_over_10000_training_steps():
    model = RecurrentModel("lstm", vocab_size=20, embed_dim=8, hidden_size=16, num_layers=2,
                           output_size=20, dropout=0.1, seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 20, (6, 3))
    target = rng.integers(0, 20, (6, 3))
    state = None
    rss = []
    for step in range(10_000):
        model.zero_grad()
        logits, state = model.forward(tok, state)
        _, d = losses.cross_entropy(logits, target)
        model.backward(d)
        fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step in (999, 9999):
            rss.append(_rss_kib())
    assert rss[1] - rss[0] < 4096, f"RSS grew by {rss[1] - rss[0]} KiB over 9000 steps"


# ----------------------------------------------------------------------------------------------
# Determinism

def _train_run(threads, steps=15):
    fusedrnn.set_num_threads(threads)
    try:
        model = RecurrentModel("lstm", vocab_size=30, hidden_size=40, num_layers=2,
                               bidirectional=True, output_size=30, dropout=0.2, seed=7)
        opt = optim.AdamW(model.parameters(), lr=3e-3)
        rng = np.random.default_rng(7)
        for _ in range(steps):
            tok = rng.integers(0, 30, (12, 16))
            model.zero_grad()
            logits, _ = model.forward(tok, lengths=rng.integers(1, 13, 16))
            _, d = losses.cross_entropy(logits, rng.integers(0, 30, (12, 16)))
            model.backward(d)
            fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return {k: v.copy() for k, v in model.state_dict().items()}
    finally:
        fusedrnn.set_num_threads(2)


def test_training_runs_are_bitwise_reproducible_across_runs_and_threads():
    a, b, c = _train_run(1), _train_run(1), _train_run(2)
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k}: two seeded runs differ"
        assert np.array_equal(a[k], c[k]), f"{k}: 1 and 2 threads differ"


# ----------------------------------------------------------------------------------------------
# Threads

def test_layers_from_many_threads_match_serial():
    layers = [fusedrnn.LSTM(5, 24, num_layers=2, bidirectional=True, seed=s) for s in range(4)]
    xs = [np.random.default_rng(s).standard_normal((9, 5, 5)).astype(np.float32)
          for s in range(4)]

    def run(i):
        out, _ = layers[i].forward(xs[i])
        layers[i].zero_grad()
        dx = layers[i].backward(np.ones_like(out))
        return out, dx, {k: g.copy() for k, g in layers[i].grad_dict().items()}
    serial = [run(i) for i in range(4)]
    results = [None] * 4

    def work(i):
        for _ in range(3):
            results[i] = run(i)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        for k in want[2]:
            assert np.array_equal(got[2][k], want[2][k])


def test_gil_is_released_during_kernels():
    """While one thread runs long kernels (1 OpenMP thread), another Python thread keeps
    counting at close to its free rate; with the GIL held it would get one 5 ms switch interval
    per ~100 ms call."""
    x = np.zeros((20000, 8, 64), np.float32)
    w_ih = np.zeros((256, 64), np.float32)
    w_hh = np.full((256, 64), 1e-3, np.float32)

    def count_while(f):
        done, ticks = threading.Event(), []

        def count():
            n = 0
            while not done.is_set():
                n += 1
            ticks.append(n)
        t = threading.Thread(target=count)
        t0 = time.perf_counter()
        t.start()
        f()
        done.set()
        t.join()
        return ticks[0] / (time.perf_counter() - t0)
    fusedrnn.set_num_threads(1)
    try:
        fusedrnn.lstm_forward(x, w_ih, w_hh, training=False)
        free = count_while(lambda: time.sleep(0.3))
        busy = count_while(lambda: [fusedrnn.lstm_forward(x, w_ih, w_hh, training=False)
                                    for _ in range(3)])
    finally:
        fusedrnn.set_num_threads(2)
    assert busy > 0.3 * free, f"counter ran at {busy / free:.0%} of its free rate"
