"""Tests of fusedrnn.optim against torch.optim (single-tensor code path, foreach=False).

Optimisers: 10 steps with the same random gradients on the same initial parameters; float64
parameters must agree to 1e-12 relative (max |diff| / max |value|; observed <= 4e-16), float32
to 1e-6 (observed <= 2e-7).
Clipping agrees to 1e-12 (float64); scheduler learning rates to 1e-12 relative over 30 steps.
State-dict round trips are bitwise.
"""
from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest

from fusedrnn import optim as O
from fusedrnn.module import Linear, Parameter

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (5,), (2, 3, 2)]
TOL = {np.float64: 1e-12, np.float32: 1e-6}
STEPS = 10


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def init(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grads(dtype, step, seed=100):
    rng = np.random.default_rng(seed + step)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def ours_and_torch(name, kw, dtype, groups=None):
    """Our optimiser and torch's on identical parameters (two groups when ``groups``)."""
    xs = init(dtype)
    ps = [Parameter(x.copy()) for x in xs]
    ts = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in xs]
    if groups:
        ours_p = [{"params": ps[:1], **groups}, {"params": ps[1:]}]
        torch_p = [{"params": ts[:1], **groups}, {"params": ts[1:]}]
    else:
        ours_p, torch_p = ps, ts
    ours = getattr(O, name)(ours_p, **kw)
    theirs = getattr(torch.optim, name)(torch_p, foreach=False, **kw)
    return ps, ours, ts, theirs


def run(ps, opt, steps, dtype, start=0):
    for k in range(start, start + steps):
        for p, g in zip(ps, grads(dtype, k)):
            np.copyto(p.grad, g)
        opt.step()


def run_torch(ts, opt, steps, dtype):
    for k in range(steps):
        for t, g in zip(ts, grads(dtype, k)):
            t.grad = torch.from_numpy(g)
        opt.step()


def sgd_grid():
    out = []
    for mom, damp, nest, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.2], [False, True],
                                                     [0.0, 0.05], [False, True]):
        if nest and (mom == 0 or damp != 0):
            continue
        out.append(dict(lr=0.05, momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd,
                        maximize=mx))
    return out


CASES = (
    [("SGD", kw) for kw in sgd_grid()]
    + [("RMSprop", dict(lr=0.01, centered=c, momentum=m, weight_decay=wd, maximize=mx))
       for c, m, wd, mx in itertools.product([False, True], [0.0, 0.8], [0.0, 0.1],
                                             [False, True])]
    + [("RMSprop", dict(lr=0.02, alpha=0.3, eps=1e-6, centered=True))]
    + [(name, dict(lr=0.01, amsgrad=a, weight_decay=wd, maximize=mx))
       for name, a, wd, mx in itertools.product(["Adam", "AdamW"], [False, True], [0.0, 0.1],
                                                [False, True])]
    + [(name, dict(lr=0.03, betas=(0.3, 0.6), eps=1e-6, amsgrad=True))  # lerp's second branch
       for name in ["Adam", "AdamW"]]
)


def case_id(case):
    name, kw = case
    return name + "-" + ",".join(f"{k}={v}" for k, v in kw.items() if k != "lr")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_optimizer_matches_torch(case, dtype):
    name, kw = case
    ps, ours, ts, theirs = ours_and_torch(name, kw, dtype)
    data_ids = [id(p.data) for p in ps]
    grad_copy = None
    for k in range(STEPS):
        for p, t, g in zip(ps, ts, grads(dtype, k)):
            np.copyto(p.grad, g)
            t.grad = torch.from_numpy(g.copy())
        grad_copy = [p.grad.copy() for p in ps]
        ours.step()
        theirs.step()
    for p, t in zip(ps, ts):
        assert p.data.dtype == dtype
        assert rel_err(p.data, t.detach().numpy()) <= TOL[dtype]
    assert [id(p.data) for p in ps] == data_ids            # updated in place, never rebound
    assert all(np.array_equal(p.grad, g) for p, g in zip(ps, grad_copy))  # grads untouched


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)),
                                     ("RMSprop", dict(lr=0.01, centered=True)),
                                     ("Adam", dict(lr=0.01)), ("AdamW", dict(lr=0.01))])
def test_param_groups_match_torch(name, kw):
    ps, ours, ts, theirs = ours_and_torch(name, kw, np.float64,
                                          groups={"lr": 0.003, "weight_decay": 0.2})
    assert ours.param_groups[0]["lr"] == 0.003 and ours.param_groups[1]["lr"] == kw["lr"]
    run(ps, ours, STEPS, np.float64)
    run_torch(ts, theirs, STEPS, np.float64)
    for p, t in zip(ps, ts):
        assert rel_err(p.data, t.detach().numpy()) <= TOL[np.float64]
    # same state_dict layout as torch (indices, group keys, state keys)
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in tsd["param_groups"]]
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for i in sd["state"]:
        assert set(sd["state"][i]) == {k for k, v in tsd["state"][i].items() if v is not None}
        for k, v in sd["state"][i].items():
            tv = tsd["state"][i][k]
            if isinstance(v, np.ndarray):
                assert rel_err(v, tv.numpy()) <= 1e-9
            else:
                assert v == tv.item()
    for g, tg in zip(sd["param_groups"], tsd["param_groups"]):
        for k, v in g.items():
            assert k in tg and (v == tg[k] or (isinstance(v, tuple) and list(v) == list(tg[k])))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", [c for c in CASES if c[1].get("maximize") is not True],
                         ids=case_id)
def test_state_dict_round_trip_is_bitwise(case, dtype):
    name, kw = case
    ps = [Parameter(x) for x in init(dtype)]
    full = getattr(O, name)(ps, **kw)
    run(ps, full, 10, dtype)

    qs = [Parameter(x) for x in init(dtype)]
    first = getattr(O, name)(qs, **kw)
    run(qs, first, 5, dtype)
    sd = first.state_dict()
    for entry in sd["state"].values():                      # state arrays are copies
        for v in entry.values():
            if isinstance(v, np.ndarray):
                assert not any(np.shares_memory(v, b) for st in first.state.values()
                               for b in st.values() if isinstance(b, np.ndarray))
    rs = [Parameter(q.data.copy()) for q in qs]
    resumed = getattr(O, name)(rs, **{**kw, "lr": 123.0})   # hyperparameters come from sd
    resumed.load_state_dict(sd)
    assert resumed.param_groups[0]["lr"] == kw["lr"]
    for entry in sd["state"].values():                      # loading copies too
        for v in entry.values():
            if isinstance(v, np.ndarray):
                v += 1.0
    run(rs, resumed, 5, dtype, start=5)
    for p, r in zip(ps, rs):
        assert np.array_equal(p.data, r.data)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES[::2], ids=case_id)
def test_torch_optimizer_state_dict_loads(case, dtype):
    # torch.optim keeps the same state names with tensor values ("step" a 0-d float tensor):
    # loaded into ours after 5 of torch's steps, the next 5 steps follow torch's
    name, kw = case
    ps, ours, ts, theirs = ours_and_torch(name, kw, dtype)
    run_torch(ts, theirs, 5, dtype)
    for p, t in zip(ps, ts):
        np.copyto(p.data, t.detach().numpy())
    ours.load_state_dict(theirs.state_dict())
    for st in ours.state.values():
        assert all(isinstance(v, (np.ndarray, int, float)) for v in st.values())
        if "step" in st:
            assert st["step"] == 5 and isinstance(st["step"], int)
    run(ps, ours, 5, dtype, start=5)
    for k in range(5, 10):
        for t, g in zip(ts, grads(dtype, k)):
            t.grad = torch.from_numpy(g)
        theirs.step()
    for p, t in zip(ps, ts):
        assert rel_err(p.data, t.detach().numpy()) <= TOL[dtype]


def test_torch_optimizer_state_dict_is_checked():
    ps, ours, ts, theirs = ours_and_torch("Adam", dict(lr=0.01), np.float32)
    run_torch(ts, theirs, 2, np.float32)
    def sd_with(i, key, f):  # (torch's state_dict shares its entries' dicts with the optimiser)
        sd = theirs.state_dict()
        sd["state"] = {j: dict(st) for j, st in sd["state"].items()}
        sd["state"][i][key] = f(sd["state"][i][key])
        return sd

    sd = sd_with(0, "exp_avg", lambda t: t.double())
    with pytest.raises(TypeError, match=r"state\[0\]\['exp_avg'\] must have dtype float32"):
        ours.load_state_dict(sd)
    sd = sd_with(1, "exp_avg_sq", lambda t: t[:2])
    with pytest.raises(ValueError, match=r"state\[1\]\['exp_avg_sq'\] must have shape"):
        ours.load_state_dict(sd)
    assert ours.state == {}                                 # nothing changed
    # torch's Adam(decoupled_weight_decay=True) is AdamW's update: refused by Adam (it had
    # loaded and then stepped 0.15 off torch's), taken by AdamW; the implementation options
    # (foreach, fused, capturable, differentiable) are dropped
    ts = [torch.nn.Parameter(torch.from_numpy(x)) for x in init(np.float32)]
    decoupled = torch.optim.Adam(ts, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    run_torch(ts, decoupled, 2, np.float32)
    with pytest.raises(ValueError, match=r"decoupled_weight_decay=True .* load it into "
                                         r"fusedrnn.optim.AdamW"):
        ours.load_state_dict(decoupled.state_dict())
    assert ours.state == {}
    w = O.AdamW(ps, lr=0.01)
    w.load_state_dict(decoupled.state_dict())
    assert set(w.param_groups[0]) == {"params", "lr", "betas", "eps", "weight_decay",
                                      "amsgrad", "maximize"}
    with pytest.raises(ValueError, match="decoupled_weight_decay=False"):
        w.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_step_allocates_no_arrays(case):
    name, kw = case
    p = Parameter(np.ones(100_000))                         # 800 kB
    opt = getattr(O, name)([p], **kw)
    p.grad[...] = 0.5
    opt.step()                                              # creates the state buffers
    tracemalloc.start()
    try:
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000


def test_mixed_dtypes_share_one_optimizer():
    xs64, xs32 = init(np.float64), init(np.float32, seed=1)
    mixed = [Parameter(x) for x in xs64] + [Parameter(x) for x in xs32]
    alone64, alone32 = [Parameter(x) for x in xs64], [Parameter(x) for x in xs32]
    opts = [O.Adam(ps, lr=0.01, amsgrad=True) for ps in (mixed, alone64, alone32)]
    for k in range(3):
        for ps, dt in ((mixed[:3], np.float64), (mixed[3:], np.float32), (alone64, np.float64),
                       (alone32, np.float32)):
            for p, g in zip(ps, grads(dt, k)):
                np.copyto(p.grad, g)
        for o in opts:
            o.step()
    for p, q in zip(mixed, alone64 + alone32):
        assert p.data.dtype == q.data.dtype and np.array_equal(p.data, q.data)


def test_state_dict_format():
    ps = [Parameter(x) for x in init(np.float64)]
    opt = O.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5}], amsgrad=True)
    sd = opt.state_dict()
    assert sd["state"] == {}
    assert sd["param_groups"][0]["params"] == [0, 1] and sd["param_groups"][1]["params"] == [2]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    run(ps, opt, 2, np.float64)
    sd = opt.state_dict()
    assert set(sd["state"]) == {0, 1, 2}
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][2]["step"] == 2 and isinstance(sd["state"][2]["step"], int)
    sgd = O.SGD(ps, lr=0.1)                                 # no momentum: no state
    run(ps, sgd, 1, np.float64)
    assert sgd.state_dict()["state"] == {}


def test_load_state_dict_checks():
    ps = [Parameter(x) for x in init(np.float64)]
    opt = O.Adam(ps)
    run(ps, opt, 2, np.float64)
    sd = opt.state_dict()

    other = O.Adam([{"params": ps[:1]}, {"params": ps[1:]}])
    with pytest.raises(ValueError, match="param groups"):
        other.load_state_dict(sd)
    with pytest.raises(ValueError, match="parameters"):
        O.Adam(ps[:2]).load_state_dict(sd)
    wrong_shape = [Parameter(np.zeros((3, 4))), ps[1], ps[2]]
    with pytest.raises(ValueError, match=r"shape \[3, 4\]"):
        O.Adam(wrong_shape).load_state_dict(sd)
    wrong_dtype = [Parameter(x.astype(np.float32)) for x in init(np.float64)]
    with pytest.raises(TypeError, match="dtype float32"):
        O.Adam(wrong_dtype).load_state_dict(sd)
    with pytest.raises(ValueError, match="momentum_buffer"):
        O.Adam(ps).load_state_dict(
            {"state": {0: {"momentum_buffer": np.zeros(SHAPES[0])}},
             "param_groups": sd["param_groups"]})
    with pytest.raises(ValueError, match="betas"):
        O.Adam(ps).load_state_dict({"state": {}, "param_groups": [
            {**sd["param_groups"][0], "betas": (1.5, 0.9)}]})
    # a failed load changes nothing
    fresh = O.Adam(ps, lr=0.5)
    with pytest.raises(TypeError):
        fresh.load_state_dict({"state": {0: {"step": 1, "exp_avg": np.zeros(SHAPES[0],
                                                                            np.float32)}},
                               "param_groups": sd["param_groups"]})
    assert fresh.state == {} and fresh.param_groups[0]["lr"] == 0.5


def test_zero_grad_and_module_params():
    model = Linear(3, 2, dtype="float64", seed=0)
    opt = O.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())
    opt2 = O.Adam(model)                                  # a Module is accepted too
    assert len(opt2.param_groups[0]["params"]) == 2
    assert opt.step(lambda: 3.5) == 3.5


BAD = [
    (O.SGD, dict(lr=-0.1), "lr"), (O.SGD, dict(lr=0.1, momentum=-0.5), "momentum"),
    (O.SGD, dict(lr=0.1, weight_decay=-1), "weight_decay"),
    (O.SGD, dict(lr=0.1, nesterov=True), "nesterov"),
    (O.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (O.SGD, dict(lr="0.1"), "lr"), (O.SGD, dict(lr=float("nan")), "lr"),
    (O.RMSprop, dict(alpha=-0.1), "alpha"), (O.RMSprop, dict(eps=-1e-8), "eps"),
    (O.RMSprop, dict(momentum=-1), "momentum"), (O.RMSprop, dict(centered=1), "centered"),
    (O.Adam, dict(betas=(1.0, 0.999)), r"betas\[0\]"), (O.Adam, dict(betas=(0.9, -0.1)),
                                                          r"betas\[1\]"),
    (O.Adam, dict(betas=0.9), "betas"), (O.Adam, dict(eps=-1.0), "eps"),
    (O.AdamW, dict(weight_decay=-0.01), "weight_decay"), (O.AdamW, dict(lr=-1), "lr"),
    (O.AdamW, dict(amsgrad="yes"), "amsgrad"),
]


@pytest.mark.parametrize("cls,kw,match", BAD)
def test_bad_hyperparameters_raise(cls, kw, match):
    ps = [Parameter(np.zeros(3))]
    with pytest.raises(ValueError, match=match):
        cls(ps, **kw)
    with pytest.raises(ValueError, match=match):            # in a param group too
        cls([{"params": ps, **kw}])


def test_bad_params_raise():
    p = Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        O.SGD([], lr=0.1)
    with pytest.raises(TypeError):
        O.SGD(p, lr=0.1)
    with pytest.raises(TypeError):
        O.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="more than one"):
        O.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)


# -- clipping ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(dtype, norm_type, max_norm):
    gs = grads(dtype, 0)
    ps = [Parameter(np.zeros(s, dtype)) for s in SHAPES]
    ts = [torch.nn.Parameter(torch.zeros(s, dtype=getattr(torch, np.dtype(dtype).name)))
          for s in SHAPES]
    for p, t, g in zip(ps, ts, gs):
        np.copyto(p.grad, g)
        t.grad = torch.from_numpy(g.copy())
    total = O.clip_grad_norm_(ps, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type, foreach=False)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert isinstance(total, float)
    assert abs(total - ttotal.item()) <= tol * ttotal.item()
    for p, t in zip(ps, ts):
        assert p.grad.dtype == dtype
        assert rel_err(p.grad, t.grad.numpy()) <= tol
    if max_norm > total:
        assert all(np.array_equal(p.grad, g) for p, g in zip(ps, gs))


def test_clip_grad_norm_nonfinite_and_module():
    model = Linear(3, 2, dtype="float64", seed=0)
    for p in model.parameters():
        p.grad[...] = 2.0
    total = O.clip_grad_norm_(model, 1.0)
    assert total == pytest.approx(math.sqrt(8 * 4))
    assert O.clip_grad_norm_(model, 1.0) == pytest.approx(1.0, rel=1e-5)
    p = Parameter(np.ones(3))
    p.grad[0] = np.nan
    with pytest.raises(RuntimeError, match="non|nan"):
        O.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert np.isnan(O.clip_grad_norm_([p], 1.0))            # torch: grads become nan
    assert np.all(np.isnan(p.grad))
    assert O.clip_grad_norm_([], 1.0) == 0.0
    with pytest.raises(ValueError, match="norm_type"):
        O.clip_grad_norm_([p], 1.0, norm_type=0)
    with pytest.raises(ValueError, match="max_norm"):
        O.clip_grad_norm_([p], -1.0)


def test_clip_grad_norm_inf_norm_sees_a_nan_anywhere():
    """The inf-norm's total is NaN when any gradient holds a NaN, whichever parameter it is in
    (Python's max() dropped a NaN after the first item), as torch's; error_if_nonfinite raises."""
    for order in (0, 1):
        a, b = Parameter(np.zeros(3)), Parameter(np.zeros(3))
        a.grad[...] = [1, 2, 3]
        b.grad[...] = [np.nan, 1, 1]
        ps = [a, b] if order == 0 else [b, a]
        assert math.isnan(O.clip_grad_norm_(ps, 1.0, norm_type=math.inf))
        with pytest.raises(RuntimeError, match="error_if_nonfinite"):
            O.clip_grad_norm_(ps, 1.0, norm_type=math.inf, error_if_nonfinite=True)


@pytest.mark.parametrize("dtype,scale", [(np.float64, 1e-160), (np.float64, 1e-155),
                                         (np.float64, 1e150), (np.float32, 1e-19),
                                         (np.float32, 1e-22), (np.float32, 1e20)])
@pytest.mark.parametrize("norm_type", [2.0, 3.0])
def test_clip_grad_norm_of_tiny_and_huge_normal_gradients(dtype, scale, norm_type):
    """Normal gradients whose squares are subnormal (or overflow): the flush-to-zero mode read
    the squares as 0, so the norm came out 0 or 10% low (torch: right)."""
    rng = np.random.default_rng(1)
    gs = [(rng.uniform(0.5, 1.0, s) * scale).astype(dtype) for s in [(7, 3), (11,)]]
    assert all(np.all(np.abs(g) >= np.finfo(dtype).tiny) for g in gs)
    ps = [Parameter(np.zeros(g.shape, dtype)) for g in gs]
    for p, g in zip(ps, gs):
        np.copyto(p.grad, g)
    exact = float(sum(np.sum(np.abs(g.astype(np.longdouble) / scale) ** norm_type)
                      for g in gs) ** (1 / norm_type)) * scale
    total = O.clip_grad_norm_(ps, math.inf, norm_type)
    assert abs(total - exact) <= (1e-12 if dtype == np.float64 else 1e-5) * exact


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_value_matches_torch(dtype):
    gs = grads(dtype, 1)
    ps = [Parameter(np.zeros(s, dtype)) for s in SHAPES]
    ts = [torch.zeros(s, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
          for s in SHAPES]
    for p, t, g in zip(ps, ts, gs):
        np.copyto(p.grad, g)
        t.grad = torch.from_numpy(g.copy())
    O.clip_grad_value_(ps, 0.7)
    torch.nn.utils.clip_grad_value_(ts, 0.7, foreach=False)
    for p, t in zip(ps, ts):
        assert np.array_equal(p.grad, t.grad.numpy())
    with pytest.raises(ValueError, match="clip_value"):
        O.clip_grad_value_(ps, -1.0)


# -- schedulers ----------------------------------------------------------------------------------
LRS = (0.1, 0.03)


def sched_pair(make):
    ours_opt = O.SGD([{"params": [Parameter(np.zeros(2))], "lr": LRS[0]},
                      {"params": [Parameter(np.zeros(2))], "lr": LRS[1]}], momentum=0.9)
    torch_opt = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)], "lr": LRS[0]},
                                 {"params": [torch.zeros(2, requires_grad=True)], "lr": LRS[1]}],
                                momentum=0.9)
    return ours_opt, make(O, ours_opt), torch_opt, make(torch.optim.lr_scheduler, torch_opt)


SCHEDULERS = {
    "step": lambda m, o: m.StepLR(o, step_size=7, gamma=0.5),
    "cosine": lambda m, o: m.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
    "linear": lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=8),
    "linear_default": lambda m, o: m.LinearLR(o),
    "lambda": lambda m, o: m.LambdaLR(o, lambda e: 0.95 ** e),
    "lambda_list": lambda m, o: m.LambdaLR(o, [lambda e: 1 / (e + 1), lambda e: 0.9 ** e]),
    "warmup_cosine": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.01, total_iters=5), m.CosineAnnealingLR(o, T_max=20)],
        milestones=[5]),
    "three_phase": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.2, total_iters=4), m.StepLR(o, 3, gamma=0.7),
            m.CosineAnnealingLR(o, T_max=6, eta_min=1e-4)], milestones=[4, 12]),
}


@pytest.mark.parametrize("which", list(SCHEDULERS))
def test_scheduler_matches_torch(which):
    ours_opt, ours, torch_opt, theirs = sched_pair(SCHEDULERS[which])

    def check():
        a, b = ours.get_last_lr(), theirs.get_last_lr()
        assert len(a) == 2
        for x, y in zip(a, b):
            assert abs(x - y) <= 1e-12 * abs(y)
        for g, tg in zip(ours_opt.param_groups, torch_opt.param_groups):
            assert abs(g["lr"] - tg["lr"]) <= 1e-12 * abs(tg["lr"])

    check()
    for _ in range(30):
        torch_opt.step()
        ours.step()
        theirs.step()
        check()


@pytest.mark.parametrize("which", list(SCHEDULERS))
def test_scheduler_state_dict_round_trip(which):
    make = SCHEDULERS[which]
    o1, _, _, _ = sched_pair(make)
    s1 = make(O, o1)
    full = []
    for _ in range(20):
        s1.step()
        full.append(s1.get_last_lr())

    o2, _, _, _ = sched_pair(make)
    s2 = make(O, o2)
    for _ in range(10):
        s2.step()
    osd, ssd = o2.state_dict(), s2.state_dict()

    o3, _, _, _ = sched_pair(make)
    s3 = make(O, o3)
    o3.load_state_dict(osd)
    s3.load_state_dict(ssd)
    resumed = []
    for _ in range(10):
        s3.step()
        resumed.append(s3.get_last_lr())
    assert resumed == full[10:]
    assert [g["lr"] for g in o3.param_groups] == full[-1]


def test_scheduler_bad_arguments_raise():
    opt = O.SGD([Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="step_size"):
        O.StepLR(opt, 0)
    with pytest.raises(ValueError, match="T_max"):
        O.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="start_factor"):
        O.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError, match="end_factor"):
        O.LinearLR(opt, end_factor=1.5)
    with pytest.raises(ValueError, match="total_iters"):
        O.LinearLR(opt, total_iters=0)
    with pytest.raises(ValueError, match="lr_lambdas"):
        O.LambdaLR(opt, [lambda e: 1.0, lambda e: 1.0])
    with pytest.raises(TypeError, match="Optimizer"):
        O.StepLR(object(), 3)
    a, b = O.LinearLR(opt), O.StepLR(opt, 3)
    with pytest.raises(ValueError, match="milestones"):
        O.SequentialLR(opt, [a, b], milestones=[])
    other = O.SGD([Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        O.SequentialLR(other, [O.StepLR(other, 2), b], milestones=[3])
    # a SequentialLR after the first milestone had no closed form to restart from: a bare
    # NotImplementedError at that step (torch's fails the same way); first place works
    inner = O.SequentialLR(opt, [O.LinearLR(opt), O.StepLR(opt, 2)], milestones=[2])
    with pytest.raises(ValueError, match=r"schedulers\[1\] is a SequentialLR; one may come "
                                         r"first only"):
        O.SequentialLR(opt, [O.LinearLR(opt), inner], milestones=[3])
    outer = O.SequentialLR(opt, [inner, O.StepLR(opt, 2)], milestones=[3])
    for _ in range(5):
        outer.step()


@pytest.mark.parametrize("opt", ["SGD", "Adam", "RMSprop"])
def test_step_refuses_read_only_parameters_before_any_update(opt):
    """A frozen layer's read-only weights left in an optimiser: step() had updated the earlier
    parameters and advanced their state, then failed with numpy's bare 'output array is
    read-only'. Refused now before anything changes, naming the parameter."""
    from fusedrnn.layers import LSTM
    head = Linear(4, 2, dtype="float64", seed=0)
    frozen = LSTM(3, 4, dtype="float64", seed=0).frozen()
    params = list(head.parameters()) + list(frozen.parameters())
    for p in params:
        if p.grad.flags.writeable:
            p.grad[...] = 1.0
    o = getattr(O, opt)(params, lr=0.1)
    before = [p.data.copy() for p in params]
    with pytest.raises(ValueError, match=r"parameter 2 .*read-only"):
        o.step()
    assert all(np.array_equal(p.data, b) for p, b in zip(params, before))
    assert not o.state
    with pytest.raises(ValueError, match="read-only"):
        a = np.zeros(3)
        a.flags.writeable = False
        Parameter(a)


def test_torch_parameters_are_named_in_the_refusal():
    with pytest.raises(TypeError, match=r"got torch\.nn\.parameter\.Parameter .*torch\.optim"):
        O.Adam(torch.nn.Linear(2, 2).parameters(), lr=0.1)
