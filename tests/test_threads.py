"""One layer used from several Python threads at once (issue 23, item 14): each thread's
forward/backward pair is correct (per-thread buffers and training context, backward calls
serialised on Parameter.grad), in train and eval mode, frozen copies and fusedrnn.torch alike."""
import threading

import numpy as np
import pytest

import fusedrnn

THREADS = 4


def _layer(mode, **kw):
    cls = getattr(fusedrnn, mode)
    extra = {"LSTM": dict(proj_size=3, peepholes=True), "GRU": dict(variant="reset_before"),
             "RNN": dict(nonlinearity="tanh")}[mode]
    return cls(5, 7, num_layers=2, bidirectional=True, dtype="float64", seed=3, **extra, **kw)


def _inputs(i, T, N=3):
    rng = np.random.default_rng(100 + i)
    return (rng.standard_normal((T, N, 5)), rng.standard_normal((T, N, 2 * 3)),
            np.array([T, max(1, T - 2), 1])[:N])


def _run_threads(fn):
    """fn(i) in THREADS threads started together; returns their results (re-raises errors)."""
    results, errors = [None] * THREADS, []
    barrier = threading.Barrier(THREADS)

    def body(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_concurrent_training_calls_on_one_layer_are_correct(mode):
    """Threads with different shapes run forward + backward on one train-mode layer, many times
    over: each thread's output, dx and d_state equal a single-threaded run bitwise, and the
    accumulated gradients equal the sum of the single-threaded ones."""
    layer = _layer(mode)
    R = layer.state_size
    shapes = [4 + 3 * i for i in range(THREADS)]  # a different T per thread: different buffers
    ref, ref_grads = [], []
    for i in range(THREADS):
        x, _, lengths = _inputs(i, shapes[i])
        layer.zero_grad()
        h0 = np.full((4, 3, R), 0.1 * i)
        state = (h0, np.full((4, 3, 7), -0.1)) if mode == "LSTM" else h0
        y, _ = layer(x, state, lengths=lengths)
        dy = np.cos(y)
        dx = layer.backward(dy)
        ref.append((y.copy(), dx.copy(), layer.d_state))
        ref_grads.append({n: p.grad.copy() for n, p in layer.named_parameters()})
    rounds = 5

    def work(i):
        x, _, lengths = _inputs(i, shapes[i])
        h0 = np.full((4, 3, R), 0.1 * i)
        state = (h0, np.full((4, 3, 7), -0.1)) if mode == "LSTM" else h0
        out = []
        for _ in range(rounds):
            y, _ = layer(x, state, lengths=lengths)
            dx = layer.backward(np.cos(y))
            out.append((y.copy(), dx.copy(), layer.d_state))
        return out

    layer.zero_grad()
    results = _run_threads(work)
    for i, runs in enumerate(results):
        for y, dx, ds in runs:
            assert np.array_equal(y, ref[i][0])
            assert np.array_equal(dx, ref[i][1])
            for a, b in zip(ds if isinstance(ds, tuple) else (ds,),
                            ref[i][2] if isinstance(ref[i][2], tuple) else (ref[i][2],)):
                assert np.array_equal(a, b)
    for n, p in layer.named_parameters():
        want = rounds * sum(g[n] for g in ref_grads)
        np.testing.assert_allclose(p.grad, want, rtol=1e-12, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("frozen", [False, True])
def test_concurrent_eval_calls_on_one_layer_are_bitwise(frozen):
    layer = _layer("LSTM")
    layer.eval()
    if frozen:
        layer = layer.frozen()
    want = [layer(_inputs(i, 5 + i)[0])[0].copy() for i in range(THREADS)]

    def work(i):
        return [layer(_inputs(i, 5 + i)[0])[0].copy() for _ in range(5)]
    for i, runs in enumerate(_run_threads(work)):
        for y in runs:
            assert np.array_equal(y, want[i])


def test_backward_uses_this_threads_forward():
    """A thread without a forward of its own cannot differentiate another thread's."""
    layer = _layer("GRU")
    x = _inputs(0, 4)[0]
    layer(x)
    errors = []

    def other():
        try:
            layer.backward(np.ones((4, 3, 14)))
        except RuntimeError as e:
            errors.append(str(e))
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "no training forward" in errors[0]
    assert layer.backward(np.ones((4, 3, 14))).shape == x.shape   # this thread's still works


def test_torch_layer_from_threads_is_correct():
    torch = pytest.importorskip("torch")
    from fusedrnn import torch as ftorch
    torch.manual_seed(0)
    layer = ftorch.LSTM(5, 7, num_layers=2, dtype=torch.float64)
    xs = [torch.randn(6, 3, 5, dtype=torch.float64) for _ in range(THREADS)]

    def grads(x):
        xr = x.clone().requires_grad_(True)
        y, _ = layer(xr)
        (y.sin().sum()).backward(inputs=[xr])
        return y.detach().clone(), xr.grad.clone()
    want = [grads(x) for x in xs]
    for i, runs in enumerate(_run_threads(lambda i: [grads(xs[i]) for _ in range(3)])):
        for y, dx in runs:
            assert torch.equal(y, want[i][0]) and torch.equal(dx, want[i][1])


def _fork_child_sum(_):
    import numpy as np
    import fusedrnn
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 32, 16)).astype(np.float32)
    w_ih = rng.uniform(-.1, .1, (64, 16)).astype(np.float32)
    w_hh = rng.uniform(-.1, .1, (64, 16)).astype(np.float32)
    return fusedrnn.get_num_threads(), float(fusedrnn.lstm_forward(x, w_ih, w_hh,
                                                                    training=False).y.sum())


def test_a_child_forked_after_threaded_calls_runs_on_one_thread():
    """libgomp's thread pool does not survive fork(): a child forked (multiprocessing's default
    on Linux) after a kernel call ran on two threads would hang in its first parallel call; it
    runs its kernels on one thread instead, with the same results."""
    import multiprocessing as mp
    import fusedrnn
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork start method")
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(2)
    try:
        _, want = _fork_child_sum(0)
        with mp.get_context("fork").Pool(1) as pool:
            threads, got = pool.apply_async(_fork_child_sum, (0,)).get(timeout=60)
        assert threads == 1 and got == want
    finally:
        fusedrnn.set_num_threads(before)


_FORK_AFTER_TORCH = """
import os, signal, sys
import torch, numpy as np, fusedrnn
fusedrnn.set_adaptive_threads(False)
torch.set_num_threads(2)
a = torch.randn(256, 256)
for _ in range(3):
    a @ a                      # torch's OpenMP team (the process's one libgomp) has started
pid = os.fork()
if pid == 0:
    signal.alarm(60)
    x = np.ones((20, 8, 64), np.float32)
    fusedrnn.LSTM(64, 64, seed=0).forward(x)
    os._exit(0 if fusedrnn.get_num_threads() == 1 else 3)
_, st = os.waitpid(pid, 0)
sys.exit(0 if os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0 else 1)
"""


def test_a_child_forked_after_torch_threads_runs_on_one_thread():
    """torch and fusedrnn share one libgomp: a parent that ran a multi-threaded torch op (and
    no fusedrnn kernel yet) forked a child whose first fusedrnn call hung forever."""
    pytest.importorskip("torch")
    import subprocess
    import sys
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("no fork")
    r = subprocess.run([sys.executable, "-c", _FORK_AFTER_TORCH], timeout=120,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
