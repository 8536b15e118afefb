"""TensorFlow 1's recurrent vocabulary, eager, on fusedrnn's fused kernels.

    from fusedrnn.compat import v1 as tf
    cell = tf.nn.rnn_cell.MultiRNNCell([tf.nn.rnn_cell.BasicLSTMCell(128) for _ in range(2)])
    outputs, state = tf.nn.dynamic_rnn(cell, x, sequence_length=lengths, dtype=np.float32)
    d_x = cell.backward(d_outputs)          # gradients into each Parameter.grad

    arrays = tf.load_checkpoint("model.ckpt")  # TF1 checkpoint, no TensorFlow needed
    cell.load_variables(arrays)              # rnn/multi_rnn_cell/cell_0/... names

See :mod:`fusedrnn.compat.v1.rnn_cell` for the cells and the parameter layout, and
:mod:`fusedrnn.compat.v1.nn` for ``dynamic_rnn`` / ``bidirectional_dynamic_rnn``.
"""
from . import nn, rnn_cell
from .checkpoint import CheckpointFormatError, load_checkpoint
from .rnn_cell import LSTMStateTuple

__all__ = ["nn", "rnn_cell", "LSTMStateTuple", "load_checkpoint", "CheckpointFormatError"]
