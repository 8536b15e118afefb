"""Attention (additive and multiplicative): finite differences in float64, masks, decoding path."""
import numpy as np
import pytest

from fusedrnn.attention import KINDS, Attention


def setup(kind, T=3, S=5, N=3, Hq=4, Hk=4, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    att = Attention(Hq, Hk, kind, attn_size=6 if kind == "bahdanau" else None, dtype=dtype,
                    seed=seed)
    q = rng.standard_normal((T, N, Hq)).astype(dtype)
    k = rng.standard_normal((S, N, Hk)).astype(dtype)
    lengths = np.array([S, 2, 1][:N] + [S] * max(0, N - 3))
    return att, q, k, lengths, rng


@pytest.mark.parametrize("kind", KINDS)
def test_finite_differences(kind):
    att, q, k, lengths, rng = setup(kind, Hk=4 if kind == "dot" else 5)
    r = rng.standard_normal((q.shape[0], q.shape[1], k.shape[2]))

    def loss():
        c, _ = att.forward(q, k, lengths)
        return float(np.sum(c * r))

    loss()
    att.zero_grad()
    dq, dk = att.backward(r)
    eps = 1e-6
    tensors = [("query", q, dq), ("keys", k, dk)] + \
        [(name, p.data, p.grad) for name, p in att.named_parameters()]
    for name, x, g in tensors:
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            lp = loss()
            x[idx] = old - eps
            lm = loss()
            x[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        assert np.max(np.abs(num - g)) < 1e-8, (kind, name, np.max(np.abs(num - g)))
    # keys past a source's length get no gradient and no weight
    assert np.all(dk[2:, 1] == 0) and np.all(dk[1:, 2] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_masks_and_weights(kind):
    att, q, k, lengths, _ = setup(kind, dtype=np.float32)
    c, w = att.forward(q, k, lengths)
    assert c.dtype == np.float32 and c.shape == (3, 3, 4) and w.shape == (3, 3, 5)
    assert np.allclose(w.sum(-1), 1, atol=1e-6)
    assert np.all(w[1, :, 2:] == 0) and np.all(w[2, :, 1:] == 0)
    np.testing.assert_allclose(c[:, 2], np.broadcast_to(k[0, 2], (3, 4)), rtol=1e-6)
    # padding values do not matter
    k2 = k.copy()
    k2[2:, 1] = 1e3
    k2[1:, 2] = np.nan
    c2, _ = att.forward(q, k2, lengths)
    np.testing.assert_array_equal(c2[:, 1:], c[:, 1:])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("full", [True, False])
def test_refilling_inputs_or_scaling_weights_changes_no_gradient(kind, full):
    # the returned weights and the caller's query / keys were the arrays backward read: a
    # plot's `w *= 100` moved d_query by 2e4, a refilled query buffer d_keys by 1.7
    att, q, k, lengths, rng = setup(kind, Hk=4 if kind == "dot" else 5)
    if full:
        lengths = np.full_like(lengths, k.shape[0])          # (no padding: keys not copied)
    r = rng.standard_normal((q.shape[0], q.shape[1], k.shape[2]))
    att.forward(q, k, lengths)
    want = att.backward(r)
    grads = [p.grad.copy() for p in att.parameters()]
    att.zero_grad()
    _, w = att.forward(q, k, lengths)
    w *= 100
    q[...] = rng.standard_normal(q.shape)
    k[...] = rng.standard_normal(k.shape)
    got = att.backward(r)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    for p, g in zip(att.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)


@pytest.mark.parametrize("kind", KINDS)
def test_step_by_step_equals_batched(kind):
    """Decoding attends one query at a time through prepare()'s memory (and its select)."""
    att, q, k, lengths, _ = setup(kind, T=4)
    att.eval()
    c, w = att.forward(q, k, lengths)
    mem = att.prepare(k, lengths)
    for t in range(4):
        ct, wt = att.forward(q[t:t + 1], memory=mem)
        np.testing.assert_allclose(ct[0], c[t], rtol=1e-13, atol=1e-14)
    sel = mem.select([2, 0, 0])
    ct, _ = att.forward(q[:1, [2, 0, 0]], memory=sel)
    np.testing.assert_allclose(ct[0], c[0, [2, 0, 0]], rtol=1e-13, atol=1e-14)


def test_bad_input():
    with pytest.raises(ValueError, match="kind"):
        Attention(4, 4, "concat")
    with pytest.raises(ValueError, match="query_size == key_size"):
        Attention(4, 5, "dot")
    att, q, k, lengths, _ = setup("general", Hk=4)
    with pytest.raises(ValueError, match="src_lengths"):
        att.forward(q, k, np.array([5, 0, 1]))
    with pytest.raises(ValueError, match="src_lengths"):
        att.forward(q, k, np.array([6, 1, 1]))
    with pytest.raises(ValueError, match="query"):
        att.forward(q[:, :2], k, lengths)
    with pytest.raises(TypeError, match="keys"):
        att.forward(q, k.astype(np.float32), lengths)
    with pytest.raises(RuntimeError, match="no training forward"):
        Attention(4, 4, "dot").backward(np.zeros((1, 1, 4)))


def test_memory_is_checked():
    """A memory is the keys projected with the preparing layer's weights: one from another
    layer (a "dot" memory given to a "general" layer of the same sizes: contexts 1.4 off), one
    prepared before the weights changed, or not a memory at all, is refused; d_context's dtype
    error is a TypeError naming the dtype."""
    att, q, k, lengths, _ = setup("general", Hk=4)
    other, *_ = setup("dot", Hk=4)
    mem = att.prepare(k, lengths)
    att.forward(q, memory=mem)
    att.forward(q, memory=mem.select([2, 0, 1]).select([1, 2, 0]))
    with pytest.raises(ValueError, match="prepared by another Attention layer"):
        att.forward(q, memory=other.prepare(k, lengths))
    with pytest.raises(TypeError, match="memory must be an AttentionMemory"):
        att.forward(q, memory=tuple(mem))
    import copy
    import pickle
    att.forward(q, memory=copy.deepcopy(mem))           # a copy still comes from this layer
    with pytest.raises(ValueError, match="or unpickled"):
        att.forward(q, memory=pickle.loads(pickle.dumps(mem)))
    att.weight.data = att.weight.data * 0.5
    with pytest.raises(ValueError, match="weights changed since memory was prepared"):
        att.forward(q, memory=mem)
    att.forward(q, memory=att.prepare(k, lengths))
    att.train()
    ctx, _ = att.forward(q, k, lengths)
    with pytest.raises(TypeError, match="d_context must have dtype"):
        att.backward(ctx.astype(np.float32))
