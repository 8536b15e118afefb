"""fusedrnn.compat.v1 against a NumPy transcription of TF1's rnn_cell_impl math (written here
from TF1's equations, independent of the facade's layout conversion), finite differences, and
bad input."""
import numpy as np
import pytest

from fusedrnn import Parameter, optim
from fusedrnn.compat import v1 as tf

rc = tf.nn.rnn_cell


def sig(z):
    return 1 / (1 + np.exp(-z))


# TF1's activations by name (tf.tanh, tf.nn.relu, tf.sigmoid, tf.nn.elu, tf.nn.softsign,
# tf.nn.relu6, tf.identity), written from their definitions
ACT = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "sigmoid": sig,
       "elu": lambda z: np.where(z > 0, z, np.exp(np.minimum(z, 0)) - 1),
       "softsign": lambda z: z / (1 + np.abs(z)), "relu6": lambda z: np.minimum(np.maximum(z, 0), 6),
       "identity": lambda z: z}


# -- TF1 rnn_cell_impl, transcribed ------------------------------------------------------------

def tf_step(cell, v, x, state, scope):
    """One TF1 step of a basic cell from its TF1 variables v (name -> array)."""
    p = f"{scope}/{cell._scope_name}/"
    act = ACT[cell._activation]
    if isinstance(cell, rc.BasicLSTMCell):
        c, h = (state.c, state.h) if cell._state_is_tuple else \
            (state[:, :cell._num_units], state[:, cell._num_units:])
        z = np.concatenate([x, h], 1) @ v[p + "kernel"] + v[p + "bias"]
        i, j, f, o = np.split(z, 4, axis=1)
        fb = cell._forget_bias
        if cell._peep:
            new_c = sig(f + fb + v[p + "w_f_diag"] * c) * c + \
                sig(i + v[p + "w_i_diag"] * c) * act(j)
        else:
            new_c = c * sig(f + fb) + sig(i) * act(j)
        if cell._cell_clip is not None:
            new_c = np.clip(new_c, -cell._cell_clip, cell._cell_clip)
        if cell._peep:
            m = sig(o + v[p + "w_o_diag"] * new_c) * act(new_c)
        else:
            m = act(new_c) * sig(o)
        if cell._num_proj:
            m = m @ v[p + "projection/kernel"]
            if cell._proj_clip is not None:
                m = np.clip(m, -cell._proj_clip, cell._proj_clip)
        new = rc.LSTMStateTuple(new_c, m) if cell._state_is_tuple else \
            np.concatenate([new_c, m], 1)
        return m, new
    if isinstance(cell, rc.GRUCell):
        g = sig(np.concatenate([x, state], 1) @ v[p + "gates/kernel"] + v[p + "gates/bias"])
        r, u = np.split(g, 2, axis=1)
        cand = act(np.concatenate([x, r * state], 1) @ v[p + "candidate/kernel"]
                   + v[p + "candidate/bias"])
        h = u * state + (1 - u) * cand
        return h, h
    z = np.concatenate([x, state], 1) @ v[p + "kernel"] + v[p + "bias"]
    h = act(z)
    return h, h


def _where(mask, new, old):
    if isinstance(new, tuple):
        return type(new)(*(_where(mask, a, b) for a, b in zip(new, old)))
    return np.where(mask[:, None], new, old)


def _drop_state(cell, new, masks, t):
    """TF1 DropoutWrapper's state dropout (default filter: h of an LSTMStateTuple, else the
    whole state); masks (h mask, c mask) [T or 1, N, width], drawn by the facade."""
    pick = lambda m: m[0 if m.shape[0] == 1 else t]  # noqa: E731
    mh, mc = masks
    if isinstance(new, rc.LSTMStateTuple):
        return rc.LSTMStateTuple(new.c, new.h * pick(mh))
    if mc is not None:   # concatenated LSTM state [c, h]
        H = cell._num_units
        return np.concatenate([new[:, :H] * pick(mc), new[:, H:] * pick(mh)], 1)
    return new * pick(mh)


def tf_dynamic_rnn(cells, v, x, lengths, states, scopes, reverse=False, state_masks=None):
    """TF1 dynamic_rnn of a stack (list of basic cells) on batch-major x; reverse as
    bidirectional_dynamic_rnn's bw (reverse_sequence by length, run, reverse back).
    state_masks: per cell None or the (h, c) masks of its DropoutWrapper's state dropout."""
    N, T, _ = x.shape
    lengths = np.full(N, T) if lengths is None else lengths
    if reverse:
        idx = np.array([[(lengths[n] - 1 - t) if t < lengths[n] else t for t in range(T)]
                        for n in range(N)])
        x = np.stack([x[n, idx[n]] for n in range(N)])
    inp, finals = x, []
    for k, (cell, st, scope) in enumerate(zip(cells, states, scopes)):
        outs = []
        for t in range(T):
            active = t < lengths
            o, new = tf_step(cell, v, inp[:, t], st, scope)
            if state_masks and state_masks[k] is not None:
                new = _drop_state(cell, new, state_masks[k], t)
            st = _where(active, new, st)
            outs.append(np.where(active[:, None], o, 0))
        inp = np.stack(outs, 1)
        finals.append(st)
    if reverse:
        inp = np.stack([inp[n, idx[n]] for n in range(N)])
    return inp, finals


def np_values(cell, scope="rnn"):
    return {k: p.data for k, p in cell.variables(scope).items()}


CELLS = {
    "basic_rnn": lambda: rc.BasicRNNCell(5, seed=1),
    "basic_rnn_relu": lambda: rc.BasicRNNCell(5, activation="relu", seed=1),
    "basic_lstm": lambda: rc.BasicLSTMCell(5, forget_bias=0.7, seed=1),
    "basic_lstm_concat": lambda: rc.BasicLSTMCell(5, state_is_tuple=False, seed=1),
    "lstm_peep_proj": lambda: rc.LSTMCell(5, use_peepholes=True, num_proj=3, seed=1),
    "lstm_peep": lambda: rc.LSTMCell(5, use_peepholes=True, forget_bias=0.0, seed=1),
    "gru": lambda: rc.GRUCell(5, seed=1),
    # cell_clip: the fused kernel's clip
    "lstm_cell_clip": lambda: rc.LSTMCell(5, use_peepholes=True, cell_clip=0.3, seed=1),
    "basic_lstm_clip_proj": lambda: rc.LSTMCell(5, num_proj=3, cell_clip=0.4, seed=1),
    # the step path (_steps): proj_clip and activations the kernels do not have
    "lstm_proj_clip": lambda: rc.LSTMCell(5, use_peepholes=True, num_proj=3, proj_clip=0.25,
                                          cell_clip=0.5, seed=1),
    "basic_lstm_relu": lambda: rc.BasicLSTMCell(5, activation="relu", forget_bias=0.3, seed=1),
    "basic_lstm_concat_softsign": lambda: rc.BasicLSTMCell(5, state_is_tuple=False,
                                                           activation="softsign", seed=1),
    "lstm_sigmoid": lambda: rc.LSTMCell(5, use_peepholes=True, activation="sigmoid", seed=1),
    "gru_elu": lambda: rc.GRUCell(5, activation="elu", seed=1),
    "gru_relu6": lambda: rc.GRUCell(5, activation="relu6", seed=1),
    "basic_rnn_softsign": lambda: rc.BasicRNNCell(5, activation="softsign", seed=1),
    "basic_rnn_identity": lambda: rc.BasicRNNCell(5, activation="identity", seed=1),
    # num_proj >= num_units (TF1 allows it; the kernels, like PyTorch, project to fewer units)
    "lstm_proj_wide": lambda: rc.LSTMCell(3, use_peepholes=True, num_proj=5, seed=1),
    "lstm_proj_equal": lambda: rc.LSTMCell(4, num_proj=4, cell_clip=0.5, seed=1),
}


def _randomise(cell, rng):
    for p in cell.parameters():
        p.data[...] = rng.standard_normal(p.data.shape) * 0.5
        p.changed()   # (a write in place: the cell reuses its converted weights without it)


@pytest.mark.parametrize("name", list(CELLS))
def test_dynamic_rnn_matches_tf1_math(name):
    rng = np.random.default_rng(0)
    cell = CELLS[name]()
    N, T, C = 4, 6, 3
    x = rng.standard_normal((N, T, C))
    lengths = np.array([6, 0, 3, 1])
    cell.build(C, np.float64)
    _randomise(cell, rng)
    init = cell.zero_state(N, np.float64)
    init = type(init)(*(rng.standard_normal(a.shape) for a in init)) \
        if isinstance(init, tuple) else rng.standard_normal(init.shape)
    out, state = tf.nn.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=init)
    ref, finals = tf_dynamic_rnn([cell], np_values(cell), x, lengths, [init], ["rnn"])
    np.testing.assert_allclose(out, ref, atol=1e-12)
    for a, b in zip(list(state) if isinstance(state, tuple) else [state],
                    list(finals[0]) if isinstance(finals[0], tuple) else [finals[0]]):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert (out[1] == 0).all() and (out[2, 3:] == 0).all()
    # one step by call equals TF1's step
    o, s = cell(x[:, 0], init)
    ro, rs = tf_step(cell, np_values(cell), x[:, 0], init, "rnn")
    np.testing.assert_allclose(o, ro, atol=1e-12)


def test_multi_rnn_cell_and_bidirectional_match_tf1_math():
    rng = np.random.default_rng(1)
    N, T, C = 3, 5, 4
    x = rng.standard_normal((N, T, C))
    lengths = np.array([5, 2, 4])
    cells = [rc.BasicLSTMCell(6, seed=1), rc.GRUCell(4, seed=2), rc.LSTMCell(5, num_proj=2,
                                                                          seed=3)]
    multi = rc.MultiRNNCell(cells)
    out, state = tf.nn.dynamic_rnn(multi, x, sequence_length=lengths, dtype=np.float64)
    for c in cells:
        _randomise(c, rng)
    out, state = tf.nn.dynamic_rnn(multi, x, sequence_length=lengths, dtype=np.float64)
    v = np_values(multi)
    assert "rnn/multi_rnn_cell/cell_1/gru_cell/candidate/kernel" in v
    zero = multi.zero_state(N, np.float64)
    ref, finals = tf_dynamic_rnn(cells, v, x, lengths, list(zero),
                                 [f"rnn/multi_rnn_cell/cell_{k}" for k in range(3)])
    np.testing.assert_allclose(out, ref, atol=1e-12)
    np.testing.assert_allclose(state[2].h, finals[2].h, atol=1e-12)
    np.testing.assert_allclose(state[1], finals[1], atol=1e-12)

    fw, bw = rc.GRUCell(3, seed=4), rc.BasicLSTMCell(3, seed=5)
    (o_fw, o_bw), (s_fw, s_bw) = tf.nn.bidirectional_dynamic_rnn(
        fw, bw, x, sequence_length=lengths, dtype=np.float64)
    r_fw, f_fw = tf_dynamic_rnn([fw], np_values(fw), x, lengths, [np.zeros((N, 3))], ["rnn"])
    r_bw, f_bw = tf_dynamic_rnn([bw], np_values(bw), x, lengths, [bw.zero_state(N, np.float64)],
                                ["rnn"], reverse=True)
    np.testing.assert_allclose(o_fw, r_fw, atol=1e-12)
    np.testing.assert_allclose(o_bw, r_bw, atol=1e-12)
    np.testing.assert_allclose(s_bw.h, f_bw[0].h, atol=1e-12)
    np.testing.assert_allclose(s_fw, f_fw[0], atol=1e-12)


@pytest.mark.parametrize("name", ["basic_lstm", "lstm_peep_proj", "gru", "basic_rnn",
                                  "lstm_cell_clip", "basic_lstm_clip_proj", "lstm_proj_clip",
                                  "basic_lstm_relu", "basic_lstm_concat_softsign",
                                  "lstm_sigmoid", "gru_elu", "basic_rnn_softsign"])
def test_gradients_by_finite_differences(name):
    rng = np.random.default_rng(2)
    inner = CELLS[name]()
    cell = rc.MultiRNNCell([inner, rc.GRUCell(2, seed=9)])
    N, T, C = 2, 4, 3
    x = rng.standard_normal((N, T, C))
    lengths = np.array([4, 2])
    tf.nn.dynamic_rnn(cell, x, sequence_length=lengths, dtype=np.float64)
    for p in cell.parameters():
        p.data[...] = rng.standard_normal(p.data.shape) * 0.5
        p.changed()
    init = cell.zero_state(N, np.float64)
    init = (type(init[0])(*(rng.standard_normal(a.shape) for a in init[0]))
            if isinstance(init[0], tuple) else rng.standard_normal(init[0].shape),
            rng.standard_normal(init[1].shape))
    w = rng.standard_normal((N, T, 2))
    w_state = rng.standard_normal((N, 2))

    def loss():
        out, st = tf.nn.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=init)
        return float((out * w).sum() + (st[1] * w_state).sum())

    cell.zero_grad()
    loss()
    d_init = cell.zero_state(N, np.float64)
    dx = cell.backward(w, (d_init[0], w_state))
    d0 = cell.d_initial_state
    eps = 1e-6

    def fd(arr, idx, param=None):
        # (param: the Parameter whose array `arr` is, told of each write in place)
        changed = param.changed if param is not None else lambda: None
        old = arr[idx]
        arr[idx] = old + eps
        changed()
        lp = loss()
        arr[idx] = old - eps
        changed()
        lm = loss()
        arr[idx] = old
        changed()
        return (lp - lm) / (2 * eps)

    for pname, p in cell.variables().items():
        g = p.grad.copy()
        for idx in [(0,) * p.data.ndim, tuple(s - 1 for s in p.data.shape),
                    tuple(s // 2 for s in p.data.shape)]:
            assert abs(fd(p.data, idx, p) - g[idx]) < 1e-7, pname
    for idx in [(0, 0, 0), (1, 1, 2), (1, 3, 1), (0, 3, 2)]:
        assert abs(fd(x, idx) - dx[idx]) < 1e-7
    assert dx[1, 3, 1] == 0  # past the length
    first = init[0].h if isinstance(init[0], tuple) else init[0]
    d_first = d0[0].h if isinstance(d0[0], tuple) else d0[0]
    assert abs(fd(first, (1, 0)) - d_first[1, 0]) < 1e-7
    assert abs(fd(init[1], (0, 1)) - d0[1][0, 1]) < 1e-7


def test_dropout_wrapper_trains_and_eval_is_deterministic():
    rng = np.random.default_rng(3)
    # (variational_recurrent needs dtype and, with input dropout, input_size: TF1's rule)
    cells = [rc.DropoutWrapper(rc.BasicLSTMCell(8, seed=k), input_keep_prob=0.8,
                               output_keep_prob=0.7, variational_recurrent=bool(k), seed=k,
                               input_size=(3, 8)[k], dtype=np.float32)
             for k in range(2)]
    cell = rc.MultiRNNCell(cells)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    out1, _ = tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
    out2, _ = tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
    assert not np.array_equal(out1, out2)
    assert list(cell.variables()) == [
        "rnn/multi_rnn_cell/cell_0/basic_lstm_cell/kernel",
        "rnn/multi_rnn_cell/cell_0/basic_lstm_cell/bias",
        "rnn/multi_rnn_cell/cell_1/basic_lstm_cell/kernel",
        "rnn/multi_rnn_cell/cell_1/basic_lstm_cell/bias"]
    # training reduces a loss
    target = rng.uniform(-0.5, 0.5, (4, 5, 8)).astype(np.float32)
    opt = optim.Adam(cell.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        out, _ = tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
        losses.append(float(((out - target) ** 2).mean()))
        cell.zero_grad()
        cell.backward(2 * (out - target) / out.size)
        opt.step()
    assert np.mean(losses[-5:]) < 0.85 * losses[0]
    cell.eval()
    a, _ = tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
    b, _ = tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
    np.testing.assert_array_equal(a, b)


def test_load_variables_builds_and_names():
    rng = np.random.default_rng(4)
    src = rc.MultiRNNCell([rc.LSTMCell(4, use_peepholes=True, num_proj=2, seed=0),
                           rc.GRUCell(3, seed=1)])
    x = rng.standard_normal((2, 3, 5))
    out, _ = tf.nn.dynamic_rnn(src, x, dtype=np.float64)
    arrays = {k: v.copy() for k, v in np_values(src).items()}
    assert "rnn/multi_rnn_cell/cell_0/lstm_cell/projection/kernel" in arrays
    assert arrays["rnn/multi_rnn_cell/cell_0/lstm_cell/kernel"].shape == (5 + 2, 16)
    dst = rc.MultiRNNCell([rc.LSTMCell(4, use_peepholes=True, num_proj=2),
                           rc.GRUCell(3)])
    dst.load_variables(arrays)
    got, _ = tf.nn.dynamic_rnn(dst, x, dtype=np.float64)
    np.testing.assert_array_equal(got, out)
    with pytest.raises(KeyError, match="missing"):
        rc.GRUCell(3).load_variables({}, scope="rnn")


def test_bad_input_names_the_argument():
    cell = rc.BasicLSTMCell(4)
    x = np.zeros((2, 3, 5), np.float32)
    with pytest.raises(ValueError, match="you must give a dtype"):
        tf.nn.dynamic_rnn(cell, x)
    with pytest.raises(ValueError, match=r"sequence_length must have shape \[batch_size\] = \[2\]"):
        tf.nn.dynamic_rnn(cell, x, sequence_length=[1, 2, 3], dtype=np.float32)
    with pytest.raises(ValueError, match="sequence_length must lie in"):
        tf.nn.dynamic_rnn(cell, x, sequence_length=[1, 4], dtype=np.float32)
    with pytest.raises(ValueError, match=r"initial_state must be an LSTMStateTuple"):
        tf.nn.dynamic_rnn(cell, x, initial_state=np.zeros((2, 8), np.float32))
    concat = rc.BasicLSTMCell(4, state_is_tuple=False)
    with pytest.raises(ValueError, match=r"initial_state must be one array \[N, 8\]"):
        tf.nn.dynamic_rnn(concat, x, initial_state=rc.LSTMStateTuple(
            np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)))
    with pytest.raises(ValueError, match=r"supports num_proj only with state_is_tuple=True "
                                         r"\(TF1.s concatenated state \[c, m\] with a "
                                         r"projection is not supported\)"):
        rc.LSTMCell(4, num_proj=2, state_is_tuple=False)
    multi = rc.MultiRNNCell([rc.GRUCell(3), rc.GRUCell(3)])
    with pytest.raises(ValueError, match="initial_state must be a tuple of 2 states"):
        tf.nn.dynamic_rnn(multi, x, initial_state=(np.zeros((2, 3), np.float32),))
    with pytest.raises(ValueError, match="state_keep_prob must be a number in"):
        rc.DropoutWrapper(rc.GRUCell(3), state_keep_prob=0.0)
    with pytest.raises(ValueError, match="dropout_state_filter_visitor is not supported"):
        rc.DropoutWrapper(rc.GRUCell(3), state_keep_prob=0.5,
                          dropout_state_filter_visitor=lambda s: True)
    for bad in (0.0, -1.0, float("inf"), "3"):
        with pytest.raises(ValueError, match="cell_clip must be None or a positive number"):
            rc.LSTMCell(4, cell_clip=bad)
        with pytest.raises(ValueError, match="proj_clip must be None or a positive number"):
            rc.LSTMCell(4, num_proj=2, proj_clip=bad)
    with pytest.raises(ValueError, match="activation must be one of tanh, relu"):
        rc.GRUCell(4, activation=lambda z: z ** 3)
    with pytest.raises(ValueError, match="activation must be one of"):
        rc.BasicLSTMCell(4, activation="swish")
    with pytest.raises(RuntimeError, match="no recorded call left to differentiate"):
        rc.GRUCell(3).backward(np.zeros((2, 3)))
    # d_output: checked against the output as the caller got it (batch-major here), before any
    # work: no cast, no transposed shape in the message
    gru = rc.GRUCell(3)
    y, _ = tf.nn.dynamic_rnn(gru, np.ones((2, 4, 5), np.float32), dtype=np.float32)
    with pytest.raises(TypeError, match=r"d_output must have dtype float32 \(the output's\), "
                                        r"got float64"):
        gru.backward(np.ones(y.shape))
    with pytest.raises(ValueError, match=r"d_output must have shape \[2, 4, 3\] \(the output's\), "
                                         r"got \[4, 2, 3\]"):
        gru.backward(np.ones((4, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"d_output must be a numpy array of shape \[2, 4, 3\]"):
        gru.backward(np.ones(y.shape, np.float32).tolist())
    assert gru.backward(np.ones(y.shape, np.float32)).shape == (2, 4, 5)


# -- the step path: state dropout, and agreement with the fused kernels ---------------------------

def _fixed_masks(wrapper, rng):
    """Replaces the wrapper's mask draws by a recorded sequence, replayed at every run (so a
    loss is a deterministic function for finite differences); returns the record."""
    drawn, pos = [], [0]

    def _mask(shape, dtype, keep):
        if keep >= 1:
            return None
        shape = (1,) + tuple(shape[1:]) if wrapper.variational_recurrent else tuple(shape)
        k = pos[0]
        pos[0] += 1
        if k == len(drawn):
            drawn.append(((rng.random(shape) < keep) / keep).astype(dtype))
        assert drawn[k].shape == shape
        return drawn[k]

    wrapper._mask = _mask
    return drawn, pos


def _state_dropout_stack(rng):
    inner = [rc.BasicLSTMCell(4, seed=1), rc.GRUCell(3, seed=2),
             rc.BasicLSTMCell(3, state_is_tuple=False, seed=3), rc.LSTMCell(4, num_proj=2,
                                                                           seed=4)]
    wrappers = [rc.DropoutWrapper(c, state_keep_prob=0.6, variational_recurrent=(k % 2 == 1),
                                  dtype=np.float64, seed=k) for k, c in enumerate(inner)]
    return inner, wrappers, rc.MultiRNNCell(wrappers)


@pytest.mark.parametrize("reverse", [False, True])
def test_state_dropout_matches_tf1_math(reverse):
    """DropoutWrapper(state_keep_prob < 1): the state each step passes on is dropped (h of an
    LSTMStateTuple, the whole concatenated state), the output is not; outputs and final states
    equal TF1's with the same masks, also with lengths and in reverse (bidirectional's bw)."""
    rng = np.random.default_rng(7)
    inner, wrappers, multi = _state_dropout_stack(rng)
    N, T, C = 3, 5, 4
    x = rng.standard_normal((N, T, C))
    lengths = np.array([5, 2, 4])
    records = [_fixed_masks(w, rng) for w in wrappers]
    tf.nn.dynamic_rnn(multi, x, sequence_length=lengths, dtype=np.float64)
    for c in inner:
        _randomise(c, rng)
    for _, pos in records:
        pos[0] = 0
    if reverse:
        other = rc.GRUCell(2, seed=9)
        (_, out), (_, state) = tf.nn.bidirectional_dynamic_rnn(
            other, multi, x, sequence_length=lengths, dtype=np.float64)
    else:
        out, state = tf.nn.dynamic_rnn(multi, x, sequence_length=lengths, dtype=np.float64)
    masks = []
    for (drawn, _), c in zip(records, inner):
        concat = isinstance(c, rc.BasicLSTMCell) and not c._state_is_tuple
        masks.append((drawn[0], drawn[1] if concat else None))
    ref, finals = tf_dynamic_rnn(inner, np_values(multi), x, lengths,
                                 list(multi.zero_state(N, np.float64)),
                                 [f"rnn/multi_rnn_cell/cell_{k}" for k in range(4)],
                                 reverse=reverse, state_masks=masks)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    for got, want in zip(state, finals):
        for a, b in zip(got if isinstance(got, tuple) else [got],
                        want if isinstance(want, tuple) else [want]):
            np.testing.assert_allclose(a, b, atol=1e-12)
    # a dropped state really differs from the undropped run (eval mode: no dropout)
    multi.eval()
    out_eval, _ = tf.nn.dynamic_rnn(multi, x, sequence_length=lengths, dtype=np.float64)
    assert not np.allclose(out_eval, out)


def test_state_dropout_gradients_by_finite_differences():
    rng = np.random.default_rng(8)
    inner, wrappers, multi = _state_dropout_stack(rng)
    N, T, C = 2, 4, 3
    x = rng.standard_normal((N, T, C))
    lengths = np.array([4, 3])
    records = [_fixed_masks(w, rng) for w in wrappers]
    tf.nn.dynamic_rnn(multi, x, sequence_length=lengths, dtype=np.float64)
    for c in inner:
        _randomise(c, rng)
    init = multi.zero_state(N, np.float64)
    init = tuple(type(s)(*(rng.standard_normal(a.shape) for a in s)) if isinstance(s, tuple)
                 else rng.standard_normal(s.shape) for s in init)
    w_out = rng.standard_normal((N, T, 2))
    w_state = rng.standard_normal((N, 2))

    def loss():
        for _, pos in records:
            pos[0] = 0
        out, st = tf.nn.dynamic_rnn(multi, x, sequence_length=lengths, initial_state=init)
        return float((out * w_out).sum() + (st[3].h * w_state).sum())

    multi.zero_grad()
    loss()
    d_state = tuple(type(s)(*(np.zeros_like(a) for a in s)) if isinstance(s, tuple)
                    else np.zeros_like(s) for s in init)
    d_state = d_state[:3] + (rc.LSTMStateTuple(d_state[3].c, w_state),)
    dx = multi.backward(w_out, d_state)
    d0 = multi.d_initial_state
    eps = 1e-6

    def fd(arr, idx, param=None):
        # (param: the Parameter whose array `arr` is, told of each write in place)
        changed = param.changed if param is not None else lambda: None
        old = arr[idx]
        arr[idx] = old + eps
        changed()
        lp = loss()
        arr[idx] = old - eps
        changed()
        lm = loss()
        arr[idx] = old
        changed()
        return (lp - lm) / (2 * eps)

    for pname, p in multi.variables().items():
        g = p.grad.copy()
        for idx in [(0,) * p.data.ndim, tuple(s - 1 for s in p.data.shape),
                    tuple(s // 2 for s in p.data.shape)]:
            assert abs(fd(p.data, idx, p) - g[idx]) < 1e-7, pname
    for idx in [(0, 0, 0), (1, 1, 2), (0, 3, 1)]:
        assert abs(fd(x, idx) - dx[idx]) < 1e-7
    assert abs(fd(init[0].h, (1, 2)) - d0[0].h[1, 2]) < 1e-7
    assert abs(fd(init[0].c, (0, 1)) - d0[0].c[0, 1]) < 1e-7
    assert abs(fd(init[1], (1, 0)) - d0[1][1, 0]) < 1e-7
    assert abs(fd(init[2], (0, 4)) - d0[2][0, 4]) < 1e-7


@pytest.mark.parametrize("name", ["basic_lstm", "lstm_peep_proj", "lstm_cell_clip", "gru",
                                  "basic_rnn", "basic_rnn_relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_step_path_equals_the_fused_kernels(name, reverse):
    """The step path (_steps) computes what the fused kernels compute, where both can: forced
    onto it, a tanh cell gives the kernel's outputs, states and gradients (1e-12, float64)."""
    rng = np.random.default_rng(9)
    N, T, C = 3, 5, 4
    x = rng.standard_normal((N, T, C))
    lengths = np.array([5, 0, 3])
    runs = []
    for fused in (True, False):
        cell = CELLS[name]()
        cell.build(C, np.float64)
        _randomise(cell, np.random.default_rng(10))
        if not fused:
            cell._fused = lambda: False
        other = rc.GRUCell(2, seed=1)
        if reverse:
            (_, out), (_, st) = tf.nn.bidirectional_dynamic_rnn(
                other, cell, x, sequence_length=lengths, dtype=np.float64)
        else:
            out, st = tf.nn.dynamic_rnn(cell, x, sequence_length=lengths, dtype=np.float64)
        dy = np.random.default_rng(11).standard_normal(out.shape)
        dx = cell.backward(dy)
        runs.append((out, st, dx, [p.grad.copy() for p in cell.parameters()]))
    (o1, s1, d1, g1), (o2, s2, d2, g2) = runs
    np.testing.assert_allclose(o2, o1, atol=1e-12)
    for a, b in zip(s1 if isinstance(s1, tuple) else [s1], s2 if isinstance(s2, tuple) else [s2]):
        np.testing.assert_allclose(b, a, atol=1e-12)
    np.testing.assert_allclose(d2, d1, atol=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, atol=1e-12)


def test_activation_callables_by_name():
    assert rc.GRUCell(3, activation=np.tanh)._activation == "tanh"
    assert rc.BasicRNNCell(3, activation="relu")._fused()
    assert not rc.GRUCell(3, activation="relu")._fused()
    assert rc.LSTMCell(3, cell_clip=1.0)._fused()
    assert not rc.LSTMCell(3, num_proj=2, proj_clip=1.0)._fused()
    assert rc.LSTMCell(3, num_proj=2)._fused() and not rc.LSTMCell(3, num_proj=3)._fused()
    assert rc.LSTMCell(3, proj_clip=1.0)._proj_clip is None    # TF1 ignores it without num_proj


# -- probes of session 18: TF1's variational dropout, checks before work, the tape, names -----

def _constant_rnn(wrapper, inner, C, dt=np.float64):
    """inner: a BasicRNNCell(identity) whose output is 1 everywhere before dropout."""
    inner.build(C, dt)
    inner.kernel.data[...] = 0
    inner.bias.data[...] = 1.0
    inner.kernel.changed(), inner.bias.changed()
    return wrapper


def test_variational_dropout_is_one_mask_per_run_shared_by_the_batch():
    N, C, H = 6, 4, 40
    inner = rc.BasicRNNCell(H, activation="identity", seed=0)
    w = _constant_rnn(rc.DropoutWrapper(inner, output_keep_prob=0.5, variational_recurrent=True,
                                        dtype=np.float64, seed=1), inner, C)
    # a manual step loop keeps its masks from one zero_state() to the next
    s = w.zero_state(N, np.float64)
    pats = []
    for _ in range(4):
        y, s = w(np.zeros((N, C)), s)
        pats.append(y != 0)
    for p in pats:
        np.testing.assert_array_equal(p, pats[0])
    assert (pats[0] == pats[0][0]).all()               # TF1's noise shape [1, size]
    assert 0 < pats[0][0].sum() < H
    s = w.zero_state(N, np.float64)                     # a new sequence: new masks
    y, s = w(np.zeros((N, C)), s)
    assert not np.array_equal(y != 0, pats[0])
    # dynamic_rnn: one mask for every step and row of the call, a new one per call
    out, _ = tf.nn.dynamic_rnn(w, np.zeros((N, 5, C)), dtype=np.float64)
    keep = out != 0
    assert (keep == keep[0, 0]).all()
    out2, _ = tf.nn.dynamic_rnn(w, np.zeros((N, 5, C)), dtype=np.float64)
    assert not np.array_equal(out2 != 0, keep)
    # not variational: masks differ between rows and steps
    inner2 = rc.BasicRNNCell(H, activation="identity", seed=0)
    w2 = _constant_rnn(rc.DropoutWrapper(inner2, output_keep_prob=0.5, seed=1), inner2, C)
    out, _ = tf.nn.dynamic_rnn(w2, np.zeros((N, 5, C)), dtype=np.float64)
    assert not ((out != 0) == (out[:1, :1] != 0)).all()


def test_variational_dropout_arguments_are_tf1s():
    with pytest.raises(ValueError, match="When variational_recurrent=True, dtype must be "
                                         "provided"):
        rc.DropoutWrapper(rc.GRUCell(3), output_keep_prob=0.5, variational_recurrent=True)
    with pytest.raises(ValueError, match="input_keep_prob < 1.0, input_size must be provided"):
        rc.DropoutWrapper(rc.GRUCell(3), input_keep_prob=0.5, variational_recurrent=True,
                          dtype=np.float32)
    x = np.ones((2, 4, 5), np.float32)
    w = rc.DropoutWrapper(rc.GRUCell(3), input_keep_prob=0.5, variational_recurrent=True,
                          input_size=7, dtype=np.float32)
    with pytest.raises(ValueError, match=r"inputs must have depth 7 \(the DropoutWrapper's "
                                         r"input_size=\), got 5"):
        tf.nn.dynamic_rnn(w, x, dtype=np.float32)
    assert w.cell._built is None                         # refused before any work
    w = rc.DropoutWrapper(rc.GRUCell(3), output_keep_prob=0.5, variational_recurrent=True,
                          dtype=np.float64)
    with pytest.raises(TypeError, match=r"inputs must have dtype float64 \(the DropoutWrapper's "
                                        r"dtype=\), got float32"):
        tf.nn.dynamic_rnn(w, x, dtype=np.float32)
    w = rc.DropoutWrapper(rc.GRUCell(3), input_keep_prob=0.5, variational_recurrent=True,
                          input_size=5, dtype=np.float32)
    y, _ = tf.nn.dynamic_rnn(w, x, dtype=np.float32)
    assert y.shape == (2, 4, 3)


def test_errors_come_before_any_work():
    rng = np.random.default_rng(0)
    cell = rc.MultiRNNCell([rc.GRUCell(3, seed=0), rc.GRUCell(4, seed=1)])
    x = rng.standard_normal((2, 5, 6)).astype(np.float32)
    good = (np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    out, _ = tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
    d_out = np.ones_like(out)
    cell.zero_grad()
    cell.backward(d_out, good)
    g_ref = cell.cell_1.gates_kernel.grad.copy()
    tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
    cell.zero_grad()
    with pytest.raises(TypeError, match=r"d_state must have dtype float32, got float64"):
        cell.backward(d_out, (np.zeros((2, 3), np.float64), good[1]))   # layer 0's, bad
    assert not cell.cell_1.gates_kernel.grad.any()        # layer 1 did not run
    cell.backward(d_out, good)                            # the call is still there, once
    np.testing.assert_array_equal(cell.cell_1.gates_kernel.grad, g_ref)
    # forward: layer 1's bad initial state -> layer 0 neither built nor run
    c2 = rc.MultiRNNCell([rc.GRUCell(3, seed=0), rc.GRUCell(4, seed=1)])
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 4\], got \[2, 5\]"):
        tf.nn.dynamic_rnn(c2, x, initial_state=(good[0], np.zeros((2, 5), np.float32)))
    assert c2.cell_0._built is None and c2.cell_1._built is None
    # the step's argument is `state`
    with pytest.raises(ValueError, match=r"MultiRNNCell.__call__: state must be a tuple of 2"):
        c2(x[:, 0], good[0])
    # bidirectional: cell_bw and initial_state_bw are checked before the forward direction runs
    fw = rc.GRUCell(3, seed=0)
    with pytest.raises(TypeError, match="cell_bw must be a fusedrnn.compat.v1 cell"):
        tf.nn.bidirectional_dynamic_rnn(fw, object(), x, dtype=np.float32)
    with pytest.raises(ValueError, match=r"initial_state_bw must have shape \[2, 3\]"):
        tf.nn.bidirectional_dynamic_rnn(fw, rc.GRUCell(3), x, initial_state_fw=good[0],
                                        initial_state_bw=np.zeros((2, 4), np.float32))
    assert fw._built is None and not fw._tape


def test_backward_consumes_its_call_and_step_loops_backpropagate():
    """cell(x_t, s) in a loop, then backward once per step in reverse (the later step's
    d_initial_state as d_state): the gradients of dynamic_rnn over the same sequence. A second
    backward of a call raises."""
    rng = np.random.default_rng(0)
    N, T, C = 2, 4, 3
    x = rng.standard_normal((N, T, C))
    for make in (lambda: rc.GRUCell(5, seed=0),
                 lambda: rc.MultiRNNCell([rc.LSTMCell(4, use_peepholes=True, seed=0),
                                          rc.BasicRNNCell(3, activation="relu", seed=1)]),
                 lambda: rc.LSTMCell(4, num_proj=2, proj_clip=0.5, seed=2)):
        cell = make()
        out, _ = tf.nn.dynamic_rnn(cell, x, dtype=np.float64)
        d = rng.standard_normal(out.shape)
        cell.zero_grad()
        dx_ref = cell.backward(d)
        g_ref = [p.grad.copy() for p in cell.parameters()]
        with pytest.raises(RuntimeError, match="no recorded call left to differentiate"):
            cell.backward(d)
        cell.zero_grad()
        s = cell.zero_state(N, np.float64)
        for t in range(T):
            _, s = cell(x[:, t], s)
        ds, dxs = None, []
        for t in reversed(range(T)):
            dxs.append(cell.backward(d[:, t], ds))
            ds = cell.d_initial_state
        with pytest.raises(RuntimeError, match="no recorded call left to differentiate"):
            cell.backward(d[:, 0], ds)
        np.testing.assert_allclose(np.stack(dxs[::-1], 1), dx_ref, atol=1e-12)
        for p, g in zip(cell.parameters(), g_ref):
            np.testing.assert_allclose(p.grad, g, atol=1e-12)


def test_the_inputs_are_copied_for_backward():
    rng = np.random.default_rng(1)
    for make in (lambda: rc.GRUCell(4, seed=0), lambda: rc.BasicRNNCell(4, seed=0),
                 lambda: rc.LSTMCell(4, use_peepholes=True, seed=0)):
        for api in ("time_major", "step"):
            grads = []
            for refill in (False, True):
                cell = make()
                x = rng.standard_normal((5, 3, 6)) if not refill else x0.copy()
                x0 = x.copy()
                if api == "step":
                    y, _ = cell(x[0], cell.zero_state(3, np.float64))
                else:
                    y, _ = tf.nn.dynamic_rnn(cell, x, dtype=np.float64, time_major=True)
                if refill:
                    x[...] = 7.0
                cell.backward(np.ones_like(y))
                grads.append([p.grad.copy() for p in cell.parameters()])
            for a, b in zip(*grads):
                np.testing.assert_array_equal(a, b)


def test_name_and_initializers():
    x = np.ones((2, 3, 5), np.float32)
    cell = rc.LSTMCell(4, name="enc", use_peepholes=True)
    tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
    assert list(cell.variables()) == ["rnn/enc/kernel", "rnn/enc/bias", "rnn/enc/w_f_diag",
                                      "rnn/enc/w_i_diag", "rnn/enc/w_o_diag"]
    multi = rc.MultiRNNCell([rc.GRUCell(3, name="g"), rc.BasicRNNCell(2, name="top/r")])
    ckpt = {"rnn/multi_rnn_cell/cell_0/g/gates/kernel": np.zeros((8, 6), np.float32),
            "rnn/multi_rnn_cell/cell_0/g/gates/bias": np.zeros(6, np.float32),
            "rnn/multi_rnn_cell/cell_0/g/candidate/kernel": np.zeros((8, 3), np.float32),
            "rnn/multi_rnn_cell/cell_0/g/candidate/bias": np.zeros(3, np.float32),
            "rnn/multi_rnn_cell/cell_1/top/r/kernel": np.ones((5, 2), np.float32),
            "rnn/multi_rnn_cell/cell_1/top/r/bias": np.ones(2, np.float32)}
    multi.load_variables(ckpt)
    assert multi.cell_1.kernel.data.sum() == 10
    for bad in ("", "/x", 3):
        with pytest.raises((TypeError, ValueError), match="name must be"):
            rc.GRUCell(3, name=bad)
    seen = []

    def init(shape, dtype):
        seen.append(tuple(shape))
        return np.full(shape, 0.25, dtype)

    g = rc.GRUCell(3, kernel_initializer=init, bias_initializer=lambda s, d: np.zeros(s, d))
    tf.nn.dynamic_rnn(g, x, dtype=np.float32)
    assert (g.gates_kernel.data == 0.25).all() and (g.candidate_kernel.data == 0.25).all()
    assert not g.gates_bias.data.any() and not g.candidate_bias.data.any()
    lc = rc.LSTMCell(3, initializer=init, num_proj=2, use_peepholes=True)
    tf.nn.dynamic_rnn(lc, x, dtype=np.float32)
    assert (lc.kernel.data == 0.25).all() and (lc.projection_kernel.data == 0.25).all()
    assert (lc.w_i_diag.data == 0.25).all() and not lc.bias.data.any()
    for bad in ("zeros", 0.0, np.zeros):
        with pytest.raises(TypeError, match="kernel_initializer must be None or a callable"):
            rc.GRUCell(3, kernel_initializer=bad if bad is not np.zeros else 1)
        with pytest.raises(TypeError, match="initializer must be None or a callable"):
            rc.LSTMCell(3, initializer=bad if bad is not np.zeros else [1])
    wrong = rc.GRUCell(3, bias_initializer=lambda s, d: np.zeros(s))   # float64 for float32
    with pytest.raises(TypeError, match=r"bias_initializer must return an array of dtype "
                                        r"float32"):
        tf.nn.dynamic_rnn(wrong, x, dtype=np.float32)
    assert wrong._built is None and not list(wrong.parameters())
    with pytest.raises(ValueError, match=r"kernel_initializer must return an array of shape"):
        tf.nn.dynamic_rnn(rc.GRUCell(3, kernel_initializer=lambda s, d: np.zeros(3, d)), x,
                          dtype=np.float32)


def test_a_fresh_cell_loads_a_state_dict(tmp_path):
    import fusedrnn
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)

    def make():
        return rc.MultiRNNCell([rc.LSTMCell(4, use_peepholes=True, num_proj=2),
                                rc.DropoutWrapper(rc.GRUCell(3), output_keep_prob=0.5)])

    src = make()
    src.eval()
    out, _ = tf.nn.dynamic_rnn(src, x, dtype=np.float32)
    dst = make().eval()
    dst.load_state_dict(src.state_dict())
    np.testing.assert_array_equal(tf.nn.dynamic_rnn(dst, x, dtype=np.float32)[0], out)
    fusedrnn.io.save(tmp_path / "m.safetensors", src)
    dst = make().eval()
    fusedrnn.io.load(tmp_path / "m.safetensors", dst)
    np.testing.assert_array_equal(tf.nn.dynamic_rnn(dst, x, dtype=np.float32)[0], out)
    # a refused load leaves the fresh cell unbuilt
    sd = dict(src.state_dict())
    sd["cell_1.cell.candidate_bias"] = sd["cell_1.cell.candidate_bias"].astype(np.float64)
    dst = make()
    with pytest.raises(TypeError, match="cell_1.cell.candidate_bias must have dtype float32"):
        dst.load_state_dict(sd)
    assert dst.cell_0._built is None and not list(dst.parameters())
    del sd["cell_0.kernel"]
    with pytest.raises(KeyError, match=r"missing cell_0.kernel \(the kernel of a LSTMCell"):
        make().load_state_dict(sd)


def test_load_variables_casts_nothing():
    cell = rc.BasicLSTMCell(5)
    tf.nn.dynamic_rnn(cell, np.zeros((2, 3, 4), np.float32), dtype=np.float32)
    before = {k: p.data.copy() for k, p in cell.variables().items()}
    for make in (lambda s: np.full(s, 1 + 2.0 ** -40), lambda s: np.ones(s, bool),
                 lambda s: np.full(s, "1.5")):
        arrays = {k: make(v.shape) for k, v in before.items()}
        arrays["rnn/basic_lstm_cell/bias"] = np.ones(20, np.float32)    # one good array
        with pytest.raises(TypeError, match=r"load_variables: rnn/basic_lstm_cell/kernel must "
                                            r"have dtype float32 \(the cell's\)"):
            cell.load_variables(arrays)
        for k, p in cell.variables().items():   # nothing copied, not even the good one
            np.testing.assert_array_equal(p.data, before[k])
    fresh = rc.BasicLSTMCell(5)
    with pytest.raises(TypeError, match="kernel must be float32 or float64, got bool"):
        fresh.load_variables({"rnn/basic_lstm_cell/kernel": np.ones((9, 20), bool),
                              "rnn/basic_lstm_cell/bias": np.ones(20, bool)})
    typed = rc.BasicLSTMCell(5, dtype=np.float32)
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        typed.load_variables({"rnn/basic_lstm_cell/kernel": np.ones((9, 20), np.float32),
                              "rnn/basic_lstm_cell/bias": np.ones(20)})
    assert typed._built is None


def test_custom_cells_and_list_states():
    class MyCell(rc.RNNCell):
        @property
        def state_size(self):
            return 3

        def call(self, inputs, state):
            return state, state

    c = MyCell()
    for call in (lambda: c.zero_state(2, np.float32),
                 lambda: tf.nn.dynamic_rnn(c, np.ones((2, 4, 3), np.float32), dtype=np.float32),
                 lambda: rc.MultiRNNCell([c]), lambda: rc.DropoutWrapper(c)):
        with pytest.raises(TypeError, match="custom subclasses of rnn_cell.RNNCell are not "
                                            "supported"):
            call()
    # TF1's nest takes lists as states: [c, h], and a list of layer states
    multi = rc.MultiRNNCell([rc.BasicLSTMCell(3, seed=0), rc.GRUCell(2, seed=1)])
    x = np.random.default_rng(0).standard_normal((2, 4, 5))
    z = multi.zero_state(2, np.float64)
    a, sa = tf.nn.dynamic_rnn(multi, x, initial_state=z)
    b, sb = tf.nn.dynamic_rnn(multi, x, initial_state=[list(z[0]), z[1]])
    np.testing.assert_array_equal(a, b)


def test_a_step_from_zero_state_starts_a_new_sequence():
    """Cells start in train mode and record every call for backward; a TF1 sampling loop never
    calls backward, so the record grew by a step's copies at every step (5 GB after 3000 steps
    at H = 256). A step from state=None or from the arrays zero_state() returned starts a new
    sequence and drops the calls not differentiated; zero_state() itself keeps them (it may
    make a zero gradient while backpropagating)."""
    cell = rc.MultiRNNCell([rc.BasicLSTMCell(4, seed=1), rc.GRUCell(3, seed=2)])
    x = np.ones((2, 5), np.float32)
    for _ in range(4):
        s = cell.zero_state(2, np.float32)
        for _ in range(6):
            _, s = cell(x, s)
    assert len(cell._tape) == 6
    cell.zero_state(2, np.float32)            # kept: backward may still follow
    assert len(cell._tape) == 6
    cell(x, None)
    assert len(cell._tape) == 1
    out, s = cell(x, s)
    d_s = cell.zero_state(2, np.float32)      # a zero gradient, as the FD test makes one
    cell.backward(np.ones_like(out), d_s)
    assert len(cell._tape) == 1


# -- session 19: the variables' conversion to the kernels' layout is kept, never stale -------

# cells covering every conversion: kernel and bias of each kind (forget_bias folded in), the
# peepholes, the projection, GRU's two kernels and biases, and the step path (_steps)
_KEPT = {
    "basic_rnn": lambda: rc.BasicRNNCell(5, seed=1),
    "basic_lstm": lambda: rc.BasicLSTMCell(5, forget_bias=0.7, seed=1),
    "lstm_peep_proj": lambda: rc.LSTMCell(5, use_peepholes=True, num_proj=3, cell_clip=0.6,
                                          seed=1),
    "gru": lambda: rc.GRUCell(5, seed=1),
    "lstm_proj_clip_steps": lambda: rc.LSTMCell(5, use_peepholes=True, num_proj=3,
                                                proj_clip=0.25, seed=1),
    "gru_elu_steps": lambda: rc.GRUCell(5, activation="elu", seed=1),
}


def _attr_of(cell, p):
    return next(k for k, q in cell._parameters.items() if q is p)


def _route(route, cell, name, rng, tmp_path):
    """Changes the variable `name` of the (basic) cell by `route`, as a user would."""
    p = cell.variables()[name]
    new = rng.standard_normal(p.data.shape) * 0.5
    if route == "assign_parameter":        # cell.kernel = Parameter(...)
        setattr(cell, _attr_of(cell, p), Parameter(new.copy()))
    elif route == "assign_array":          # cell.kernel = array (copied into the Parameter)
        setattr(cell, _attr_of(cell, p), new)
    elif route == "assign_data":           # p.data = array
        p.data = new.copy()
    elif route == "augmented":             # p.data -= ... (the same array, assigned)
        p.data -= new
    elif route == "in_place_changed":      # a write into the array, announced
        p.data[...] = new
        p.changed()
    elif route == "load_variables":
        arrays = {k: q.data.copy() for k, q in cell.variables().items()}
        arrays[name] = new
        cell.load_variables(arrays)
    elif route == "checkpoint":            # a TF1 checkpoint, through load_checkpoint
        from test_compat_checkpoint import write_checkpoint
        arrays = {k: q.data.copy() for k, q in cell.variables().items()}
        arrays[name] = new
        write_checkpoint(tmp_path / "model.ckpt", arrays)
        cell.load_variables(tf.load_checkpoint(tmp_path / "model.ckpt"))
    elif route == "load_state_dict":
        sd = cell.state_dict()
        sd[_attr_of(cell, p)] = new
        cell.load_state_dict(sd)
    elif route == "io_load":               # fusedrnn.io.save / load of the Module
        import fusedrnn.io
        before = p.data.copy()
        p.data[...] = new
        fusedrnn.io.save(tmp_path / "cell.frnn", cell)
        p.data[...] = before                # (unannounced, undone: the file holds `new`)
        fusedrnn.io.load(tmp_path / "cell.frnn", cell)
    elif route in ("sgd", "adam"):         # an optimiser step on the cell's gradients
        cell.zero_grad()
        p.grad[...] = new
        opt = optim.SGD([p], lr=0.5) if route == "sgd" else optim.Adam([p], lr=0.1)
        opt.step()
    else:
        raise AssertionError(route)


_ROUTES = ["assign_parameter", "assign_array", "assign_data", "augmented", "in_place_changed",
           "load_variables", "checkpoint", "load_state_dict", "io_load", "sgd", "adam"]


def _fresh_copy(make, cell, C):
    """A new cell of `make` holding copies of `cell`'s variables now."""
    fresh = make()
    fresh.load_variables({k: p.data.copy() for k, p in cell.variables().items()})
    return fresh


@pytest.mark.parametrize("route", _ROUTES)
@pytest.mark.parametrize("name", list(_KEPT))
def test_a_change_of_the_variables_is_seen_by_every_route(name, route, tmp_path):
    """A loop of steps (and dynamic_rnn) reuses the variables converted to the kernels' layout
    (a step loop converted the kernel at every step: 94% of its time at H = 256); whichever
    way a user changes a variable between two steps, the next step computes with the new
    values: each step and each dynamic_rnn equals a fresh cell's holding the same variables."""
    rng = np.random.default_rng(7)
    N, T, C = 3, 4, 2
    xs = rng.standard_normal((N, T, C))
    make = _KEPT[name]
    cell = make()
    cell.build(C, np.float64)
    for vname in list(cell.variables()):
        cell.train()
        s = cell.zero_state(N, np.float64)
        for t in range(2):                  # (converted at the first step, kept at the second)
            _, s = cell(xs[:, t], s)
        tf.nn.dynamic_rnn(cell, xs, dtype=np.float64)
        _route(route, cell, vname, rng, tmp_path)
        fresh = _fresh_copy(make, cell, C)
        y, s2 = cell(xs[:, 2], s)
        y_ref, s2_ref = fresh(xs[:, 2], s)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"{route} of {vname}")
        for a, b in zip(_leaves_of(s2), _leaves_of(s2_ref)):
            np.testing.assert_array_equal(a, b, err_msg=f"{route} of {vname}")
        # and dynamic_rnn after a change, with the steps' conversion kept before it
        _route(route, cell, vname, rng, tmp_path)
        fresh = _fresh_copy(make, cell, C)
        out, _ = tf.nn.dynamic_rnn(cell, xs, dtype=np.float64)
        ref, _ = tf.nn.dynamic_rnn(fresh, xs, dtype=np.float64)
        np.testing.assert_array_equal(out, ref, err_msg=f"{route} of {vname} (dynamic_rnn)")


def _leaves_of(state):
    return [state] if isinstance(state, np.ndarray) else [a for s in state for a in _leaves_of(s)]


@pytest.mark.parametrize("route", ["load_variables", "in_place_changed", "sgd"])
def test_stacks_and_bidirectional_see_a_change(route, tmp_path):
    """MultiRNNCell (each layer keeps its own conversion), DropoutWrapper and
    bidirectional_dynamic_rnn: a change of any layer's variable is seen by the next call."""
    rng = np.random.default_rng(3)
    N, T, C = 2, 5, 3
    x = rng.standard_normal((N, T, C))
    lengths = np.array([5, 3])

    def make():
        return rc.MultiRNNCell([rc.LSTMCell(4, use_peepholes=True, seed=0),
                                rc.DropoutWrapper(rc.GRUCell(3, seed=1)),
                                rc.BasicRNNCell(2, activation="softsign", seed=2)])
    fw, bw = make(), make()
    for layer in range(3):
        tf.nn.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths, dtype=np.float64)
        s = fw.zero_state(N, np.float64)
        _, s = fw(x[:, 0], s)
        for cell in (fw, bw):
            basic = cell._basic_cells()[layer]
            for vname in basic.variables():
                _route(route, basic, vname, rng, tmp_path)
        ref_fw, ref_bw = _fresh_copy(make, fw, C), _fresh_copy(make, bw, C)
        (a, b), (sa, sb) = tf.nn.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths,
                                                           dtype=np.float64)
        (ra, rb), (rsa, rsb) = tf.nn.bidirectional_dynamic_rnn(
            ref_fw, ref_bw, x, sequence_length=lengths, dtype=np.float64)
        np.testing.assert_array_equal(a, ra)
        np.testing.assert_array_equal(b, rb)
        for u, v in zip(_leaves_of((sa, sb)), _leaves_of((rsa, rsb))):
            np.testing.assert_array_equal(u, v)
        y, _ = fw(x[:, 1], s)
        ry, _ = ref_fw(x[:, 1], s)
        np.testing.assert_array_equal(y, ry)


@pytest.mark.parametrize("name", list(_KEPT))
def test_the_conversion_is_made_once_and_backward_keeps_the_forwards_weights(name,
                                                                            monkeypatch):
    """Steps, dynamic_rnn and bidirectional_dynamic_rnn hand the kernels (or the step path) the
    same converted arrays until a variable changes; a change makes new arrays, so a call
    recorded before it differentiates the weights it ran with."""
    from fusedrnn.compat.v1 import _steps
    seen = []
    for fname in ("lstm_forward", "gru_forward", "rnn_forward"):
        real = getattr(rc.F, fname)

        def spy(x, w_ih, *a, _real=real, **k):
            seen.append(w_ih)
            return _real(x, w_ih, *a, **k)
        monkeypatch.setattr(rc.F, fname, spy)
    real_step = _steps.StepCell.__init__

    def spy_step(self, kind, act, w_ih, *a, **k):
        seen.append(w_ih)
        real_step(self, kind, act, w_ih, *a, **k)
    monkeypatch.setattr(_steps.StepCell, "__init__", spy_step)

    rng = np.random.default_rng(5)
    N, T, C = 2, 3, 4
    x = rng.standard_normal((N, T, C))
    cell, other = _KEPT[name](), _KEPT[name]()
    s = cell.zero_state(N, np.float64)
    for t in range(T):
        _, s = cell(x[:, t], s)
    tf.nn.dynamic_rnn(cell, x, dtype=np.float64)
    tf.nn.bidirectional_dynamic_rnn(cell, other, x, dtype=np.float64)
    # T steps, dynamic_rnn, bidirectional's forward direction: one array; `other`: its own
    assert len(seen) == T + 3 and all(w is seen[0] for w in seen[:T + 2]), name
    assert seen[-1] is not seen[0]
    assert not seen[0].flags.writeable     # (never refreshed in place)

    # a recorded step, a change, a step with the new weights: the first step's backward uses
    # the weights it ran with
    ref = _KEPT[name]()
    ref.load_variables({k: p.data.copy() for k, p in cell.variables().items()})
    s = cell.zero_state(N, np.float64)
    y, s1 = cell(x[:, 0], s)
    ref(x[:, 0], s)
    for p in cell.parameters():
        p.data[...] = rng.standard_normal(p.data.shape)
        p.changed()
    y2, _ = cell(x[:, 1], s1)
    cell.backward(np.ones_like(y2))
    cell.zero_grad(), ref.zero_grad()
    d = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(cell.backward(d), ref.backward(d))
    for p, q in zip(cell.parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_backward_adds_the_gradients_without_a_kernel_sized_copy():
    """Each backward (one per step of a BPTT loop) adds the kernels' gradients into the TF1
    kernel's grad in TF1's gate order: block by block, into views. Gathering them into a
    reordered copy first (np.take of a transposed gradient, then a concatenation) made a
    kernel-sized array per step and was 80% of a 100-step BPTT loop's time at H = 256."""
    import tracemalloc
    from types import SimpleNamespace
    H = C = 128
    cell = rc.BasicLSTMCell(H, seed=0)
    cell.build(C, np.float64)
    rng = np.random.default_rng(0)
    g = SimpleNamespace(dw_ih=rng.standard_normal((4 * H, C)),
                        dw_hh=rng.standard_normal((4 * H, H)), db_ih=rng.standard_normal(4 * H))
    cell.zero_grad()
    tracemalloc.start()
    try:
        cell._add_grads(g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < cell.kernel.data.nbytes / 4, peak
    # TF1's i, j, f, o from the kernels' i, f, g (= j), o
    K = cell.kernel.grad
    for tf_block, kernel_block in enumerate([0, 2, 1, 3]):
        cols = slice(tf_block * H, (tf_block + 1) * H)
        rows = slice(kernel_block * H, (kernel_block + 1) * H)
        np.testing.assert_array_equal(K[:C, cols], g.dw_ih[rows].T)
        np.testing.assert_array_equal(K[C:, cols], g.dw_hh[rows].T)
        np.testing.assert_array_equal(cell.bias.grad[cols], g.db_ih[rows])
