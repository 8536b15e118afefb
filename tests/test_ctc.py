"""CTC: the NumPy reference against finite differences, the C++ kernel against the reference and
against torch.nn.functional.ctc_loss, argument checks, and the decoders."""
import itertools
import math

import numpy as np
import pytest

import fusedrnn
from fusedrnn import reference_ctc as ref
from fusedrnn.ctc import ctc, ctc_beam_search, ctc_greedy_decode, ctc_logits

REDUCTIONS = ("none", "sum", "mean")


def log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def problem(rng, T, N, K, lengths=None, tlens=None, blank=0, repeat=False, dtype=np.float64):
    """Random logits [T, N, K], padded targets [N, S] (labels != blank), lengths."""
    z = rng.standard_normal((T, N, K)).astype(dtype)
    il = np.asarray(lengths if lengths is not None else rng.integers(1, T + 1, N), np.int64)
    tl = np.asarray(tlens if tlens is not None else [rng.integers(0, max(1, (l + 1) // 2) + 1)
                                                     for l in il], np.int64)
    S = max(1, int(tl.max()))
    labels = [k for k in range(K) if k != blank]
    tg = rng.choice(labels, size=(N, S)).astype(np.int64)
    if repeat:                       # force adjacent repeats
        tg[:, 1::2] = tg[:, 0:-1:2] if S > 1 else tg[:, 1::2]
    tg[np.arange(S)[None, :] >= tl[:, None]] = -7       # padding is never read
    return z, tg, il, tl


def concat(tg, tl):
    return np.concatenate([tg[n, :tl[n]] for n in range(len(tl))]).astype(np.int64)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(1e-300, np.max(np.abs(b)))


def scalar(loss):
    return float(np.sum(loss))


# -- 1. reference vs finite differences ----------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("blank", [0, 2])
def test_reference_finite_differences(reduction, blank):
    rng = np.random.default_rng(1)
    z, tg, il, tl = problem(rng, 6, 3, 4, lengths=[6, 4, 5], tlens=[3, 2, 0], blank=blank)
    tg[0, :3] = [1 if blank != 1 else 3, 1 if blank != 1 else 3, 3]    # a repeated label
    lp = log_softmax(z)
    for fn, x in ((ref.ctc, lp), (ref.ctc_logits, z)):
        loss, g = fn(x, tg, il, tl, blank, reduction)
        eps = 1e-6
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += eps
            xm[idx] -= eps
            num[idx] = (scalar(fn(xp, tg, il, tl, blank, reduction)[0])
                        - scalar(fn(xm, tg, il, tl, blank, reduction)[0])) / (2 * eps)
        assert np.max(np.abs(num - g)) < 1e-8, (fn.__name__, np.max(np.abs(num - g)))
        assert np.all(g[5:, 1] == 0) and np.all(g[4:, 1] == 0)  # past input length


def test_reference_brute_force_probability():
    """exp(-loss) is the summed probability of every alignment that collapses to the target."""
    rng = np.random.default_rng(2)
    T, K = 5, 3
    lp = log_softmax(rng.standard_normal((T, 1, K)))
    for target in ([1], [1, 1], [1, 2], [2, 1, 2], []):
        total = 0.0
        for path in itertools.product(range(K), repeat=T):
            collapsed = [k for i, k in enumerate(path) if k != 0 and (i == 0 or path[i - 1] != k)]
            if collapsed == target:
                total += math.exp(sum(lp[t, 0, k] for t, k in enumerate(path)))
        tg = np.array([target + [1] * (3 - len(target))])
        loss, _ = ref.ctc(lp, tg, [T], [len(target)], reduction="sum")
        assert abs(math.exp(-loss) - total) < 1e-12 * max(total, 1e-300) + 1e-15, target


# -- 2. kernel vs reference ----------------------------------------------------------------------
CASES = [  # T, N, K, lengths, target lengths, blank, repeat
    (1, 1, 2, [1], [1], 0, False),
    (1, 2, 3, [1, 1], [0, 1], 2, False),
    (7, 1, 5, [7], [3], 0, True),
    (9, 4, 6, [9, 3, 0, 6], [4, 3, 0, 2], 0, False),   # impossible (3 < 3 + repeats?) and T_n=0
    (13, 5, 7, None, None, 3, True),
    (11, 3, 29, [11, 8, 2], [5, 0, 2], 28, False),
    (4, 3, 4, [4, 2, 3], [4, 3, 1], 1, False),         # impossible: L > T_n
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_kernel_matches_reference(case, dtype, zero_infinity):
    T, N, K, il, tl, blank, repeat = case
    rng = np.random.default_rng(T * 100 + N)
    z, tg, il, tl = problem(rng, T, N, K, il, tl, blank, repeat, dtype)
    lp = log_softmax(z.astype(np.float64)).astype(dtype)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    for reduction in REDUCTIONS:
        for targets in (tg, concat(tg, tl)):
            for fn, rfn, x in ((ctc, ref.ctc, lp), (ctc_logits, ref.ctc_logits, z)):
                loss, g = fn(x, targets, il, tl, blank, reduction, zero_infinity)
                rloss, rg = rfn(x, targets, il, tl, blank, reduction, zero_infinity)
                assert g.dtype == dtype and g.shape == x.shape
                if reduction == "none":
                    assert loss.dtype == dtype
                    fin = np.isfinite(rloss)
                    assert np.array_equal(np.isinf(loss), np.isinf(rloss)), (loss, rloss)
                    assert rel(loss[fin], rloss[fin]) < tol if fin.any() else True
                else:
                    if math.isinf(rloss):
                        assert math.isinf(loss)
                    else:
                        assert abs(loss - rloss) <= tol * max(1.0, abs(rloss)), (loss, rloss)
                assert np.array_equal(np.isnan(g), np.isnan(rg)), "NaN pattern of the gradient"
                ok = ~np.isnan(rg)
                assert np.max(np.abs(g[ok] - rg[ok])) < tol, \
                    (fn.__name__, reduction, np.max(np.abs(g[ok] - rg[ok])))


def test_threads_bitwise_and_workspace_reuse():
    rng = np.random.default_rng(5)
    z, tg, il, tl = problem(rng, 30, 9, 11)
    before = fusedrnn.get_num_threads()
    try:
        fusedrnn.set_num_threads(1)
        l1, g1 = ctc_logits(z, tg, il, tl, reduction="none")
        fusedrnn.set_num_threads(3)
        l3, g3 = ctc_logits(z, tg, il, tl, reduction="none")
        l3b, g3b = ctc_logits(z, tg, il, tl, reduction="none")   # the workspace reused
    finally:
        fusedrnn.set_num_threads(before)
    assert np.array_equal(l1, l3) and np.array_equal(g1, g3)
    assert np.array_equal(l3, l3b) and np.array_equal(g3, g3b)


def test_grad_false_and_out():
    rng = np.random.default_rng(6)
    # the loss without the gradient is the same bits as with it, for class counts that fill
    # whole packets or leave a tail (4 doubles with AVX2, 8 with AVX-512, 16 floats)
    for K in (3, 4, 5, 8, 13, 16, 21):
        for dt in (np.float64, np.float32):
            z, tg, il, tl = problem(rng, 8, 3, K)
            z = z.astype(dt)
            loss = ctc_logits(z, tg, il, tl)[0]
            assert ctc_logits(z, tg, il, tl, grad=False) == loss, (K, dt)
    z, tg, il, tl = problem(rng, 8, 3, 5)
    loss, g = ctc_logits(z, tg, il, tl)
    assert ctc_logits(z, tg, il, tl, grad=False) == loss
    out = np.full_like(z, 123.0)
    loss2, g2 = ctc_logits(z, tg, il, tl, out=out)
    assert g2 is out and np.array_equal(out, g) and loss2 == loss
    with pytest.raises(ValueError, match="out"):
        ctc_logits(z, tg, il, tl, out=np.zeros((8, 3, 4)))
    # out over the scores themselves: the kernel wrote gradient rows before reading later
    # frames (a wrong loss, 3.56 for 4.54); refused, as with the log_probs variant
    keep = z.copy()
    with pytest.raises(ValueError, match="out must not overlap logits"):
        ctc_logits(z, tg, il, tl, out=z)
    lp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    with pytest.raises(ValueError, match="out must not overlap log_probs"):
        ctc(lp, tg, il, tl, out=lp)
    np.testing.assert_array_equal(z, keep)


def test_losses_module_exports():
    assert fusedrnn.losses.ctc is ctc and fusedrnn.losses.ctc_logits is ctc_logits


def test_log_probs_gradient_is_minus_posteriors():
    """Each valid frame's posteriors sum to 1: the log_probs gradient sums to -1 per frame."""
    rng = np.random.default_rng(7)
    z, tg, il, tl = problem(rng, 12, 4, 6, lengths=[12, 9, 7, 10], tlens=[4, 3, 2, 0])
    _, g = ctc(log_softmax(z), tg, il, tl, reduction="sum")
    for n in range(4):
        assert np.allclose(g[:il[n], n].sum(-1), -1.0, atol=1e-12)
        assert np.all(g[il[n]:, n] == 0)


# -- 3. torch parity -----------------------------------------------------------------------------
torch = pytest.importorskip("torch")


def torch_ctc(z, targets, il, tl, blank, reduction, zero_infinity, through_softmax):
    """torch's loss and its gradient for the logits z (through log_softmax) or for log_probs z."""
    zt = torch.tensor(z, requires_grad=True)
    lp = torch.log_softmax(zt, -1) if through_softmax else zt
    loss = torch.nn.functional.ctc_loss(lp, torch.tensor(targets), torch.tensor(il),
                                        torch.tensor(tl), blank=blank, reduction=reduction,
                                        zero_infinity=zero_infinity)
    loss.sum().backward()
    return loss.detach().numpy(), zt.grad.numpy()


@pytest.mark.parametrize("case", CASES + [(40, 6, 12, None, None, 0, True),
                                          (25, 3, 9, [25, 25, 25], [12, 13, 0], 4, True)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_torch_parity_float64(case, reduction, zero_infinity):
    T, N, K, il, tl, blank, repeat = case
    rng = np.random.default_rng(T + 7 * N + K)
    z, tg, il, tl = problem(rng, T, N, K, il, tl, blank, repeat)
    tg_torch = np.where(tg < 0, 1 if blank != 1 else 2, tg)       # torch reads no padding either
    for targets in (tg_torch, concat(tg, tl)):
        tloss, tgz = torch_ctc(z, targets, il, tl, blank, reduction, zero_infinity, True)
        loss, gz = ctc_logits(z, targets, il, tl, blank, reduction, zero_infinity)
        np.testing.assert_allclose(loss, tloss, rtol=1e-10, atol=0)
        nan = np.isnan(tgz)
        assert np.array_equal(np.isnan(gz), nan)
        np.testing.assert_allclose(gz[~nan], tgz[~nan], rtol=0, atol=1e-10)
        # The log_probs variant: torch's gradient for a log_probs leaf is ctc_logits' gradient
        # at logits = log_probs; the true gradient (ours) chained through log_softmax gives it.
        lp = log_softmax(z)
        tloss2, tg2 = torch_ctc(lp, targets, il, tl, blank, reduction, zero_infinity, False)
        loss2, g2 = ctc(lp, targets, il, tl, blank, reduction, zero_infinity)
        np.testing.assert_allclose(loss2, tloss2, rtol=1e-10, atol=0)
        chained = g2 - np.exp(lp) * g2.sum(-1, keepdims=True)
        assert np.array_equal(np.isnan(chained), np.isnan(tg2))
        ok = ~np.isnan(tg2)
        np.testing.assert_allclose(chained[ok], tg2[ok], rtol=0, atol=1e-10)


def test_torch_parity_zero_input_length():
    """T_n = 0: loss 0 for an empty target, inf otherwise (torch's CPU kernel agrees)."""
    rng = np.random.default_rng(3)
    z, tg, il, tl = problem(rng, 5, 3, 4, lengths=[0, 0, 5], tlens=[0, 2, 2])
    tg = np.where(tg < 0, 1, tg)
    for zi in (False, True):
        loss, g = ctc_logits(z, tg, il, tl, reduction="none", zero_infinity=zi)
        tloss, tgz = torch_ctc(z, tg, il, tl, 0, "none", zi, True)
        np.testing.assert_allclose(loss, tloss, rtol=1e-10)
        assert loss[0] == 0 and (loss[1] == 0 if zi else math.isinf(loss[1]))
        assert np.all(g[:, :2] == 0)
        np.testing.assert_allclose(g[:, 2], tgz[:, 2], atol=1e-10)


def test_nan_score_gives_nan_as_torch():
    """A NaN on a sequence's frames makes its loss (and gradient) NaN, zero_infinity or not, as
    torch's ctc_loss does (it had given +inf, hidden as 0 by zero_infinity); a NaN past the
    sequence's input length is not read."""
    rng = np.random.default_rng(4)
    z, tg, il, tl = problem(rng, 6, 3, 5, lengths=[6, 6, 3], tlens=[2, 2, 1])
    tg = np.where(tg < 0, 1, tg)
    z[2, 0, 1] = np.nan
    z[4, 2, :] = np.nan            # past sequence 2's length
    for zi in (False, True):
        loss, g = ctc_logits(z, tg, il, tl, reduction="none", zero_infinity=zi)
        tloss, _ = torch_ctc(z, tg, il, tl, 0, "none", zi, True)
        assert np.isnan(loss[0]) and np.isnan(tloss[0]) and np.isnan(g[:, 0]).all()
        np.testing.assert_allclose(loss[1:], tloss[1:], rtol=1e-10)
        assert np.isfinite(g[:, 1:]).all()
        assert np.isnan(ctc_logits(z, tg, il, tl, zero_infinity=zi)[0])


def test_torch_parity_float32():
    rng = np.random.default_rng(4)
    z, tg, il, tl = problem(rng, 50, 8, 20, dtype=np.float32, repeat=True)
    tg = np.where(tg < 0, 1, tg)
    tloss, tgz = torch_ctc(z, tg, il, tl, 0, "mean", False, True)
    loss, gz = ctc_logits(z, tg, il, tl)
    loss64, g64 = ctc_logits(z.astype(np.float64), tg, il, tl)     # the float64 truth
    assert abs(loss - float(tloss)) < 1e-5 * abs(float(tloss))
    assert abs(loss - loss64) < 1e-5 * abs(loss64)
    # both float32 computations are as far from the float64 one (~6e-6 on gradients ~0.1)
    ours, theirs = np.max(np.abs(gz - g64)), np.max(np.abs(tgz - g64))
    assert ours < 2e-5 and ours < 2 * theirs, (ours, theirs)


# -- 4. bad input --------------------------------------------------------------------------------
def test_bad_input_names_the_argument():
    rng = np.random.default_rng(8)
    z, tg, il, tl = problem(rng, 6, 2, 4, lengths=[6, 5], tlens=[2, 1])
    tg = np.where(tg < 0, 1, tg)
    cases = [
        (dict(log_probs=z[:, :, :, None]), ValueError, "log_probs"),
        (dict(log_probs=z.astype(np.int64)), TypeError, "log_probs"),
        (dict(log_probs=np.asfortranarray(z)), ValueError, "C-contiguous"),
        (dict(input_lengths=[7, 5]), ValueError, "input_lengths"),
        (dict(input_lengths=[-1, 5]), ValueError, "input_lengths"),
        (dict(input_lengths=[6]), ValueError, "input_lengths"),
        (dict(input_lengths=[6.0, 5.0]), TypeError, "input_lengths"),
        (dict(target_lengths=[-1, 1]), ValueError, "target_lengths"),
        (dict(target_lengths=[5, 1]), ValueError, "targets"),
        (dict(targets=np.array([[1, 4], [2, 1]])), ValueError, "targets"),
        (dict(targets=np.array([[1, -1], [2, 1]])), ValueError, "targets"),
        (dict(targets=np.array([[1, 0], [2, 1]])), ValueError, "blank"),
        (dict(targets=np.array([1, 2, 3, 1])), ValueError, "targets"),
        (dict(targets=tg.astype(np.float64)), TypeError, "targets"),
        (dict(blank=4), ValueError, "blank"),
        (dict(blank=-1), ValueError, "blank"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(zero_infinity=1), TypeError, "zero_infinity"),
    ]
    for fn in (ctc, ctc_logits):
        for over, exc, word in cases:
            kw = dict(log_probs=z, targets=tg, input_lengths=il, target_lengths=tl, blank=0,
                      reduction="mean", zero_infinity=False)
            kw.update(over)
            args = [kw.pop("log_probs")]
            if word == "log_probs" and fn is ctc_logits:
                word = "logits"
            with pytest.raises(exc, match=word):
                fn(*args, **kw)
    # A padded entry past the target length may hold anything.
    tg2 = tg.copy()
    tg2[1, 1] = 99
    ctc(z, tg2, il, tl)


def test_core_rejects_bad_lengths_directly():
    """The C++ checks hold even when the Python checks are bypassed."""
    from fusedrnn import _core
    z = np.zeros((3, 1, 3))
    ws = np.zeros(_core.ctc_workspace_size(3, 1, 1))
    args = dict(tl=np.array([1]), il=np.array([4]))
    with pytest.raises(ValueError, match="input_lengths"):
        _core.ctc_loss((3, 1, 3), 1, 0, False, False, 0, z, np.array([1]), 0, args["il"],
                       args["tl"], None, np.zeros(1), None, ws)
    with pytest.raises(ValueError, match="targets"):
        _core.ctc_loss((3, 1, 3), 1, 0, False, False, 0, z, np.array([0]), 0, np.array([3]),
                       args["tl"], None, np.zeros(1), None, ws)


# -- 5. decoding ---------------------------------------------------------------------------------
def onehot_lp(paths, K, p=0.9):
    """log-probabilities [T, N, K] whose argmax path is paths[n]."""
    T, N = len(paths[0]), len(paths)
    x = np.full((T, N, K), (1 - p) / (K - 1))
    for n, path in enumerate(paths):
        for t, k in enumerate(path):
            x[t, n, k] = p
    return np.log(x)


def test_greedy_decode():
    lp = onehot_lp([[1, 1, 0, 1, 2, 2, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [3, 0, 3, 3, 1, 0, 1, 2]],
                   4)
    assert ctc_greedy_decode(lp) == [[1, 1, 2], [], [3, 3, 1, 1, 2]]
    assert ctc_greedy_decode(lp, [3, 8, 4]) == [[1], [], [3, 3]]
    assert ctc_greedy_decode(lp, blank=3)[2] == [0, 1, 0, 1, 2]


def test_beam_search_is_exact_with_a_wide_beam():
    rng = np.random.default_rng(9)
    T, K = 5, 3
    lp = log_softmax(rng.standard_normal((T, 2, K)) * 1.5)
    res = ctc_beam_search(lp, [5, 4], beam_width=10_000, top_paths=10_000)
    for n, Tn in enumerate([5, 4]):
        found = dict((tuple(p), s) for p, s in res[n])
        # every labelling of length <= Tn over labels {1, 2} with a feasible alignment
        for L in range(Tn + 1):
            for target in itertools.product([1, 2], repeat=L):
                need = L + sum(target[i] == target[i - 1] for i in range(1, L))
                if need > Tn:
                    continue
                tg = np.array([list(target) + [1] * (T - L)] * 2)
                loss = ctc(lp, tg, [Tn, Tn], [L, L], reduction="none", grad=False)[n]
                assert abs(found[target] - (-loss)) < 1e-10, (target, found[target], -loss)
        scores = [s for _, s in res[n]]
        assert scores == sorted(scores, reverse=True)


def test_beam_search_beats_greedy():
    """Two frames, labels {a=1}: greedy picks blank, blank (p = 0.36) but "a" has total
    probability 0.64 over its three alignments (a-, -a, aa) ."""
    p = np.array([[0.6, 0.4], [0.6, 0.4]])
    lp = np.log(p)[:, None, :]
    assert ctc_greedy_decode(lp) == [[]]
    (best, score), = ctc_beam_search(lp, beam_width=4)[0]
    assert best == [1] and abs(math.exp(score) - 0.64) < 1e-12
    # width 1 keeps only the most probable prefix after the first frame, the empty one
    assert ctc_beam_search(lp, beam_width=1)[0][0][0] == []


def test_beam_search_penalties():
    p = np.array([[0.7, 0.3], [0.7, 0.3], [0.7, 0.3]])
    lp = np.log(p)[:, None, :]
    assert ctc_beam_search(lp, beam_width=8)[0][0][0] == [1]    # 0.594 vs 0.343 for [] and 0.063 for [1, 1]
    assert ctc_beam_search(lp, beam_width=8, blank_penalty=-2.0)[0][0][0] == []
    assert ctc_beam_search(lp, beam_width=8, length_penalty=-1.0)[0][0][0] == []
    assert ctc_beam_search(lp, beam_width=8, blank_penalty=3.0)[0][0][0] == [1]
    # length bonus: "a a" (needs a blank between) gains over "a"
    lp2 = np.log(np.array([[0.2, 0.8], [0.6, 0.4], [0.2, 0.8]]))[:, None, :]
    assert ctc_beam_search(lp2, beam_width=8)[0][0][0] == [1]
    assert ctc_beam_search(lp2, beam_width=8, length_penalty=2.0)[0][0][0] == [1, 1]
    # prune keeps results equal when it cannot drop the winner
    rng = np.random.default_rng(10)
    lp3 = log_softmax(rng.standard_normal((12, 3, 6)) * 3)
    a = ctc_beam_search(lp3, beam_width=6)
    b = ctc_beam_search(lp3, beam_width=6, prune=50.0)
    assert a == b


def test_beam_search_bad_input():
    lp = np.zeros((3, 1, 3))
    for kw, word in ((dict(beam_width=0), "beam_width"), (dict(top_paths=0), "top_paths"),
                     (dict(blank_penalty=float("nan")), "blank_penalty"),
                     (dict(length_penalty="x"), "length_penalty"),
                     (dict(prune=-1.0), "prune"), (dict(blank=3), "blank"),
                     (dict(input_lengths=[4]), "input_lengths")):
        with pytest.raises(ValueError, match=word):
            ctc_beam_search(lp, **kw)
    with pytest.raises(ValueError, match="input_lengths"):
        ctc_greedy_decode(lp, [5])
