"""The optimisers, gradient clipping and `fusedrnn train`'s step run under the kernels' subnormal
contract (fusedrnn.optim.flush_denormals, python/bindings/fpenv.cc): a subnormal operand is read
as zero, a subnormal result is written as zero; normal numbers are bitwise unchanged; the
caller's floating-point environment comes back after each call. Semantic tests (the values),
not timings."""
import contextlib
import platform

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _core, optim
from fusedrnn.module import Parameter

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "i686"),
                                reason="the flush is x86 (MXCSR) only")

DTYPES = ("float32", "float64")
# (a subnormal, a huge factor whose product with it is normal, a small number whose square
# times 1e-3 is subnormal)
SUB = {"float32": (1e-39, 1e30, 1e-20), "float64": (1e-310, 1e300, 1e-160)}


def _param(values, grad, dtype):
    p = Parameter(np.array(values, dtype=dtype))
    p.grad[...] = np.array(grad, dtype=dtype)
    return p


def _caller_keeps_subnormals(dtype):
    tiny = np.finfo(dtype).tiny
    return np.array([tiny], dtype=dtype) * np.array([0.5], dtype=dtype)


def test_flush_denormals_supported_and_restores():
    assert _core.flush_denormals_supported
    for dt in DTYPES:
        tiny = np.finfo(dt).tiny
        half = np.array([tiny], dtype=dt)
        with optim.flush_denormals():
            assert (half * np.array([0.5], dtype=dt))[0] == 0            # FTZ
            assert (np.array([SUB[dt][0]], dtype=dt) * SUB[dt][1])[0] == 0   # DAZ
        assert _caller_keeps_subnormals(dt)[0] == tiny / 2           # restored
        with pytest.raises(KeyError):
            with optim.flush_denormals():
                raise KeyError("x")
        assert _caller_keeps_subnormals(dt)[0] == tiny / 2           # restored after a raise


def test_context_cannot_be_entered_twice():
    ctx = optim.flush_denormals()
    with ctx:
        with pytest.raises(ValueError, match="already entered"):
            ctx.__enter__()
    with ctx:                                                        # reusable after exit
        pass


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_flushes_subnormal_results_and_operands(dtype):
    tiny = np.finfo(dtype).tiny
    sub, huge, _ = SUB[dtype]
    # FTZ: 2 tiny - 1.5 tiny = 0.5 tiny is subnormal -> 0; 4 tiny - 1.5 tiny stays normal
    p = _param([2 * tiny, 4 * tiny], [1.5 * tiny, 1.5 * tiny], dtype)
    optim.SGD([p], lr=1.0).step()
    assert p.data[0] == 0 and p.data[1] == np.array(2.5 * tiny, dtype=dtype)
    # DAZ: a subnormal gradient reads as 0, even times a learning rate that would make it normal
    p = _param([0.0, 0.0], [sub, 1e-30 if dtype == "float32" else 1e-290], dtype)
    optim.SGD([p], lr=huge).step()
    assert p.data[0] == 0 and p.data[1] != 0
    assert _caller_keeps_subnormals(dtype)[0] == tiny / 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW, optim.RMSprop])
def test_second_moment_of_vanishing_gradients_is_zero(cls, dtype):
    small = SUB[dtype][2]
    p = _param([1.0, 1.0], [small, 1.0], dtype)
    opt = cls([p], lr=1e-3)
    opt.step()
    key = "square_avg" if cls is optim.RMSprop else "exp_avg_sq"
    v = opt.state[p][key]
    # (1 - beta2) * small**2 (or (1 - alpha) * small**2) is subnormal: written as zero
    assert v[0] == 0 and v[1] > 0
    if cls is not optim.RMSprop:
        assert opt.state[p]["exp_avg"][0] != 0                      # 0.1 * small is normal
    assert _caller_keeps_subnormals(dtype)[0] == np.finfo(dtype).tiny / 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_reads_subnormal_gradients_as_zero(dtype):
    sub = SUB[dtype][0]
    p = _param([1.0, 1.0, 1.0], [sub, sub, sub], dtype)
    assert optim.clip_grad_norm_([p], 1.0, norm_type=1.0) == 0.0
    assert optim.clip_grad_norm_([p], 1.0, norm_type=2.0) == 0.0
    assert _caller_keeps_subnormals(dtype)[0] == np.finfo(dtype).tiny / 2


@pytest.mark.parametrize("cls,kw", [(optim.SGD, dict(lr=0.1, momentum=0.9)),
                                    (optim.Adam, dict(lr=1e-2)),
                                    (optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
                                    (optim.RMSprop, dict(lr=1e-2, centered=True, momentum=0.5))])
def test_normal_numbers_bitwise_unchanged(monkeypatch, cls, kw):
    """The flush changes nothing where every value stays normal: the same updates with the
    flush replaced by a no-op give the same bits."""
    rng = np.random.default_rng(0)
    init = rng.standard_normal((3, 7, 5)).astype(np.float32)
    grads = rng.standard_normal((4, 3, 7, 5)).astype(np.float32)

    def run():
        ps = [Parameter(init[i].copy()) for i in range(3)]
        opt = cls(ps, **kw)
        for g in grads:
            for p, gi in zip(ps, g):
                p.grad[...] = gi
            optim.clip_grad_norm_(ps, 2.0)
            opt.step()
        return [p.data.copy() for p in ps]

    flushed = run()
    monkeypatch.setattr(_core, "FlushDenormals", contextlib.nullcontext)
    plain = run()
    for a, b in zip(flushed, plain):
        np.testing.assert_array_equal(a, b)


def test_train_step_runs_under_the_flush(tmp_path, monkeypatch):
    """`fusedrnn train`'s step (the task's NumPy head and loss too) runs inside the flush."""
    from fusedrnn.cli import main
    from fusedrnn.tasks.classify import Classify
    seen = []
    orig = Classify.train_step

    def train_step(self, model, batch):
        seen.append(_caller_keeps_subnormals("float32")[0])
        return orig(self, model, batch)

    monkeypatch.setattr(Classify, "train_step", train_step)
    rc = main(["train", "--task", "classify", "--problem", "adding", "--min-length", "5",
               "--max-length", "5", "--hidden", "4", "--steps", "2", "--quiet",
               "--out", str(tmp_path / "r")])
    assert rc == 0
    assert seen and all(v == 0 for v in seen)
    assert _caller_keeps_subnormals("float32")[0] != 0
