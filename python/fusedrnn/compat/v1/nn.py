"""TF1's ``tf.nn.dynamic_rnn`` and ``tf.nn.bidirectional_dynamic_rnn`` on the fused kernels, and
``nn.rnn_cell`` (the cells module, as ``tf.nn.rnn_cell``).

TF1's semantics: ``inputs`` [batch, time, depth] ([time, batch, depth] with time_major);
``sequence_length`` [batch]: outputs are zero at steps >= length and the returned state is each
sequence's state after its last valid step (the initial state for length 0). Each basic cell of
the stack runs as one fused kernel call over the whole batch of sequences (the backward
direction of ``bidirectional_dynamic_rnn`` in the kernels' reverse mode, which starts every
sequence at its own last valid step, as TF1's reverse_sequence does).

Gradients: ``cell.backward(d_outputs, d_state=None)`` after ``dynamic_rnn(cell, ...)`` returns
d_inputs (same layout as inputs) and adds the parameter gradients (once: the backward consumes
the call); for
``bidirectional_dynamic_rnn`` the input gradient is ``cell_fw.backward(d_fw) +
cell_bw.backward(d_bw)``.
"""
from __future__ import annotations

import numpy as np

from . import rnn_cell
from .rnn_cell import RNNCell, _dtype_of

__all__ = ["dynamic_rnn", "bidirectional_dynamic_rnn", "rnn_cell"]


def _lengths(fn, sequence_length, N, T):
    if sequence_length is None:
        return None
    a = np.asarray(sequence_length)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{fn}: sequence_length must be an integer vector, got dtype {a.dtype}")
    if a.shape != (N,):
        raise ValueError(f"{fn}: sequence_length must have shape [batch_size] = [{N}], "
                         f"got {list(a.shape)}")
    if N and (a.min() < 0 or a.max() > T):
        raise ValueError(f"{fn}: sequence_length must lie in [0, max_time={T}], got min "
                         f"{a.min()} max {a.max()}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _prepare(fn, cell, inputs, sequence_length, initial_state, dtype, time_major):
    if not isinstance(cell, RNNCell):
        raise TypeError(f"{fn}: cell must be a fusedrnn.compat.v1 cell, got "
                        f"{type(cell).__name__}")
    if not isinstance(inputs, np.ndarray) or inputs.ndim != 3:
        raise ValueError(f"{fn}: inputs must be a numpy array "
                         f"[{'max_time, batch' if time_major else 'batch, max_time'}, depth], "
                         f"got {getattr(inputs, 'shape', type(inputs).__name__)}")
    if inputs.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: inputs must be float32 or float64, got {inputs.dtype}")
    dt = _dtype_of(fn, dtype)
    if initial_state is None and dt is None:
        raise ValueError(f"{fn}: If there is no initial_state, you must give a dtype.")
    if dt is not None and dt != inputs.dtype:
        raise TypeError(f"{fn}: dtype {dt} differs from the inputs' dtype {inputs.dtype}")
    # (always a copy: backward uses the inputs the call saw, so a loop may refill one array)
    x = np.array(inputs if time_major else inputs.transpose(1, 0, 2), order="C")
    T, N, _ = x.shape
    if min(x.shape) < 1:
        raise ValueError(f"{fn}: inputs must have batch, max_time, depth >= 1, got "
                         f"{list(inputs.shape)}")
    return x, _lengths(fn, sequence_length, N, T)


def dynamic_rnn(cell, inputs, sequence_length=None, initial_state=None, dtype=None,
                parallel_iterations=None, swap_memory=False, time_major=False, scope=None):
    """Runs `cell` over `inputs`: returns (outputs [batch, time, output_size] (time-major with
    time_major), final state structured like cell.zero_state). ``scope`` does not name the
    variables here (they are the cell's, made at its first call): pass the same scope to
    ``cell.variables(scope)`` / ``cell.load_variables(arrays, scope)``."""
    fn = "dynamic_rnn"
    x, lengths = _prepare(fn, cell, inputs, sequence_length, initial_state, dtype, time_major)
    plan = cell._plan(fn, x, initial_state, "initial_state")
    cell._build_plan(plan, x.dtype)
    y, state = cell._execute(plan, x, lengths, False,
                             "time_major" if time_major else "batch_major")
    return (y if time_major else np.ascontiguousarray(y.transpose(1, 0, 2))), state


def bidirectional_dynamic_rnn(cell_fw, cell_bw, inputs, sequence_length=None,
                              initial_state_fw=None, initial_state_bw=None, dtype=None,
                              parallel_iterations=None, swap_memory=False, time_major=False,
                              scope=None):
    """Returns ((output_fw, output_bw), (state_fw, state_bw)); output_bw in the inputs' time
    order (TF1 reverses it back). Both directions are checked before either runs."""
    fn = "bidirectional_dynamic_rnn"
    if not isinstance(cell_bw, RNNCell):
        raise TypeError(f"{fn}: cell_bw must be a fusedrnn.compat.v1 cell, got "
                        f"{type(cell_bw).__name__}")
    if cell_fw is cell_bw:
        raise ValueError(f"{fn}: cell_fw and cell_bw must be two cell objects")
    both = initial_state_fw is not None and initial_state_bw is not None
    x, lengths = _prepare(fn, cell_fw, inputs, sequence_length,
                          initial_state_fw if both else None, dtype, time_major)
    how = "time_major" if time_major else "batch_major"
    plan_fw = cell_fw._plan(fn, x, initial_state_fw, "initial_state_fw")
    plan_bw = cell_bw._plan(fn, x, initial_state_bw, "initial_state_bw")
    cell_fw._build_plan(plan_fw, x.dtype)
    cell_bw._build_plan(plan_bw, x.dtype)
    y_fw, s_fw = cell_fw._execute(plan_fw, x, lengths, False, how)
    y_bw, s_bw = cell_bw._execute(plan_bw, x, lengths, True, how)
    if not time_major:
        y_fw = np.ascontiguousarray(y_fw.transpose(1, 0, 2))
        y_bw = np.ascontiguousarray(y_bw.transpose(1, 0, 2))
    return (y_fw, y_bw), (s_fw, s_bw)
