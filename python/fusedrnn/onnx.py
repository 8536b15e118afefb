"""ONNX interchange: :func:`export` writes a fusedrnn layer or :class:`RecurrentModel` as an ONNX
graph of the standard ``LSTM`` / ``GRU`` / ``RNN`` operators; :func:`load` reads such graphs
back (those fusedrnn writes, those of ``torch.onnx.export`` and other exporters, and ONNX
Runtime's int8 ``com.microsoft.DynamicQuantizeLSTM``) into a fusedrnn model.

The ``onnx`` package (``pip install "fusedrnn[onnx]"``) is imported only when these functions
run, never at ``import fusedrnn``.

Conventions (WEIGHTS.md): ONNX LSTM gates are i, o, f, c (ours i, f, g, o); GRU z, r, h (ours
r, z, n); biases ``B = [W_b, R_b]``; peepholes ``P`` in i, o, f order (ours i, f, o);
PyTorch's reset-after GRU is ``linear_before_reset=1``. Every weight conversion is a
permutation of rows, so fusedrnn -> ONNX -> fusedrnn is bitwise on parameters.

The exported graph (inputs and outputs are named):

    x        [T, N] int64 token ids (RecurrentModel with vocab_size) or [T, N, C] features
             ([N, T, C] for a batch_first layer)
    lengths  [N] int32, only with ``export(..., lengths=True)``: outputs past each
             sequence's length are zero and its final state is its own last step's (its
             initial state for a length-0 sequence, as in fusedrnn and torch: with
             ``initial_state`` too, h_n = Where(lengths == 0, h0, Y_h), as the ONNX nodes
             themselves give 0 there)
    h0, c0   [L*D, N, R] / [L*D, N, H], only with ``export(..., initial_state=True)``
 -> y        [T, N, D*R] (a layer) or [T, N, output_size] (a RecurrentModel)
    h_n, c_n [L*D, N, R] / [L*D, N, H] (c_n for LSTM)

Embedding -> ``Gather``; each layer of the stack -> one ``LSTM``/``GRU``/``RNN`` node (chained
through ``Squeeze`` or ``Transpose`` + ``Reshape``); the head -> ``MatMul`` + ``Add``. Dropout is
training-only and is not exported. LSTM projection (``proj_size``) has no ONNX LSTM form: it
is written as a per-step ``Scan`` graph (opset >= 16, see :class:`_ProjectionGraph`), which
:func:`load` reads back only as fusedrnn wrote it (it re-exports and compares).
"""
from __future__ import annotations

import json
import os
import numpy as np

from .layers import GRU, LSTM, RNN
from .models import RecurrentModel, _refuse_low_precision

__all__ = ["export", "load", "OnnxImportError"]

DEFAULT_OPSET = 17
MIN_OPSET = 14


class OnnxImportError(ValueError):
    """An ONNX file fusedrnn cannot read or cannot run exactly (names the node and attribute)."""


def _onnx():
    try:
        import onnx  # noqa: F401
        import onnx.helper  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without onnx
        raise ImportError("fusedrnn.onnx needs the onnx package: pip install 'fusedrnn[onnx]' "
                          "(or pip install onnx)") from e
    return onnx


# -- gate layouts ------------------------------------------------------------------------------
# Row blocks of an ONNX weight, in terms of ours: ONNX block j = our block _TO_ONNX[cell][j].
_TO_ONNX = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}
# Peepholes: ours rows (i, f, o) -> ONNX (i, o, f).
_PEEP_TO_ONNX = (0, 2, 1)


def _blocks(a: np.ndarray, order, axis=0) -> np.ndarray:
    """Row blocks of `a` (len(order) equal blocks along `axis`) in the given order."""
    parts = np.split(a, len(order), axis=axis)
    return np.concatenate([parts[k] for k in order], axis=axis)


def _inverse(order):
    inv = [0] * len(order)
    for j, k in enumerate(order):
        inv[k] = j
    return tuple(inv)


# -- export ------------------------------------------------------------------------------------
def export(model, path, *, opset: int = DEFAULT_OPSET, lengths: bool = False,
           initial_state: bool = False) -> None:
    """Write ``model`` (a fusedrnn ``LSTM``/``GRU``/``RNN`` layer or ``RecurrentModel``) to
    ``path`` as an ONNX model (``opset`` >= 14). ``lengths=True`` adds the ``lengths`` input
    (int32 [N], ONNX ``sequence_lens``), ``initial_state=True`` the ``h0`` (and ``c0``) inputs.
    The file passes ``onnx.checker`` and runs in ONNX Runtime with fusedrnn's outputs.

    An LSTM with projection (``proj_size``), which ONNX's LSTM cannot express, is written as
    a per-step ``Scan`` graph of standard ops (opset >= 16; a ValueError below)."""
    onnx = _onnx()
    model_proto = to_model_proto(model, opset=opset, lengths=lengths,
                                 initial_state=initial_state)
    onnx.checker.check_model(model_proto, full_check=True)
    from .io import write_file   # (a unique temporary next to it, removed on failure)
    write_file(os.fspath(path), model_proto.SerializeToString())


def to_model_proto(model, *, opset: int = DEFAULT_OPSET, lengths: bool = False,
                   initial_state: bool = False):
    """The ``onnx.ModelProto`` that :func:`export` writes."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    fn = "fusedrnn.onnx.export"
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset < MIN_OPSET:
        raise ValueError(f"{fn}: opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if int(opset) > onnx.defs.onnx_opset_version():
        raise ValueError(f"{fn}: opset {opset} is newer than this onnx package's "
                         f"{onnx.defs.onnx_opset_version()}")
    for name, v in (("lengths", lengths), ("initial_state", initial_state)):
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{fn}: {name} must be a bool, got {type(v).__name__}")
    if isinstance(model, RecurrentModel):
        rnn, embed, head = model.rnn, model.embed, model.head
    elif isinstance(model, (LSTM, GRU, RNN)):
        rnn, embed, head = model, None, None
    else:
        raise TypeError(f"{fn}: model must be a fusedrnn LSTM, GRU, RNN or RecurrentModel, "
                        f"got {type(model).__name__}")
    from .layers import _inference_options
    # the dropouts are training only (the file is an inference graph: the plain layer's)
    if opts := _inference_options(rnn):
        raise ValueError(f"{fn}: the ONNX {rnn._mode} has no {', '.join(opts)} (issue 19 "
                         f"options that change inference)")
    _refuse_low_precision(fn, rnn, "the file's float LSTM/GRU/RNN ops", "export")
    if getattr(rnn, "cell_clip", None):
        raise ValueError(f"{fn}: the ONNX LSTM has no cell-state clip (its 'clip' attribute "
                         f"bounds the gates' pre-activations, not c): cell_clip = "
                         f"{rnn.cell_clip}")
    if getattr(rnn, "proj_size", 0) and int(opset) < 16:
        raise ValueError(f"{fn}: LSTM projection (proj_size) is exported as a per-step Scan "
                         f"graph, which needs opset >= 16, got {opset}")
    dt = rnn.dtype
    elem = TensorProto.DOUBLE if dt == np.float64 else TensorProto.FLOAT
    mode = rnn.mode
    L, D, H, R = rnn.num_layers, rnn.num_directions, rnn.hidden_size, rnn.state_size
    nodes, inits, inputs = [], [], []

    def init(name, a):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def const_i64(name, values):
        return init(name, np.asarray(values, np.int64))

    # inputs
    if embed is not None:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.INT64, ["T", "N"]))
        nodes.append(helper.make_node("Gather", [init("embed.weight", embed.weight.data), "x"],
                                      ["embedded"], name="embed", axis=0))
        seq = "embedded"
    else:
        batch_first = getattr(rnn, "batch_first", False)
        shape = ["N", "T", rnn.input_size] if batch_first else ["T", "N", rnn.input_size]
        inputs.append(helper.make_tensor_value_info("x", elem, shape))
        seq = "x"
        if batch_first:
            nodes.append(helper.make_node("Transpose", ["x"], ["x_time_major"],
                                          name="x_time_major", perm=[1, 0, 2]))
            seq = "x_time_major"
    seq_lens = ""
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["N"]))
        seq_lens = "lengths"
    if initial_state:
        inputs.append(helper.make_tensor_value_info("h0", elem, [L * D, "N", R]))
        if mode == "LSTM":
            inputs.append(helper.make_tensor_value_info("c0", elem, [L * D, "N", H]))

    y_h, y_c = [], []
    proj = _ProjectionGraph(rnn, nodes, init, const_i64, elem, seq_lens, initial_state) \
        if getattr(rnn, "proj_size", 0) else None
    for layer in range(L):
        if proj is not None:  # LSTM projection: no ONNX LSTM form; one Scan per direction
            seq = proj.layer(layer, seq, y_h, y_c)
            continue
        W, Rw, B, P = [], [], [], []
        for direction in range(D):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            p = dict(rnn.named_parameters())
            order = _TO_ONNX[mode]
            W.append(_blocks(p["weight_ih" + sfx].data, order))
            Rw.append(_blocks(p["weight_hh" + sfx].data, order))
            if rnn.bias:
                B.append(np.concatenate([_blocks(p["bias_ih" + sfx].data, order),
                                         _blocks(p["bias_hh" + sfx].data, order)]))
            if getattr(rnn, "peepholes", False):
                P.append(p["weight_peep" + sfx].data[list(_PEEP_TO_ONNX)].reshape(-1))
        pre = f"l{layer}"
        ins = [seq, init(pre + ".W", np.stack(W)), init(pre + ".R", np.stack(Rw)),
               init(pre + ".B", np.stack(B)) if B else "", seq_lens]
        if initial_state:
            sl = [const_i64(pre + ".state_start", [layer * D]),
                  const_i64(pre + ".state_end", [(layer + 1) * D]),
                  const_i64(pre + ".state_axis", [0])]
            nodes.append(helper.make_node("Slice", ["h0"] + sl, [pre + ".h0"], name=pre + ".h0"))
            ins.append(pre + ".h0")
            if mode == "LSTM":
                nodes.append(helper.make_node("Slice", ["c0"] + sl, [pre + ".c0"],
                                              name=pre + ".c0"))
                ins.append(pre + ".c0")
        elif P:
            ins.append("")
            ins.append("")
        if P:
            ins.append(init(pre + ".P", np.stack(P)))
        while ins and ins[-1] == "":
            ins.pop()
        attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
        if mode == "GRU":
            attrs["linear_before_reset"] = 1 if rnn.variant == "reset_after" else 0
        if mode == "RNN":
            attrs["activations"] = ["Relu" if rnn.nonlinearity == "relu" else "Tanh"] * D
        outs = [pre + ".Y", pre + ".Y_h"] + ([pre + ".Y_c"] if mode == "LSTM" else [])
        nodes.append(helper.make_node(mode, ins, outs, name=pre, **attrs))
        if lengths and initial_state:
            # a length-0 sequence keeps its initial state in fusedrnn (as in torch); ONNX
            # Runtime's LSTM/GRU/RNN give 0 there: h_n = Where(lengths == 0, h0, Y_h)
            if layer == 0:
                nodes.append(helper.make_node("Equal", ["lengths", init(
                    "lengths.zero", np.zeros((), np.int32))], ["lengths.is_zero"],
                    name="lengths.is_zero"))
                nodes.append(helper.make_node("Unsqueeze", ["lengths.is_zero", const_i64(
                    "lengths.is_zero.axes", [0, 2])], ["lengths.is_zero_1n1"],
                    name="lengths.is_zero_1n1"))
            for out, state in (("h_n", "h0"), ("c_n", "c0"))[:2 if mode == "LSTM" else 1]:
                nodes.append(helper.make_node(
                    "Where", ["lengths.is_zero_1n1", f"{pre}.{state}", f"{pre}.Y_{out[0]}"],
                    [f"{pre}.{out}"], name=f"{pre}.{out}"))
            y_h.append(pre + ".h_n")
            if mode == "LSTM":
                y_c.append(pre + ".c_n")
        else:
            y_h.append(pre + ".Y_h")
            if mode == "LSTM":
                y_c.append(pre + ".Y_c")
        # Y [T, D, N, H] -> [T, N, D*H]
        if D == 1:
            nodes.append(helper.make_node("Squeeze", [pre + ".Y", const_i64(pre + ".squeeze",
                                                                            [1])],
                                          [pre + ".out"], name=pre + ".out"))
        else:
            nodes.append(helper.make_node("Transpose", [pre + ".Y"], [pre + ".Y_tndh"],
                                          name=pre + ".Y_tndh", perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [pre + ".Y_tndh",
                                                      const_i64(pre + ".shape", [0, 0, -1])],
                                          [pre + ".out"], name=pre + ".out"))
        seq = pre + ".out"

    out_f = D * R
    if head is not None:
        out_f = head.weight.shape[0]
        nodes.append(helper.make_node("MatMul", [seq, init("head.weight_t",
                                                            head.weight.data.T)],
                                      ["head.matmul"], name="head.matmul"))
        if head.bias is not None:
            nodes.append(helper.make_node("Add", ["head.matmul", init("head.bias",
                                                                      head.bias.data)],
                                          ["y"], name="head.add"))
        else:
            nodes.append(helper.make_node("Identity", ["head.matmul"], ["y"], name="y"))
        y_shape = ["T", "N", out_f]
    elif getattr(rnn, "batch_first", False):
        nodes.append(helper.make_node("Transpose", [seq], ["y"], name="y", perm=[1, 0, 2]))
        y_shape = ["N", "T", out_f]
    else:
        nodes.append(helper.make_node("Identity", [seq], ["y"], name="y"))
        y_shape = ["T", "N", out_f]
    outputs = [helper.make_tensor_value_info("y", elem, y_shape)]
    for name, parts, size in (("h_n", y_h, R), ("c_n", y_c, H)):
        if not parts:
            continue
        if len(parts) == 1:
            nodes.append(helper.make_node("Identity", parts, [name], name=name))
        else:
            nodes.append(helper.make_node("Concat", parts, [name], name=name, axis=0))
        outputs.append(helper.make_tensor_value_info(name, elem, [L * D, "N", size]))

    graph = helper.make_graph(nodes, "fusedrnn", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", int(opset))]
    m = helper.make_model(graph, opset_imports=opsets, producer_name="fusedrnn",
                          ir_version=helper.find_min_ir_version_for(opsets))
    from . import __version__
    m.producer_version = __version__
    config = model.config()
    helper.set_model_props(m, {"fusedrnn.config": json.dumps(config, sort_keys=True)})
    return m


def _lstm_parameter_count(cfg) -> int:
    """Parameters an LSTM / RecurrentModel config implies (checked before building it)."""
    def num(k, default=0):
        v = cfg.get(k, default)
        if v is None:
            return 0
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 1 << 31:
            raise OnnxImportError(f"fusedrnn.onnx.load: config field {k!r} = {v!r}")
        return v
    H, R, L = num("hidden_size"), num("proj_size"), num("num_layers", 1)
    D = 2 if cfg.get("bidirectional") else 1
    C = num("embed_dim") if cfg.get("vocab_size") else num("input_size")
    total, c_in = 0, C
    for _ in range(L):
        total += D * (4 * H * c_in + 4 * H * R + R * H)  # a lower bound: no biases, peepholes
        c_in = D * R
    if cfg.get("type") == "RecurrentModel":
        total += num("vocab_size") * num("embed_dim") + D * R * num("output_size", 1)
    return total


class _ProjectionGraph:
    """LSTM with projection (``proj_size``) as standard ops: per layer and direction, the input
    products for all steps (MatMul + Add), then a ``Scan`` whose body is one step of the cell
    (recurrent MatMul, gates, optional peepholes, c update, h = (o∘tanh c) W_hrᵀ). With
    lengths, a mask (t < lengths[n]) keeps the state and zeroes the output past each
    sequence's end (``Where``), and the reverse direction runs on ``ReverseSequence`` of its
    input, which starts every sequence at its own last step, as fusedrnn's kernels do."""

    def __init__(self, rnn, nodes, init, const_i64, elem, seq_lens, initial_state):
        self.rnn, self.nodes, self.init, self.const_i64 = rnn, nodes, init, const_i64
        self.elem, self.seq_lens, self.initial_state = elem, seq_lens, initial_state
        self.params = {k: v.data for k, v in rnn.named_parameters()}
        self.shared = None

    def node(self, op, ins, outs, **attrs):
        from onnx import helper
        self.nodes.append(helper.make_node(op, ins, outs, name=outs[0], **attrs))
        return outs[0]

    def common(self, x):
        """Once: the batch size and, with lengths, the mask [T, N, 1] and int64 lengths."""
        if self.shared is not None:
            return self.shared
        c = self.const_i64
        shape = self.node("Shape", [x], ["proj.x_shape"])
        n = self.node("Gather", [shape, c("proj.idx1", [1])], ["proj.batch"], axis=0)
        out = {"batch": n}
        if self.seq_lens:
            t = self.node("Gather", [shape, c("proj.idx0", 0)], ["proj.steps"], axis=0)
            steps = self.node("Range", [c("proj.zero", 0), t, c("proj.one", 1)],
                              ["proj.range"])
            col = self.node("Unsqueeze", [steps, c("proj.ax1", [1])], ["proj.range_col"])
            lens = self.node("Cast", [self.seq_lens], ["proj.lengths64"], to=7)
            m = self.node("Less", [col, lens], ["proj.mask_tn"])
            out["mask"] = self.node("Unsqueeze", [m, c("proj.ax2", [2])], ["proj.mask"])
            out["lengths"] = lens
        self.shared = out
        return out

    def layer(self, layer, seq, y_h, y_c):
        from onnx import helper
        rnn, p, c = self.rnn, self.params, self.const_i64
        H, R, D = rnn.hidden_size, rnn.state_size, rnn.num_directions
        shared = self.common(seq)
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            pre = f"l{layer}" + (".reverse" if d else "")
            x = seq
            if d and self.seq_lens:
                x = self.node("ReverseSequence", [seq, shared["lengths"]], [pre + ".x_rev"],
                              batch_axis=1, time_axis=0)
            xw = self.node("MatMul", [x, self.init(pre + ".W_ih_t", p["weight_ih" + sfx].T)],
                           [pre + ".xw"])
            if rnn.bias:  # two Adds: both biases stay in the file as they are
                xw = self.node("Add", [xw, self.init(pre + ".bias_ih", p["bias_ih" + sfx])],
                               [pre + ".xw_bih"])
                xw = self.node("Add", [xw, self.init(pre + ".bias_hh", p["bias_hh" + sfx])],
                               [pre + ".xw_b"])
            states = []
            for j, (name, size) in enumerate((("h0", R), ("c0", H))):
                if self.initial_state:
                    idx = layer * D + d
                    sl = self.node("Slice", [name, c(f"{pre}.{name}.start", [idx]),
                                             c(f"{pre}.{name}.end", [idx + 1]),
                                             c(f"{pre}.{name}.axis", [0])], [f"{pre}.{name}.row"])
                    states.append(self.node("Squeeze", [sl, c(f"{pre}.{name}.sq", [0])],
                                            [f"{pre}.{name}"]))
                else:
                    shp = self.node("Concat", [shared["batch"], c(f"{pre}.{name}.size", [size])],
                                    [f"{pre}.{name}.shape"], axis=0)
                    states.append(self.node(
                        "ConstantOfShape", [shp], [f"{pre}.{name}"],
                        value=helper.make_tensor("zero", self.elem, [1], [0.0])))
            body = self.body(pre, sfx, masked=bool(self.seq_lens))
            scan_in = [xw] + ([shared["mask"]] if self.seq_lens else [])
            attrs = dict(body=body, num_scan_inputs=len(scan_in))
            if d and not self.seq_lens:
                attrs.update(scan_input_directions=[1] * len(scan_in),
                             scan_output_directions=[1])
            self.node("Scan", states + scan_in, [pre + ".h_n", pre + ".c_n", pre + ".y"],
                      **attrs)
            y = pre + ".y"
            if d and self.seq_lens:
                y = self.node("ReverseSequence", [y, shared["lengths"]], [pre + ".y_fwd"],
                              batch_axis=1, time_axis=0)
            outs.append(y)
            for name, lst in (("h_n", y_h), ("c_n", y_c)):
                lst.append(self.node("Unsqueeze", [f"{pre}.{name}", c(f"{pre}.{name}.ax", [0])],
                                     [f"{pre}.{name}.row"]))
        if D == 1:
            return outs[0]
        return self.node("Concat", outs, [f"l{layer}.out"], axis=2)

    def body(self, pre, sfx, masked):
        from onnx import helper, numpy_helper
        p, rnn = self.params, self.rnn
        H, R = rnn.hidden_size, rnn.state_size
        e = self.elem
        nodes, inits = [], []

        def n(op, ins, out, **attrs):
            nodes.append(helper.make_node(op, ins, [out], **attrs))
            return out

        def const(name, a):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
            return name

        g = n("Add", ["x_t", n("MatMul", ["h", const("W_hh_t", p["weight_hh" + sfx].T)],
                               "rec")], "gates")
        nodes.append(helper.make_node("Split", [g, const("split", np.array([H] * 4, np.int64))],
                                      ["gi", "gf", "gg", "go"], axis=1))
        gi, gf, go = "gi", "gf", "go"
        peep = p.get("weight_peep" + sfx)
        if peep is not None:
            gi = n("Add", [gi, n("Mul", ["c", const("p_i", peep[0])], "pic")], "gi_p")
            gf = n("Add", [gf, n("Mul", ["c", const("p_f", peep[1])], "pfc")], "gf_p")
        i = n("Sigmoid", [gi], "i")
        f = n("Sigmoid", [gf], "f")
        gg = n("Tanh", ["gg"], "g")
        c_new = n("Add", [n("Mul", [f, "c"], "fc"), n("Mul", [i, gg], "ig")], "c_new")
        if peep is not None:
            go = n("Add", [go, n("Mul", [c_new, const("p_o", peep[2])], "poc")], "go_p")
        o = n("Sigmoid", [go], "o")
        h_new = n("MatMul", [n("Mul", [o, n("Tanh", [c_new], "tc")], "oc"),
                             const("W_hr_t", p["weight_hr" + sfx].T)], "h_new")
        if masked:
            zero = const("zero", np.zeros((), rnn.dtype))
            n("Where", ["m_t", h_new, "h"], "h_out")
            n("Where", ["m_t", c_new, "c"], "c_out")
            n("Where", ["m_t", h_new, zero], "y_t")
        else:
            n("Identity", [h_new], "h_out")
            n("Identity", [c_new], "c_out")
            n("Identity", [h_new], "y_t")
        from onnx import TensorProto
        ins = [helper.make_tensor_value_info("h", e, ["N", R]),
               helper.make_tensor_value_info("c", e, ["N", H]),
               helper.make_tensor_value_info("x_t", e, ["N", 4 * H])]
        if masked:
            ins.append(helper.make_tensor_value_info("m_t", TensorProto.BOOL, ["N", 1]))
        out_info = [helper.make_tensor_value_info("h_out", e, ["N", R]),
                    helper.make_tensor_value_info("c_out", e, ["N", H]),
                    helper.make_tensor_value_info("y_t", e, ["N", R])]
        return helper.make_graph(nodes, pre + ".step", ins, out_info, initializer=inits)


# -- import ------------------------------------------------------------------------------------
# Glue ops evaluated when all their inputs are constants (initializers, Constant nodes).
_FOLDABLE = {
    "Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Concat", "Slice", "Gather",
    "Cast", "Add", "Sub", "Mul", "Div", "Neg", "MatMul", "Gemm", "Split", "ConstantOfShape",
    "Shape", "Expand", "DequantizeLinear", "Flatten", "Range", "Equal", "Where", "Size",
}
_MAX_FOLD_ELEMENTS = 1 << 27  # a constant larger than this is refused (corrupt shapes)
_MAX_FOLD_TOTAL = 1 << 28  # and so are more folded elements than this in one graph
_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
_ALLOWED_ATTRS = {
    "LSTM": {"hidden_size", "direction", "activations", "clip", "input_forget", "layout",
             "activation_alpha", "activation_beta"},
    "GRU": {"hidden_size", "direction", "activations", "clip", "linear_before_reset", "layout",
            "activation_alpha", "activation_beta"},
    "RNN": {"hidden_size", "direction", "activations", "clip", "layout", "activation_alpha",
            "activation_beta"},
}


def _fold_size(op, ins, attrs):
    """Elements of the result of foldable op `op` on constants `ins` (an upper bound, in
    Python ints, which do not overflow), computed from the shapes alone; None for inputs the
    op cannot take (the evaluator would fail on them anyway)."""
    def prod(dims):
        n = 1
        for d in dims:
            n *= max(int(d), 0)
        return n

    def broadcast(*shapes):
        rank = max(len(sh) for sh in shapes)
        out = []
        for i in range(rank):
            dims = [int(sh[i - rank + len(sh)]) for sh in shapes if i - rank + len(sh) >= 0]
            out.append(max(dims) if all(d != 0 for d in dims) else 0)
        return out

    given = [v for v in ins if v is not None]
    if op == "Constant":
        return 0  # its value is the file's own tensor (read through tensor(): bounded)
    if op in ("Shape", "Size"):
        return len(given[0].shape) if given else None
    if op == "ConstantOfShape":
        return 1 if not given else prod(given[0].reshape(-1)) if given[0].size else 1
    if op == "Range":
        if len(ins) != 3 or any(v is None or v.size != 1 for v in ins):
            return None
        start, limit, delta = (float(v.reshape(-1)[0]) for v in ins)
        if delta == 0 or not np.isfinite(start + limit + delta):
            return None
        return max(int(np.ceil((limit - start) / delta)), 0)
    if not given:
        return None
    if op in ("Add", "Sub", "Mul", "Div", "Equal", "Where"):
        return prod(broadcast(*(v.shape for v in given)))
    if op == "Expand":
        if len(ins) != 2 or ins[1] is None or ins[1].ndim != 1:
            return None
        return prod(broadcast(ins[0].shape, [abs(int(d)) for d in ins[1]]))
    if op == "MatMul":
        if len(given) != 2 or given[0].ndim == 0 or given[1].ndim == 0:
            return None
        a, b = list(given[0].shape), list(given[1].shape)
        m = a[-2] if len(a) > 1 else 1
        n = b[-1] if len(b) > 1 else 1
        return prod(broadcast(a[:-2], b[:-2]) + [m, n])
    if op == "Gemm":
        if len(given) < 2 or given[0].ndim != 2 or given[1].ndim != 2:
            return None
        m = given[0].shape[1] if attrs.get("transA", 0) else given[0].shape[0]
        n = given[1].shape[0] if attrs.get("transB", 0) else given[1].shape[1]
        return prod([m, n])
    if op == "Concat":
        return sum(v.size for v in given)
    if op == "Gather":
        data, idx = given[0], ins[1] if len(ins) > 1 else None
        if idx is None or data.ndim == 0:
            return None
        axis = int(attrs.get("axis", 0))
        if not -data.ndim <= axis < data.ndim:
            return None
        return prod(np.delete(np.asarray(data.shape), axis)) * idx.size
    # Identity, Transpose, Squeeze, Unsqueeze, Reshape, Flatten, Cast, Neg, Slice, Split,
    # DequantizeLinear: no more elements than their data input
    return int(ins[0].size) if ins[0] is not None else None


class _Sym:
    """A value of the graph that depends on the graph's inputs, described symbolically."""

    def __init__(self, kind, **kw):
        self.kind = kind
        self.__dict__.update(kw)

    def __repr__(self):
        extra = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "kind")
        return f"{self.kind}({extra})"


def _expanded(shape, dims):
    """The dims of Expand(a constant of `shape`, a shape of `dims`): numpy's broadcasting, a
    label (a size known at run time) where the constant's axis is 1."""
    n = max(len(shape), len(dims))
    a = [1] * (n - len(shape)) + list(shape)
    b = [1] * (n - len(dims)) + list(dims)
    return [d if s == 1 else int(s) for s, d in zip(a, b)]


def _sliced(dims, ins):
    """The dims of Slice(a fill of `dims`, starts, ends[, axes, steps]) where they are known
    (constant arguments; a labelled axis only when taken whole), else None."""
    if dims is None or not ins or any(not isinstance(v, np.ndarray) for v in ins if v is not None):
        return None
    starts, ends = ins[0].tolist(), ins[1].tolist()
    axes = ins[2].tolist() if len(ins) > 2 and ins[2] is not None else list(range(len(starts)))
    steps = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else [1] * len(starts)
    dims = list(dims)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        if not -len(dims) <= ax < len(dims) or sp == 0:
            return None
        d = dims[ax]
        if isinstance(d, int):
            dims[ax] = len(range(d)[slice(st, en, sp)])
        else:
            dims[ax] = d if st == 0 and en >= 2 ** 31 - 1 and sp == 1 else None
    return dims


def _describe(v):
    if isinstance(v, np.ndarray):
        return f"a constant of shape {list(v.shape)}"
    return {"input": "a graph input", "seq": "a sequence tensor", "shape": "a shape value",
            "fill": "a constant-filled tensor", "state": "a recurrent state",
            "state_in": "an initial-state input", "lens": "the sequence lengths",
            "len0": "a lengths == 0 mask"}.get(
        v.kind, v.kind)


def load(path):
    """Import the ONNX model at ``path`` into a fusedrnn model.

    Returns a fusedrnn ``LSTM``/``GRU``/``RNN`` layer (``batch_first`` when the graph
    transposes its input and output so), or a :class:`RecurrentModel` when the graph also has
    a head (``MatMul`` [+ ``Add``] on the last layer's output), with or without an embedding
    (``Gather`` of a constant table by the integer input). Its ``forward(x, state,
    lengths)`` computes the graph: the graph input that reaches ``sequence_lens`` is
    ``lengths``, those that reach ``initial_h``/``initial_c`` are the state.

    Reads the standard ``LSTM``, ``GRU``, ``RNN`` operators (chained as multi-layer stacks,
    ``forward`` or ``bidirectional``), the glue exporters put around them (Transpose,
    Squeeze/Unsqueeze, Reshape, Gather, Concat, Slice, Cast, constants computed from ``Shape``
    such as torch's zero initial states) and ``com.microsoft.DynamicQuantizeLSTM``: fusedrnn has
    no int8 kernels yet, so its int8 weights are **dequantised** to float32
    ((w - zero_point) * scale in float32, one rounding as in DequantizeLinear) and run in
    float32 -- ONNX Runtime instead quantises the input of every step to uint8, so the two
    differ by that quantisation (see the README). An LSTM with projection is read back only
    from the ``Scan`` graph :func:`export` writes (re-exported and compared).

    Raises :class:`OnnxImportError` (a ValueError) naming the node and attribute for anything
    fusedrnn cannot run exactly (non-default activations, ``clip``, ``input_forget``,
    ``layout=1``, ``direction=reverse``, an unknown op on the data path), for an
    ``initial_h``/``initial_c`` whose shape (as far as the file fixes it: constants, zeros
    included, and declared input shapes) is not [num_directions, batch, hidden_size], which
    ONNX Runtime refuses too, and for unreadable or corrupt files. Never runs code from the
    file; external-data tensors are read only from files inside the model's own folder.
    """
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise OnnxImportError(f"fusedrnn.onnx.load: cannot read {path!r}: {e}") from e
    try:
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise OnnxImportError(f"fusedrnn.onnx.load: {path!r} is not a valid ONNX model "
                              f"(protobuf decoding failed: {e})") from e
    return from_model_proto(proto, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def from_model_proto(proto, *, source="<model>", base_dir=None):
    """:func:`load` for an ``onnx.ModelProto`` already in memory (``base_dir``: the folder
    its external-data files are in, if any)."""
    try:
        return _Importer(proto, source, base_dir).run()
    except OnnxImportError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
            OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise OnnxImportError(f"fusedrnn.onnx.load: {source!r}: corrupt or unsupported model "
                              f"({type(e).__name__}: {e})") from e


class _Importer:
    def __init__(self, proto, source, base_dir):
        self.proto, self.source, self.base_dir = proto, source, base_dir
        self.fn = f"fusedrnn.onnx.load({source!r})"

    def err(self, msg):
        return OnnxImportError(f"{self.fn}: {msg}")

    # -- reading ---------------------------------------------------------------------------
    def tensor(self, t, where):
        from onnx import numpy_helper
        n = 1
        for d in t.dims:
            if d < 0:
                raise self.err(f"{where}: tensor {t.name!r} has a negative dimension")
            n *= d
        if n > _MAX_FOLD_ELEMENTS:
            raise self.err(f"{where}: tensor {t.name!r} claims {n} elements")
        if t.data_location == 1 or len(t.external_data):  # TensorProto.EXTERNAL
            t = self.external(t, n, where)
        return np.asarray(numpy_helper.to_array(t))

    def external(self, t, n, where):
        """A copy of tensor `t` with its bytes read from its external-data file, which must be
        a file in the model's own folder (no absolute paths, no '..', no links out of it)."""
        from onnx import helper
        what = f"{where}: tensor {t.name!r} keeps its data in an external file"
        if self.base_dir is None:
            raise self.err(f"{what}; load it with fusedrnn.onnx.load(path) from its folder")
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc or os.path.isabs(loc) or ".." in loc.replace("\\", "/").split("/"):
            raise self.err(f"{what} at {loc!r}: only files inside the model's folder are read")
        full = os.path.realpath(os.path.join(self.base_dir, loc))
        if os.path.commonpath([full, os.path.realpath(self.base_dir)]) != \
                os.path.realpath(self.base_dir) or not os.path.isfile(full):
            raise self.err(f"{what} at {loc!r}, which is not a file inside the model's folder")
        try:
            offset = int(info.get("offset", "0"))
            itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            length = int(info.get("length", str(n * itemsize)))
        except (ValueError, TypeError, KeyError) as e:
            raise self.err(f"{what}: bad offset/length/type ({e})") from e
        if offset < 0 or length != n * itemsize or offset + length > os.path.getsize(full):
            raise self.err(f"{what}: offset {offset} and length {length} do not fit "
                           f"{n} elements of {itemsize} bytes in {loc!r}")
        with open(full, "rb") as f:
            f.seek(offset)
            raw = f.read(length)
        copy = type(t)()
        copy.CopyFrom(t)
        del copy.external_data[:]
        copy.data_location = 0
        copy.raw_data = raw
        return copy

    def attrs(self, node):
        from onnx import helper
        out = {}
        for a in node.attribute:
            if a.type == 4:  # TENSOR
                out[a.name] = self.tensor(a.t, f"node {node.name!r} ({node.op_type})")
            else:
                v = helper.get_attribute_value(a)
                if isinstance(v, bytes):
                    v = v.decode("utf-8")
                elif isinstance(v, list):
                    v = [x.decode("utf-8") if isinstance(x, bytes) else x for x in v]
                out[a.name] = v
        return out

    def run(self):
        proto = self.proto
        g = proto.graph
        if not len(g.node):
            raise self.err("the graph has no nodes")
        self.opset = 0
        for o in proto.opset_import:
            if o.domain in ("", "ai.onnx"):
                self.opset = int(o.version)
        if self.opset == 0:
            self.opset = DEFAULT_OPSET
        env = {}
        for t in g.initializer:
            env[t.name] = self.tensor(t, "initializer")
        init_names = set(env)
        self.inputs = [i.name for i in g.input if i.name not in init_names]
        for name in self.inputs:
            env[name] = _Sym("input", name=name)
        if any(n.op_type == "Scan" for n in g.node):
            return self.projection(env, init_names)
        self.rec = []  # recurrent nodes in graph order: dicts
        self.folded = 0  # elements of the constants folded so far (fold())
        for node in g.node:
            self.visit(node, env)
        return self.build(env, [o.name for o in g.output])

    def projection(self, env, init_names):
        """fusedrnn's own per-step (Scan) export of an LSTM with projection: the model is
        rebuilt from the config in the file's metadata and the weights from the initializers
        (by name), then exported again: the graph must be identical to the file's, node for
        node and bit for bit, or the file is refused."""
        from .module import module_from_config
        scan = next(n for n in self.proto.graph.node if n.op_type == "Scan")
        where = f"node {scan.name!r} (Scan)"
        props = {p.key: p.value for p in self.proto.metadata_props}
        try:
            cfg = json.loads(props.get("fusedrnn.config", "null"))
        except ValueError:
            cfg = None
        lstm = isinstance(cfg, dict) and (cfg.get("type") == "LSTM" or (
            cfg.get("type") == "RecurrentModel" and cfg.get("cell") == "lstm"))
        if not lstm or not isinstance(cfg.get("proj_size"), int) or cfg["proj_size"] < 1:
            raise self.err(f"{where}: Scan graphs are imported only as fusedrnn.onnx.export "
                           f"writes them (an LSTM with projection, its config in the "
                           f"metadata); this one is not")
        weights = {k: v for k, v in env.items() if k in init_names}
        for node in self.proto.graph.node:
            if node.op_type == "Scan":
                for a in node.attribute:
                    if a.name == "body":
                        for t in a.g.initializer:
                            weights[node.name.rsplit(".", 1)[0] + ".scan.body." + t.name] = \
                                self.tensor(t, where)
        n_float = sum(v.size for v in weights.values() if v.dtype.kind == "f")
        if _lstm_parameter_count(cfg) > n_float:
            raise self.err(f"{where}: the metadata's config does not match the weights")
        try:
            model = module_from_config(cfg)
        except (TypeError, ValueError, KeyError) as e:
            raise self.err(f"{where}: the metadata's config is not valid ({e})") from e
        rnn = model.rnn if isinstance(model, RecurrentModel) else model
        state = {}
        prefix = "rnn." if isinstance(model, RecurrentModel) else ""
        get = lambda name: weights.get(name)  # noqa: E731
        for layer, d, sfx in rnn._suffixes():
            pre = f"l{layer}" + (".reverse" if d else "")
            body = pre + ".scan.body."
            for ours, name, t in (("weight_ih", pre + ".W_ih_t", True),
                                  ("bias_ih", pre + ".bias_ih", False),
                                  ("bias_hh", pre + ".bias_hh", False),
                                  ("weight_hh", body + "W_hh_t", True),
                                  ("weight_hr", body + "W_hr_t", True)):
                a = get(name)
                if a is None:
                    if ours.startswith("bias") and not rnn.bias:
                        continue
                    raise self.err(f"{where}: initializer {name!r} is missing")
                state[prefix + ours + sfx] = np.ascontiguousarray(a.T if t else a)
            if rnn.peepholes:
                parts = [get(body + k) for k in ("p_i", "p_f", "p_o")]
                if any(v is None for v in parts):
                    raise self.err(f"{where}: peephole initializers are missing")
                state[prefix + "weight_peep" + sfx] = np.stack(parts)
        if isinstance(model, RecurrentModel):
            if model.embed is not None and get("embed.weight") is not None:
                state["embed.weight"] = get("embed.weight")
            if get("head.weight_t") is not None:
                state["head.weight"] = np.ascontiguousarray(get("head.weight_t").T)
            if get("head.bias") is not None:
                state["head.bias"] = get("head.bias")
        try:
            model.load_state_dict(state)
        except (TypeError, ValueError, KeyError) as e:
            raise self.err(f"{where}: the weights do not fit the config ({e})") from e
        inputs = set(self.inputs)
        kw = dict(lengths="lengths" in inputs, initial_state="h0" in inputs)
        try:
            again = to_model_proto(model, opset=self.opset, **kw)
        except ValueError as e:
            raise self.err(f"{where}: {e}") from e
        if again.graph != self.proto.graph:
            raise self.err(f"{where}: the graph differs from the one fusedrnn.onnx.export "
                           f"writes for its config and weights; refused (nothing is "
                           f"imported approximately)")
        model.eval()
        model.onnx_inputs = {"x": "x", "lengths": "lengths" if kw["lengths"] else None,
                             "h0": "h0" if kw["initial_state"] else None,
                             "c0": "c0" if kw["initial_state"] else None}
        return model

    # -- abstract interpretation of one node ----------------------------------------------
    def visit(self, node, env):
        op, name = node.op_type, node.name or (node.output[0] if node.output else "?")
        where = f"node {name!r} ({op})"
        ins = []
        for i in node.input:
            if i == "":
                ins.append(None)
            elif i not in env:
                raise self.err(f"{where}: input {i!r} is not produced by any earlier node "
                               f"(the graph is not topologically sorted or is corrupt)")
            else:
                ins.append(env[i])
        attrs = self.attrs(node)
        if op == "Constant" and node.domain in ("", "ai.onnx"):
            val = self.fold(node, [], where)
            env[node.output[0]] = val
            return
        if node.domain in ("", "ai.onnx") and op in ("LSTM", "GRU", "RNN"):
            outs = self.recurrent(node, op, ins, attrs, where, quantized=False)
        elif node.domain == "com.microsoft" and op == "DynamicQuantizeLSTM":
            outs = self.recurrent(node, "LSTM", ins, attrs, where, quantized=True)
        elif node.domain not in ("", "ai.onnx"):
            raise self.err(f"{where}: operator domain {node.domain!r} is not supported")
        elif all(isinstance(v, np.ndarray) or v is None for v in ins):
            if op not in _FOLDABLE:
                raise self.err(f"{where}: operator {op} is not supported")
            outs = self.fold(node, ins, where)
        else:
            outs = self.symbolic(node, op, ins, attrs, where)
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        for out_name, v in zip(node.output, outs):
            if out_name:
                env[out_name] = v

    def fold(self, node, ins, where):
        from onnx.reference import ReferenceEvaluator
        op = node.op_type
        attrs = self.attrs(node)
        # the size of the result before computing it: a few bytes of shapes can ask for
        # gigabytes (a broadcast of [2^14, 1] + [1, 2^14]), one node or many
        size = _fold_size(op, ins, attrs)
        if size is None:
            raise self.err(f"{where}: cannot evaluate this constant expression (inputs of "
                           f"shapes {[None if v is None else list(v.shape) for v in ins]})")
        if size > _MAX_FOLD_ELEMENTS:
            raise self.err(f"{where}: its constant result would have {size} elements (more "
                           f"than {_MAX_FOLD_ELEMENTS}): refused")
        self.folded += size
        if self.folded > _MAX_FOLD_TOTAL:
            raise self.err(f"{where}: the folded constants would hold {self.folded} elements "
                           f"in all (more than {_MAX_FOLD_TOTAL}): refused")
        del attrs
        feeds = {n: v for n, v in zip(node.input, ins) if n}
        try:
            res = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
        except Exception as e:  # onnx's evaluator raises many kinds on malformed nodes
            raise self.err(f"{where}: cannot evaluate this constant expression "
                           f"({type(e).__name__}: {e})") from e
        res = [np.asarray(r) for r in res]
        return res[0] if len(res) == 1 else res

    def symbolic(self, node, op, ins, attrs, where):
        """Ops on values that depend on the graph inputs."""
        x = ins[0]
        described = ", ".join(_describe(v) if v is not None else "nothing" for v in ins)
        bad = lambda: self.err(f"{where}: fusedrnn cannot import this use of {op} on "  # noqa
                               f"{described}")
        # shape arithmetic: anything computed from Shape() of a runtime tensor; `dims` lists
        # what is known of each element (an int, or an axis label such as 'T'), else None
        if op in ("Shape", "Size"):
            return _Sym("shape", dims=self.shape_dims(x, attrs) if op == "Shape" else None)
        syms = [v for v in ins if isinstance(v, _Sym)]
        if all(v.kind == "shape" for v in syms) and op in {
                "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Add", "Sub", "Mul",
                "Div", "Identity", "Reshape", "Equal", "Where", "Range"}:
            return _Sym("shape", dims=self.shape_op(op, ins, attrs))
        # a constant-filled tensor: its value, and its dims where the shape gives them (a
        # recurrent node checks an initial state's shape against them); the ops that pass a
        # fill on below forget them, except Identity and Cast
        if op == "ConstantOfShape" and isinstance(x, _Sym) and x.kind == "shape":
            value = attrs.get("value")
            value = 0.0 if value is None else float(np.asarray(value).reshape(-1)[0])
            return _Sym("fill", value=value, dims=x.dims)
        if op == "Expand" and isinstance(x, np.ndarray):
            if x.size and np.all(x == x.reshape(-1)[0]):
                shape = ins[1].dims if isinstance(ins[1], _Sym) and ins[1].kind == "shape" \
                    else None
                return _Sym("fill", value=float(x.reshape(-1)[0]),
                            dims=None if shape is None else _expanded(x.shape, shape))
            raise bad()
        if isinstance(x, _Sym) and x.kind == "fill" and op in (
                "Slice", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Identity", "Expand",
                "Cast", "Concat") and all(
                    not isinstance(v, _Sym) or v.kind in ("shape", "fill") for v in ins[1:]):
            if op == "Concat" and any(isinstance(v, _Sym) and v.kind == "fill" and
                                      v.value != x.value for v in ins):
                raise bad()
            dims = x.dims if op in ("Identity", "Cast") else \
                _sliced(x.dims, ins[1:]) if op == "Slice" else None
            return _Sym("fill", value=x.value, dims=dims)
        if op == "Identity":
            return x
        if op == "Cast" and isinstance(x, _Sym) and x.kind in ("input", "lens"):
            to = attrs.get("to")
            if to in (6, 7):  # INT32, INT64
                return x if x.kind == "lens" else _Sym("input", name=x.name)
            raise bad()
        if op == "Transpose" and isinstance(x, _Sym):
            perm = attrs.get("perm")
            if x.kind == "input":
                if perm is None:
                    raise bad()
                return _Sym("seq", src=("input", x.name), axes=tuple(
                    "F" if p == 2 else f"{x.name}:{p}" for p in perm), head=None)
            if x.kind == "seq":
                if perm is None:
                    perm = list(range(len(x.axes)))[::-1]
                if sorted(perm) != list(range(len(x.axes))):
                    raise bad()
                return _Sym("seq", src=x.src, axes=tuple(x.axes[p] for p in perm), head=x.head)
            raise bad()
        if op in ("Squeeze", "Unsqueeze", "Reshape") and isinstance(x, _Sym) and x.kind == "seq":
            axes = list(x.axes)
            if op == "Squeeze":
                sq = attrs.get("axes") if len(ins) < 2 or ins[1] is None else ins[1].tolist()
                if sq is None or len(sq) != 1:
                    raise bad()
                a = sq[0] % len(axes)
                if axes[a] != "D" or x.src[2] != 1:
                    raise bad()
                del axes[a]
                axes = ["F" if v == "H" else v for v in axes]
                return _Sym("seq", src=x.src, axes=tuple(axes), head=x.head)
            shape = None
            if op == "Reshape" and isinstance(ins[1], np.ndarray):
                shape = ins[1].tolist()
            elif op == "Reshape" and isinstance(ins[1], _Sym) and ins[1].kind == "shape" and \
                    ins[1].dims is not None and len(ins[1].dims) == 3 and len(axes) == 4 and \
                    ins[1].dims[:2] == axes[:2]:
                shape = [0, 0, ins[1].dims[2]]  # [T, N, D*H] computed from Shape()
            if shape is not None:
                # [T, N, D, H] -> [T, N, D*H]: keep the first two axes (0 = copy, or the
                # exporter's static size, or one -1), merge the last two
                if len(axes) == 4 and axes[2:] == ["D", "H"] and len(shape) == 3 and \
                        shape[2] in (-1, x.src[2] * x.src[3]) and shape.count(-1) <= 1 and \
                        all(v == -1 or v >= 0 for v in shape[:2]):
                    return _Sym("seq", src=x.src, axes=(axes[0], axes[1], "F"), head=x.head)
            raise bad()
        if op == "Gather" and isinstance(x, np.ndarray) and isinstance(ins[1], _Sym) and \
                ins[1].kind == "input" and attrs.get("axis", 0) == 0 and x.ndim == 2:
            return _Sym("seq", src=("embed", ins[1].name, x), axes=(f"{ins[1].name}:0",
                                                                     f"{ins[1].name}:1", "F"),
                        head=None)
        if op == "MatMul" and isinstance(x, _Sym) and x.kind == "seq" and \
                isinstance(ins[1], np.ndarray) and ins[1].ndim == 2 and x.head is None and \
                x.axes[-1] == "F" and isinstance(x.src[0], int):
            return _Sym("seq", src=x.src, axes=x.axes, head=(ins[1], None))
        if op == "Add" and isinstance(x, _Sym) and x.kind == "seq" and x.head is not None and \
                x.head[1] is None and isinstance(ins[1], np.ndarray):
            return _Sym("seq", src=x.src, axes=x.axes, head=(x.head[0], ins[1]))
        if op == "Add" and isinstance(ins[1], _Sym) and isinstance(x, np.ndarray):
            return self.symbolic(node, op, [ins[1], x], attrs, where)
        if op == "Slice" and isinstance(x, _Sym) and x.kind in ("input", "state_in"):
            starts, ends = ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 and ins[3] is not None else np.array([0])
            steps = ins[4] if len(ins) > 4 and ins[4] is not None else np.array([1])
            if any(not isinstance(v, np.ndarray) for v in (starts, ends, axes, steps)) or \
                    axes.tolist() != [0] or steps.tolist() != [1]:
                raise bad()
            base = x.start if x.kind == "state_in" else 0
            return _Sym("state_in", name=x.name, start=base + int(starts[0]),
                        end=base + int(ends[0]))
        if op == "Concat" and all(isinstance(v, _Sym) and v.kind == "state" for v in ins) and \
                attrs.get("axis") == 0 and len({v.which for v in ins}) == 1:
            ops = [k for v in ins for k in v.ops]
            return _Sym("state", which=ins[0].which, ops=ops,
                        kept=[e for v in ins for e in getattr(v, "kept", [])])
        # export()'s h_n = Where(lengths == 0, h0 rows, Y_h) (fusedrnn's final state of a
        # length-0 sequence: its initial state), checked against the layer in build()
        if op == "Equal" and isinstance(x, _Sym) and x.kind == "input" and \
                isinstance(ins[1], np.ndarray) and ins[1].size == 1 and ins[1].ndim <= 1 and \
                ins[1].dtype.kind in "iu" and int(ins[1].reshape(-1)[0]) == 0:
            return _Sym("len0", name=x.name, axes=None)
        if op == "Unsqueeze" and isinstance(x, _Sym) and x.kind == "len0" and x.axes is None \
                and isinstance(ins[1] if len(ins) > 1 else None, np.ndarray) and \
                ins[1].tolist() == [0, 2]:
            return _Sym("len0", name=x.name, axes=(0, 2))
        if op == "Where" and len(ins) == 3 and isinstance(ins[1], _Sym) and \
                ins[1].kind == "input":
            ins = [x, _Sym("state_in", name=ins[1].name, start=0, end=None), ins[2]]
        if op == "Where" and isinstance(x, _Sym) and x.kind == "len0" and x.axes == (0, 2) and \
                isinstance(ins[1], _Sym) and ins[1].kind == "state_in" and \
                isinstance(ins[2], _Sym) and ins[2].kind == "state" and len(ins[2].ops) == 1 \
                and not getattr(ins[2], "kept", []):
            v = ins[2]
            return _Sym("state", which=v.which, ops=v.ops, kept=[(v.ops[0], x.name, ins[1])])
        raise bad()

    def shape_dims(self, x, attrs):
        if isinstance(x, _Sym) and x.kind == "input":
            # a graph input's axes as labels, as a sequence's: state_shape() reads the sizes
            # the file declares for them
            dims = self.input_dims(x.name)
            if dims is None:
                return None
            dims = [f"{x.name}:{i}" for i in range(len(dims))]
            n = len(dims)
            start, end = attrs.get("start", 0), attrs.get("end", n)
            return dims[slice(start % n if start < 0 else start, end % n if end < 0 else end)]
        if not (isinstance(x, _Sym) and x.kind == "seq"):
            return None
        known = {"D": x.src[2] if isinstance(x.src[0], int) else None,
                 "H": x.src[3] if isinstance(x.src[0], int) else None}
        if isinstance(x.src[0], int):
            known["F"] = x.src[2] * x.src[3]
        dims = [known.get(a) or a for a in x.axes]
        n = len(dims)
        start, end = attrs.get("start", 0), attrs.get("end", n)
        return dims[slice(start % n if start < 0 else start, end % n if end < 0 else end)]

    @staticmethod
    def shape_op(op, ins, attrs):
        """Known elements of shape arithmetic (1-D vectors of ints and labels), else None."""
        def dims(v):
            if isinstance(v, np.ndarray):
                return v.reshape(-1).tolist() if v.ndim <= 1 else None
            return v.dims if v is not None else None
        a = dims(ins[0])
        if a is None:
            return None
        if op in ("Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape"):
            return a
        if op == "Concat":
            parts = [dims(v) for v in ins]
            return None if any(p is None for p in parts) else [e for p in parts for e in p]
        if op == "Gather" and isinstance(ins[1], np.ndarray) and ins[1].ndim <= 1:
            try:
                return [a[int(i)] for i in ins[1].reshape(-1)]
            except IndexError:
                return None
        if op == "Slice" and all(isinstance(v, np.ndarray) for v in ins[1:]) and \
                (len(ins) < 4 or ins[3].tolist() in ([0], [-1])) and \
                (len(ins) < 5 or ins[4].tolist() == [1]):
            return a[slice(int(ins[1][0]), int(min(ins[2][0], len(a))))]
        if op in ("Mul", "Add") and len(ins) == 2:
            b = dims(ins[1])
            if b is not None and len(a) == len(b) and all(isinstance(e, int) for e in a + b):
                return [x * y if op == "Mul" else x + y for x, y in zip(a, b)]
        return None

    # -- recurrent nodes ------------------------------------------------------------------------
    def input_dims(self, name):
        """The declared dims of graph input `name` (an int, or None where symbolic or absent);
        None without a declared shape."""
        for i in self.proto.graph.input:
            if i.name == name:
                t = i.type.tensor_type
                if not t.HasField("shape"):
                    return None
                return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return None

    def batch_size(self, X):
        """The batch size of a recurrent node's input X (a "seq") where the file fixes it: the
        previous node's, or the declared size of the graph input's axis that is X's batch
        axis; else None."""
        if isinstance(X.src[0], int):
            return self.rec[X.src[0]]["N"] if X.src[0] < len(self.rec) else None
        return self.label_size(X.axes[1]) if str(X.axes[1]).startswith(f"{X.src[1]}:") \
            else None

    def label_size(self, d):
        """A dim of shape arithmetic as an int: an int, or the declared size of a graph input's
        axis labelled "name:i"; None where unknown."""
        if isinstance(d, (int, np.integer)):
            return int(d)
        name, _, axis = str(d).rpartition(":")
        dims = self.input_dims(name) if axis.isdigit() else None
        return dims[int(axis)] if dims is not None and int(axis) < len(dims) else None

    def state_shape(self, s):
        """The shape of a recurrent node's initial-state input `s` as far as the file fixes it
        (a list of ints, None for a size known only at run time), or None where nothing is
        known (absent, or a value the node refuses anyway): a constant's shape, a constant fill's
        dims, a graph input's declared shape (its rows start:end for a slice of it)."""
        if isinstance(s, np.ndarray):
            return list(s.shape)
        if not isinstance(s, _Sym):
            return None
        if s.kind == "fill":
            dims = getattr(s, "dims", None)
            return None if dims is None else [self.label_size(d) for d in dims]
        if s.kind not in ("input", "state_in"):
            return None
        dims = self.input_dims(s.name)
        if dims is None or not dims:
            return dims
        start, end = (0, None) if s.kind == "input" else (s.start, s.end)
        rows = dims[0]
        if rows is not None and start >= 0 and (end is None or end >= 0):
            rows = max(0, min(rows, rows if end is None else end) - start)
        else:   # (negative bounds, an unknown count: the rows are checked by build())
            rows = None
        return [rows] + dims[1:]

    def recurrent(self, node, op, ins, attrs, where, quantized):
        k = len(self.rec)
        for a in attrs:
            if a not in _ALLOWED_ATTRS[op]:
                raise self.err(f"{where}: attribute {a!r} is not supported")
        direction = attrs.get("direction", "forward")
        if direction not in ("forward", "bidirectional"):
            raise self.err(f"{where}: attribute 'direction' = {direction!r}: fusedrnn layers are "
                           f"forward or bidirectional (a lone reverse direction is not supported)")
        D = 2 if direction == "bidirectional" else 1
        if attrs.get("layout", 0) != 0:
            raise self.err(f"{where}: attribute 'layout' = {attrs['layout']}: only layout=0 "
                           f"(time-major [T, N, C]) is supported")
        if "clip" in attrs:
            raise self.err(f"{where}: attribute 'clip' = {attrs['clip']}: fusedrnn does not clip "
                           f"pre-activations (it would not compute the same model)")
        if attrs.get("input_forget", 0) != 0:
            raise self.err(f"{where}: attribute 'input_forget' = 1 (coupled input and forget "
                           f"gates) is not supported")
        for a in ("activation_alpha", "activation_beta"):
            if a in attrs:
                raise self.err(f"{where}: attribute {a!r} is not supported (only the default "
                               f"activations without parameters)")
        acts = [a.lower() for a in attrs.get("activations", [])]
        nonlinearity = "tanh"
        if op == "RNN":
            if acts and (len(acts) != D or len(set(acts)) != 1 or acts[0] not in ("tanh", "relu")):
                raise self.err(f"{where}: attribute 'activations' = {attrs['activations']}: "
                               f"fusedrnn's RNN runs Tanh or Relu, the same in both directions")
            nonlinearity = acts[0] if acts else "tanh"
        elif acts and acts != _ACTIVATIONS[op] * D:
            raise self.err(f"{where}: attribute 'activations' = {attrs['activations']}: only "
                           f"the defaults {[a.capitalize() for a in _ACTIVATIONS[op]] * D} are "
                           f"supported")
        lbr = attrs.get("linear_before_reset", 0)
        if lbr not in (0, 1):
            raise self.err(f"{where}: attribute 'linear_before_reset' = {lbr}")
        G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]

        def const(i, what):
            v = ins[i] if i < len(ins) else None
            if v is None:
                return None
            if not isinstance(v, np.ndarray):
                raise self.err(f"{where}: input {i} ({what}) must be a constant, got "
                               f"{_describe(v)}")
            return v

        names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
        if quantized:
            names += ["W_scale", "W_zero_point", "R_scale", "R_zero_point"]
            W, R = const(1, "W"), const(2, "R")
            if W is None or R is None or W.dtype not in (np.int8, np.uint8) or \
                    R.dtype not in (np.int8, np.uint8) or W.ndim != 3 or R.ndim != 3:
                raise self.err(f"{where}: W and R must be int8/uint8 constants [D, C, 4H] and "
                               f"[D, H, 4H]")
            deq = []
            for w, s_i, z_i, nm in ((W, 8, 9, "W"), (R, 10, 11, "R")):
                s, z = const(s_i, nm + "_scale"), const(z_i, nm + "_zero_point")
                if s is None or z is None:
                    raise self.err(f"{where}: {nm}_scale and {nm}_zero_point are required")
                if s.dtype != np.float32 or s.shape not in ((w.shape[0],), (w.shape[0],
                                                                             w.shape[2])) \
                        or z.shape != s.shape or z.dtype != w.dtype:
                    raise self.err(f"{where}: {nm}_scale must be float32 [D] or [D, 4H] and "
                                   f"{nm}_zero_point the same shape in {w.dtype}")
                if s.ndim == 1:
                    s, z = s[:, None, None], z[:, None, None]
                else:
                    s, z = s[:, None, :], z[:, None, :]
                # [D, C, 4H] -> ONNX's [D, 4H, C]; (q - zp) is exact in float32 and the product
                # is the one rounding, as in DequantizeLinear
                deq.append(np.ascontiguousarray(
                    ((w.astype(np.int32) - z.astype(np.int32)).astype(np.float32)
                     * s).transpose(0, 2, 1)))
            W, R = deq
        else:
            W, R = const(1, "W"), const(2, "R")
        B, P = const(3, "B"), const(7, "P")
        if W is None or R is None:
            raise self.err(f"{where}: inputs W and R are required")
        if W.dtype not in (np.float32, np.float64):
            raise self.err(f"{where}: W must be float32 or float64, got {W.dtype}")
        H = attrs.get("hidden_size", R.shape[-1] if R.ndim == 3 else 0)
        if W.ndim != 3 or W.shape[0] != D or W.shape[1] != G * H:
            raise self.err(f"{where}: input W must have shape [{D}, {G}*hidden_size={G * H}, C], "
                           f"got {list(W.shape)}")
        C = W.shape[2]
        for nm, a, shape in (("R", R, (D, G * H, H)), ("B", B, (D, 2 * G * H)),
                             ("P", P, (D, 3 * H))):
            if a is None:
                continue
            if a.shape != shape:
                raise self.err(f"{where}: input {nm} must have shape {list(shape)}, got "
                               f"{list(a.shape)}")
            if a.dtype != W.dtype:
                raise self.err(f"{where}: input {nm} has dtype {a.dtype}, W {W.dtype}")
        if P is not None and op != "LSTM":
            raise self.err(f"{where}: peepholes on {op}")
        X = ins[0]
        if not isinstance(X, _Sym) or X.kind not in ("seq", "input") or \
                (X.kind == "seq" and X.head is not None):
            raise self.err(f"{where}: input X must be the sequence (the graph input or the "
                           f"previous layer's output), got {_describe(X)}")
        if X.kind == "input":
            X = _Sym("seq", src=("input", X.name), axes=(f"{X.name}:0", f"{X.name}:1", "F"),
                     head=None)
        lens = ins[4] if len(ins) > 4 else None
        if lens is not None:
            if isinstance(lens, _Sym) and lens.kind == "input":
                lens = _Sym("lens", name=lens.name)
            if not (isinstance(lens, _Sym) and lens.kind == "lens"):
                raise self.err(f"{where}: input sequence_lens must come from a graph input, got "
                               f"{_describe(lens)}")
        N = self.batch_size(X)
        for i, nm in ((5, "initial_h"), (6, "initial_c")):
            # the initial states' shapes, checked as ONNX Runtime checks them, before anything
            # is built -- constant zeros too, which are then dropped as the default: a file
            # whose zeros have another shape is invalid, and ORT refuses it (torch's dynamo
            # exporter writes initial_c [1, N, hidden_size] for an LSTM with projection, whose
            # ONNX hidden_size is proj_size; taken as the default it imported silently)
            s = ins[i] if len(ins) > i else None
            shape = self.state_shape(s)
            if shape is None:
                continue
            want = [D, N, H]
            if len(shape) != 3 or any(a is not None and b is not None and a != b
                                      for a, b in zip(shape, want)):
                show = lambda v, unknown: "[" + ", ".join(  # noqa: E731
                    unknown if d is None else str(d) for d in v) + "]"
                what = "a constant" if isinstance(s, np.ndarray) else _describe(s)
                raise self.err(f"{where}: input {nm} must have shape [num_directions, batch, "
                               f"hidden_size] = {show(want, 'batch')}, got {show(shape, '?')} "
                               f"({what}; ONNX Runtime refuses it)")
            if N is None:
                N = shape[1]   # (the other state, and the next layer, must have it too)
        states = []
        for i, nm in ((5, "initial_h"), (6, "initial_c")):
            s = ins[i] if len(ins) > i else None
            if isinstance(s, _Sym) and s.kind == "input":
                s = _Sym("state_in", name=s.name, start=0, end=None)
            if isinstance(s, np.ndarray) and s.size and not np.any(s):
                s = None  # constant zeros: the default
            if isinstance(s, _Sym) and s.kind == "fill" and s.value == 0.0:
                s = None
            if s is not None and not (isinstance(s, _Sym) and s.kind == "state_in"):
                raise self.err(f"{where}: input {nm} must be zeros or come from a graph input, "
                               f"got {_describe(s)}")
            states.append(s)
        if op != "LSTM" and states[1] is not None:
            raise self.err(f"{where}: {op} has no initial_c")
        rec = dict(node=node, where=where, op=op, D=D, H=H, C=C, W=W, R=R, B=B, P=P, N=N,
                   X=X, lens=lens, states=states, variant="reset_after" if lbr else
                   "reset_before", nonlinearity=nonlinearity, quantized=quantized)
        self.rec.append(rec)
        outs = [_Sym("seq", src=(k, "Y", D, H), axes=("T", "D", "N", "H"), head=None),
                _Sym("state", which="h", ops=[k]), _Sym("state", which="c", ops=[k])]
        return outs[:3 if op == "LSTM" else 2]

    # -- model ------------------------------------------------------------------------------------
    def build(self, env, outputs):
        recs = self.rec
        if not recs:
            raise self.err("the graph has no LSTM, GRU, RNN or DynamicQuantizeLSTM node")
        r0 = recs[0]
        op, D, H = r0["op"], r0["D"], r0["H"]
        for k, r in enumerate(recs):
            for key in ("op", "D", "H", "variant", "nonlinearity"):
                if r[key] != r0[key]:
                    raise self.err(f"{r['where']}: its {key} ({r[key]}) differs from the first "
                                   f"recurrent node's ({r0[key]}): fusedrnn stacks are uniform")
            if (r["lens"] is None) != (r0["lens"] is None) or \
                    (r["lens"] is not None and r["lens"].name != r0["lens"].name):
                raise self.err(f"{r['where']}: every layer must use the same sequence_lens")
            if k > 0:
                X = r["X"]
                if X.src[0] != k - 1 or X.axes != ("T", "N", "F"):
                    raise self.err(f"{r['where']}: input X must be the previous recurrent "
                                   f"node's output Y as [T, N, D*H], got {X.src[:2]} with axes "
                                   f"{X.axes}")
                if r["C"] != D * H:
                    raise self.err(f"{r['where']}: W has {r['C']} input features, the "
                                   f"previous layer gives {D * H}")
        L = len(recs)
        X0 = r0["X"]
        if X0.axes[2] != "F" or len(X0.axes) != 3:
            raise self.err(f"{r0['where']}: input X must be [T, N, C]")
        in_name = X0.src[1]
        embed = X0.src[2] if X0.src[0] == "embed" else None
        time_axis = X0.axes[0]
        batch_first = time_axis == f"{in_name}:1"
        if {X0.axes[0], X0.axes[1]} != {f"{in_name}:0", f"{in_name}:1"}:
            raise self.err(f"{r0['where']}: input X is not a transposition of graph input "
                           f"{in_name!r}")
        # state inputs
        state_names = [None, None]
        for j, nm in enumerate(("initial_h", "initial_c")):
            # forward()'s state is the whole [L*D, N, .] tensor, fed to every layer: a layer
            # starting from zeros beside one reading the input would silently get the
            # input's rows too
            fed = [r["where"] for r in recs if r["states"][j] is not None]
            if fed and len(fed) != L:
                zeros = [r["where"] for r in recs if r["states"][j] is None]
                raise self.err(f"{zeros[0]}: its {nm} is zeros while {fed[0]} takes its "
                               f"{nm} from a graph input: fusedrnn's state feeds every layer "
                               f"or none (give every layer its rows of the input, or none)")
        for k, r in enumerate(recs):
            for j, s in enumerate(r["states"]):
                if s is None:
                    continue
                end = s.end if s.end is not None else D if L == 1 else None
                if s.start != k * D or end != (k + 1) * D:
                    raise self.err(f"{r['where']}: its initial state must be rows "
                                   f"{k * D}:{(k + 1) * D} of a graph input, got "
                                   f"{s.start}:{s.end}")
                if state_names[j] not in (None, s.name):
                    raise self.err(f"{r['where']}: initial states come from two inputs")
                state_names[j] = s.name
        # outputs
        head, seq_out = None, None
        for name in outputs:
            v = env.get(name)
            if isinstance(v, _Sym) and v.kind == "seq":
                if v.src[0] != L - 1 or len(v.axes) != 3 or v.axes[2] != "F" or \
                        {v.axes[0], v.axes[1]} != {"T", "N"}:
                    raise self.err(f"graph output {name!r} is not the last layer's output as "
                                   f"[T, N, features] or [N, T, features]")
                if seq_out is not None:
                    raise self.err(f"graph output {name!r}: two sequence outputs")
                seq_out, head = v, v.head
                if (v.axes[0] == "N") != batch_first:
                    raise self.err(f"graph output {name!r}: its layout "
                                   f"({'batch' if v.axes[0] == 'N' else 'time'}-major) differs "
                                   f"from the input's")
            elif isinstance(v, _Sym) and v.kind == "state":
                if v.ops != list(range(len(v.ops))) or len(v.ops) not in (L,):
                    if not (len(v.ops) == 1 and L == 1):
                        raise self.err(f"graph output {name!r} holds the final states of layers "
                                       f"{v.ops}, not of all {L} layers in order")
                j = 0 if v.which == "h" else 1
                for k, lens_name, s in getattr(v, "kept", []):
                    r, mine = recs[k], recs[k]["states"][j]
                    rows = lambda t: (t.name, t.start, D if t.end is None and L == 1  # noqa
                                      else t.end)
                    if r["lens"] is None or r["lens"].name != lens_name or mine is None or \
                            rows(s) != rows(mine):
                        raise self.err(f"graph output {name!r}: the Where(lengths == 0, ...) "
                                       f"after {r['where']} must pick that node's own "
                                       f"initial_{v.which} by its own sequence_lens")
            else:
                what = _describe(v) if v is not None else "missing"
                raise self.err(f"graph output {name!r} is {what}, "
                               f"not a sequence output or final state fusedrnn computes")
        if seq_out is None:
            raise self.err("the graph has no sequence output (the last layer's Y)")
        dtype = r0["W"].dtype
        if r0["quantized"]:
            dtype = np.dtype(np.float32)
        for r in recs:
            if r["W"].dtype != dtype:
                raise self.err(f"{r['where']}: dtype {r['W'].dtype} differs from {dtype}")
        bias = any(r["B"] is not None for r in recs) or head is not None or embed is not None
        peep = any(r["P"] is not None for r in recs)
        kw = dict(num_layers=L, bidirectional=D == 2, dtype=dtype.name,
                  dropout=self.dropout(op, L))
        if op == "LSTM":
            kw["peepholes"] = peep
        elif op == "GRU":
            kw["variant"] = r0["variant"]
        else:
            kw["nonlinearity"] = r0["nonlinearity"]
        state = {}
        if embed is not None or head is not None:
            if batch_first:
                raise self.err("a batch-major graph with an embedding or a head: "
                               "RecurrentModel is time-major")
            if head is None:
                raise self.err("an embedding without a head: fusedrnn's RecurrentModel needs "
                               "the per-step Linear head")
            hw, hb = head
            if hw.shape[0] != D * H or hw.dtype != dtype or \
                    (hb is not None and (hb.shape not in ((hw.shape[1],), (1, hw.shape[1]),
                                                          (1, 1, hw.shape[1]))
                                         or hb.dtype != dtype)):
                raise self.err(f"the head's MatMul weight must be [{D * H}, outputs] and its "
                               f"bias [outputs], in {dtype}")
            if embed is not None:
                if embed.dtype != dtype:
                    raise self.err(f"the embedding table has dtype {embed.dtype}, not {dtype}")
                kw.update(vocab_size=embed.shape[0], embed_dim=embed.shape[1])
            else:
                kw.update(input_size=r0["C"])
            model = RecurrentModel(op.lower(), hidden_size=H, output_size=hw.shape[1], **kw)
            state["head.weight"] = np.ascontiguousarray(hw.T)
            state["head.bias"] = np.zeros(hw.shape[1], dtype) if hb is None else \
                np.ascontiguousarray(hb.reshape(-1))
            if embed is not None:
                state["embed.weight"] = np.ascontiguousarray(embed)
            prefix = "rnn."
        else:
            cls = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}[op]
            model = cls(r0["C"], H, bias=bias, batch_first=batch_first, **kw)
            prefix = ""
        order = _inverse(_TO_ONNX[op])
        for k, r in enumerate(recs):
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                state[prefix + "weight_ih" + sfx] = _blocks(r["W"][d], order)
                state[prefix + "weight_hh" + sfx] = _blocks(r["R"][d], order)
                if bias:
                    b = r["B"][d] if r["B"] is not None else np.zeros(2 * len(order) * H, dtype)
                    b = b.astype(dtype, copy=False)
                    state[prefix + "bias_ih" + sfx] = _blocks(b[:len(order) * H], order)
                    state[prefix + "bias_hh" + sfx] = _blocks(b[len(order) * H:], order)
                if peep:
                    p = r["P"][d].reshape(3, H) if r["P"] is not None else np.zeros((3, H), dtype)
                    state[prefix + "weight_peep" + sfx] = np.ascontiguousarray(
                        p[list(_PEEP_TO_ONNX)]).astype(dtype, copy=False)
        model.load_state_dict({k: np.ascontiguousarray(v) for k, v in state.items()})
        model.eval()
        model.onnx_inputs = {"x": in_name, "lengths": r0["lens"].name if r0["lens"] else None,
                             "h0": state_names[0], "c0": state_names[1]}
        return model

    def dropout(self, op, L):
        """Dropout between layers from fusedrnn's own metadata (training-only: not in the
        graph); 0 for other producers."""
        props = {p.key: p.value for p in self.proto.metadata_props}
        try:
            cfg = json.loads(props.get("fusedrnn.config", "{}"))
        except ValueError:
            return 0.0
        if not isinstance(cfg, dict) or L < 2:
            return 0.0
        if cfg.get("type") == "RecurrentModel" and cfg.get("cell") != op.lower():
            return 0.0
        if cfg.get("type") not in ("RecurrentModel", op):
            return 0.0
        p = cfg.get("dropout")
        return float(p) if isinstance(p, float) and 0.0 <= p < 1.0 else 0.0
