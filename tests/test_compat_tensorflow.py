"""fusedrnn.compat.v1 against TensorFlow itself (the ``tf1`` test extra: tensorflow-cpu and
tf-keras, TF1's rnn_cell needs the legacy Keras): TF builds a TF1 graph (MultiRNNCell of
BasicLSTMCell, GRUCell, LSTMCell with peepholes and projection; bidirectional_dynamic_rnn),
runs it and saves a checkpoint with tf.compat.v1.train.Saver; load_checkpoint + load_variables +
our dynamic_rnn must give TF's outputs and final states (float32, 1e-5) and backward its
tf.gradients (input and every variable of the stack, 1e-4). Skipped when
TensorFlow is not installed."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")

from fusedrnn.compat import v1 as frtf  # noqa: E402


def test_tensorflow_checkpoint_and_outputs(tmp_path):
    v1 = tf.compat.v1
    rc = v1.nn.rnn_cell
    N, T, C = 4, 7, 5
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, C)).astype(np.float32)
    lengths = np.array([7, 3, 0, 5], np.int32)
    g = tf.Graph()
    with g.as_default():
        xp = v1.placeholder(tf.float32, [N, T, C])
        lp = v1.placeholder(tf.int32, [N])
        stack = rc.MultiRNNCell([rc.BasicLSTMCell(6, forget_bias=0.5), rc.GRUCell(5),
                                 rc.LSTMCell(4, use_peepholes=True, num_proj=3)])
        out, state = v1.nn.dynamic_rnn(stack, xp, sequence_length=lp, dtype=tf.float32)
        with v1.variable_scope("bi"):
            (o_fw, o_bw), (s_fw, s_bw) = v1.nn.bidirectional_dynamic_rnn(
                rc.GRUCell(3), rc.BasicLSTMCell(3), xp, sequence_length=lp, dtype=tf.float32)
        w_out = rng.standard_normal((N, T, 3)).astype(np.float32)
        w_h = rng.standard_normal((N, 3)).astype(np.float32)
        loss = tf.reduce_sum(out * w_out) + tf.reduce_sum(state[2].h * w_h)
        stack_vars = [v for v in v1.global_variables() if v.name.startswith("rnn/")]
        grads = v1.gradients(loss, [xp] + stack_vars)
        saver = v1.train.Saver()
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            for var in v1.global_variables():   # away from the initialisers' zeros and ones
                shape = var.shape.as_list()
                sess.run(var.assign((rng.standard_normal(shape) * 0.5).astype(np.float32)))
            ref = sess.run({"out": out, "state": state, "o_fw": o_fw, "o_bw": o_bw,
                            "s_fw": s_fw, "s_bw": s_bw, "grads": grads}, {xp: x, lp: lengths})
            prefix = saver.save(sess, str(tmp_path / "model.ckpt"), global_step=3)

    arrays = frtf.load_checkpoint(prefix)
    assert "rnn/multi_rnn_cell/cell_2/lstm_cell/projection/kernel" in arrays
    assert "bi/bidirectional_rnn/bw/basic_lstm_cell/kernel" in arrays
    ours = frtf.nn.rnn_cell
    stack = ours.MultiRNNCell([ours.BasicLSTMCell(6, forget_bias=0.5), ours.GRUCell(5),
                               ours.LSTMCell(4, use_peepholes=True, num_proj=3)])
    stack.load_variables(arrays)
    got, st = frtf.nn.dynamic_rnn(stack, x, sequence_length=lengths, dtype=np.float32)
    np.testing.assert_allclose(got, ref["out"], atol=1e-5)
    np.testing.assert_allclose(st[0].c, ref["state"][0].c, atol=1e-5)
    np.testing.assert_allclose(st[0].h, ref["state"][0].h, atol=1e-5)
    np.testing.assert_allclose(st[1], ref["state"][1], atol=1e-5)
    np.testing.assert_allclose(st[2].c, ref["state"][2].c, atol=1e-5)
    np.testing.assert_allclose(st[2].h, ref["state"][2].h, atol=1e-5)

    # gradients of the same loss, against tf.gradients
    z = stack.zero_state(N, np.float32)
    dx = stack.backward(w_out, (z[0], z[1], frtf.LSTMStateTuple(z[2].c, w_h)))
    np.testing.assert_allclose(dx, ref["grads"][0], atol=1e-4)
    ours_vars = stack.variables()
    for var, g_ref in zip(stack_vars, ref["grads"][1:]):
        name = var.name.split(":")[0]
        np.testing.assert_allclose(ours_vars[name].grad, g_ref, atol=1e-4, err_msg=name)

    fw, bw = ours.GRUCell(3), ours.BasicLSTMCell(3)
    fw.load_variables(arrays, scope="bi/bidirectional_rnn/fw")
    bw.load_variables(arrays, scope="bi/bidirectional_rnn/bw")
    (g_fw, g_bw), (t_fw, t_bw) = frtf.nn.bidirectional_dynamic_rnn(
        fw, bw, x, sequence_length=lengths, dtype=np.float32)
    np.testing.assert_allclose(g_fw, ref["o_fw"], atol=1e-5)
    np.testing.assert_allclose(g_bw, ref["o_bw"], atol=1e-5)
    np.testing.assert_allclose(t_fw, ref["s_fw"], atol=1e-5)
    np.testing.assert_allclose(t_bw.h, ref["s_bw"].h, atol=1e-5)
    np.testing.assert_allclose(t_bw.c, ref["s_bw"].c, atol=1e-5)
