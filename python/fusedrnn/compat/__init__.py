"""Compatibility facades: :mod:`fusedrnn.compat.v1` speaks TensorFlow 1's ``tf.nn.rnn_cell`` /
``tf.nn.dynamic_rnn`` vocabulary on fusedrnn's fused kernels."""
