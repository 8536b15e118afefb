"""Fixtures for the C++ tests and examples, written by the Python package.

    python tests/cpp/make_fixtures.py DIR

For every case of a grid (cell and GRU/RNN variant x layers x bidirectional x token/dense
input x LSTM projection/peepholes x float32/float64, plus bare LSTM/GRU/RNN layers with and
without bias) it writes

    DIR/<case>.safetensors      the checkpoint (fusedrnn.save, user metadata {"case": name})
    DIR/<case>.io.safetensors   inputs and the Python outputs (fusedrnn.io.save_tensors):
                                x [T, N, C] or tokens [T, N] (I64), lengths [N] (I64),
                                h0/c0 (some cases), y (the model's output), y_rnn (the recurrent
                                stack's output), h_n, c_n; metadata: the instruction set the
                                Python kernels ran ("isa"), the case name
Cases named ``*-bf16`` (float32 models of every cell, stacked, bidirectional, token and dense
input, bare layers) hold the outputs of the model frozen at ``precision="bfloat16"``
(fusedrnn.models.freeze) and metadata "precision": "bfloat16"; the C++ side loads them with
Precision::bfloat16. Cases named ``*-int8`` likewise at ``precision="int8"`` (metadata
"precision": "int8"; Precision::int8). DIR/cases.txt lists the cases. tests/cpp/test_python_parity.cc loads each checkpoint with
fusedrnn::Model, runs the same inputs and compares.

For the examples it also trains two small models briefly (a few seconds, seeded):
    DIR/charlm.safetensors   a character LSTM language model (RecurrentModel with vocab_size,
                             output_size = vocab) with user metadata {"vocab": [one-character
                             strings in index order]}, as `fusedrnn train` writes it;
    DIR/sine_gru.safetensors a dense-input GRU RecurrentModel that predicts the next sample of
                             a sine wave (input_size = output_size = 1).
and for the C++ CTC decoding (test_python_parity), a speech-like recogniser of `fusedrnn train
--task recognise`, trained briefly:
    DIR/ctc_recognise.safetensors     its CtcRecognizer checkpoint (bidirectional LSTM + head to
                                      11 classes, blank 0), saved as the task saves it;
    DIR/ctc_recognise.io.safetensors  held-out utterances x [T, N, F] (zero-padded), lengths [N],
                                      the Python logits y [T, N, 11], and Python's greedy decoding
                                      (fusedrnn.ctc.ctc_greedy_decode): labels (concatenated) and
                                      label_counts [N].
"""
from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np

import fusedrnn
from fusedrnn import losses, optim
from fusedrnn.io import save_tensors
import fusedrnn.lowp
from fusedrnn.models import RecurrentModel, freeze

T, N = 7, 3
LENGTHS = np.array([T, 4, 0], dtype=np.int64)  # full, partial, empty


def grid():
    """(name, constructor kwargs or a bare layer spec, token input?) for every case."""
    cells = [("lstm", {}), ("gru", {"variant": "reset_after"}),
             ("gru", {"variant": "reset_before"}), ("rnn", {"nonlinearity": "tanh"}),
             ("rnn", {"nonlinearity": "relu"})]
    lstm_opts = [{}, {"proj_size": 3}, {"peepholes": True}, {"proj_size": 3, "peepholes": True}]
    for (cell, kw), layers, bidir, tokens, dtype in itertools.product(
            cells, (1, 2), (False, True), (False, True), ("float32", "float64")):
        for extra in (lstm_opts if cell == "lstm" else [{}]):
            kwargs = dict(kw, **extra)
            name = "-".join([cell] + [str(v) for v in kw.values()] +
                            [f"L{layers}", "bi" if bidir else "uni", "tok" if tokens else "dense"] +
                            [k if v is True else f"{k}{v}" for k, v in extra.items()] + [dtype])
            yield name, dict(cell=cell, num_layers=layers, bidirectional=bidir, dtype=dtype,
                             **kwargs), tokens
    # A larger case: the head's K spans more than one 128-wide chunk of the micro-kernel, H more
    # than one 64-unit block.
    for dtype in ("float32", "float64"):
        yield f"lstm-big-{dtype}", dict(cell="lstm", num_layers=2, bidirectional=True,
                                        hidden_size=150, dtype=dtype), False
    # Bare layers (parameters without the "rnn." prefix), with and without bias.
    for layer, kw in (("LSTM", {"proj_size": 2, "peepholes": True}), ("GRU", {"variant": "reset_before"}),
                      ("RNN", {"nonlinearity": "relu"})):
        for bias, bidir in ((True, False), (False, True)):
            for dtype in ("float32", "float64"):
                name = f"bare-{layer}-{'bias' if bias else 'nobias'}-{'bi' if bidir else 'uni'}-{dtype}"
                yield name, dict(layer=layer, bias=bias, bidirectional=bidir, num_layers=2,
                                 dtype=dtype, **kw), False
    # Issue 19's options (the regularised kernels, evaluation: zoneout's expectation, the
    # dropouts off): LSTM layer norm both placements, GRU haste, zoneout, dropout-only layers
    # (the regularised kernel all the same), stacked, bidirectional, token input, bare layers.
    reg = [("lstm", {"layer_norm": "haste", "zoneout_h": 0.1, "zoneout_c": 0.2}),
           ("lstm", {"layer_norm": "tfa", "ln_eps": 1e-3}),
           ("lstm", {"recurrent_dropout": 0.2, "weight_drop": 0.3}),
           ("gru", {"layer_norm": "haste", "zoneout_h": 0.15}),
           ("gru", {"recurrent_dropout": 0.2, "input_dropout": 0.1}),
           # the regularised kernel projects too
           ("lstm", {"layer_norm": "haste", "zoneout_h": 0.1, "zoneout_c": 0.2,
                     "proj_size": 3}),
           # the dropouts alone run the plain kernels, so they combine with these
           ("lstm", {"weight_drop": 0.3, "proj_size": 3, "peepholes": True}),
           ("gru", {"input_dropout": 0.2, "weight_drop": 0.3, "variant": "reset_before"})]
    for (cell, kw), (layers, bidir, tokens), dtype in itertools.product(
            reg, ((2, True, False), (1, False, True)), ("float32", "float64")):
        name = "-".join([cell, "reg"] + [f"{k}{v}" for k, v in kw.items()] +
                        [f"L{layers}", "bi" if bidir else "uni", "tok" if tokens else "dense",
                         dtype])
        yield name, dict(cell=cell, num_layers=layers, bidirectional=bidir, dtype=dtype,
                         **kw), tokens
    for layer, kw in (("LSTM", {"layer_norm": "tfa", "zoneout_c": 0.3}),
                      ("GRU", {"layer_norm": "haste", "zoneout_h": 0.2})):
        for dtype in ("float32", "float64"):
            yield f"bare-{layer}-reg-bi-{dtype}", dict(layer=layer, bias=True,
                                                       bidirectional=True, num_layers=2,
                                                       dtype=dtype, **kw), False
    # bf16 inference (precision="bfloat16"): every cell, stacked + bidirectional + dense and
    # single-layer + token input; the big case (H past one tile block); bare layers.
    cells_bf16 = [("lstm", {}), ("lstm", {"proj_size": 3, "peepholes": True}),
                  ("gru", {"variant": "reset_after"}), ("gru", {"variant": "reset_before"}),
                  ("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "relu"})]
    for (cell, kw), (layers, bidir, tokens) in itertools.product(
            cells_bf16, ((2, True, False), (1, False, True), (2, False, False))):
        name = "-".join([cell] + [f"{k}{v}" if not isinstance(v, str) else v
                                  for k, v in kw.items()] +
                        [f"L{layers}", "bi" if bidir else "uni", "tok" if tokens else "dense",
                         "bf16"])
        yield name, dict(cell=cell, num_layers=layers, bidirectional=bidir, dtype="float32",
                         precision="bfloat16", **kw), tokens
    yield "lstm-big-bf16", dict(cell="lstm", num_layers=2, bidirectional=True, hidden_size=150,
                                dtype="float32", precision="bfloat16"), False
    # issue 19's dropout options only (training only: the plain kernels in inference, so any
    # precision loads them)
    for cell, precision in (("lstm", "bfloat16"), ("gru", "int8")):
        yield f"{cell}-reg-dropouts-L2-bi-dense-{'bf16' if precision == 'bfloat16' else 'int8'}", \
            dict(cell=cell, num_layers=2, bidirectional=True, dtype="float32",
                 precision=precision, recurrent_dropout=0.2, input_dropout=0.1,
                 weight_drop=0.3), False
    # int8 inference (precision="int8"): every cell, stacked + bidirectional + dense, and
    # single-layer + token input.
    for (cell, kw), (layers, bidir, tokens) in itertools.product(
            cells_bf16, ((2, True, False), (1, False, True))):
        name = "-".join([cell] + [f"{k}{v}" if not isinstance(v, str) else v
                                  for k, v in kw.items()] +
                        [f"L{layers}", "bi" if bidir else "uni", "tok" if tokens else "dense",
                         "int8"])
        yield name, dict(cell=cell, num_layers=layers, bidirectional=bidir, dtype="float32",
                         precision="int8", **kw), tokens
    for layer, kw in (("LSTM", {"proj_size": 2, "peepholes": True}),
                      ("GRU", {"variant": "reset_before"}), ("RNN", {"nonlinearity": "relu"})):
        yield f"bare-{layer}-bias-uni-bf16", dict(layer=layer, bias=True, bidirectional=False,
                                                  num_layers=2, dtype="float32",
                                                  precision="bfloat16", **kw), False


def write_case(out_dir, index, name, spec, tokens, isa):
    rng = np.random.default_rng(1000 + index)
    spec = dict(spec)
    precision = spec.pop("precision", "float32")
    dt = np.dtype(spec["dtype"])
    if "layer" in spec:
        layer = spec.pop("layer")
        model = getattr(fusedrnn, layer)(5, 6, seed=index, **spec)
        rnn, H, R = model, model.hidden_size, model.state_size
        L, D = model.num_layers, model.num_directions
    else:
        hidden = spec.pop("hidden_size", 6)
        inp = dict(vocab_size=11, embed_dim=4) if tokens else dict(input_size=5)
        model = RecurrentModel(hidden_size=hidden, output_size=3, seed=index, **inp, **spec)
        rnn, H, R = model.rnn, model.rnn.hidden_size, model.rnn.state_size
        L, D = model.rnn.num_layers, model.rnn.num_directions
    for name_, p in model.named_parameters():  # layer norm: gains and biases off 1 and 0
        if name_.split(".")[-1].startswith("ln_"):
            p.data += (0.2 * rng.standard_normal(p.data.shape)).astype(p.data.dtype)
    model.eval()
    io = {}
    if tokens:
        x = rng.integers(0, 11, (T, N)).astype(np.int64)
        io["tokens"] = x
    else:
        x = rng.standard_normal((T, N, 5)).astype(dt)
        io["x"] = x
    io["lengths"] = LENGTHS
    state = None
    lstm = rnn.mode == "LSTM"
    if index % 2:  # initial states in every other case
        h0 = (rng.standard_normal((L * D, N, R)) * 0.5).astype(dt)
        io["h0"] = h0
        if lstm:
            c0 = (rng.standard_normal((L * D, N, H)) * 0.5).astype(dt)
            io["c0"] = c0
            state = (h0, c0)
        else:
            state = h0
    run, run_rnn = model, rnn
    if precision != "float32":
        # the stack frozen at that precision (embedding and head as they are)
        run = freeze(model, precision)
        run_rnn = run if model is rnn else run.rnn
    y, final = run.forward(x, state, LENGTHS)
    if model is rnn:
        y_rnn = y
    else:
        emb = model.embed.forward(x) if tokens else x
        y_rnn, _ = run_rnn.forward(emb, state, LENGTHS)
    io["y"] = y
    io["y_rnn"] = y_rnn
    if lstm:
        io["h_n"], io["c_n"] = final
    else:
        io["h_n"] = final
    fusedrnn.save(os.path.join(out_dir, f"{name}.safetensors"), model, case=name)
    meta = {"isa": isa, "case": name}
    if precision != "float32":
        meta["precision"] = precision
        meta["lowp_tier"] = fusedrnn.lowp.active_tier()
    save_tensors(os.path.join(out_dir, f"{name}.io.safetensors"), io, meta)


def train_charlm(out_dir):
    """A tiny character LSTM language model, trained for a few seconds."""
    text = ("the quick brown fox jumps over the lazy dog. "
            "a stitch in time saves nine. all that glitters is not gold. ") * 40
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    model = RecurrentModel("lstm", vocab_size=len(vocab), embed_dim=16, hidden_size=64,
                           output_size=len(vocab), seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    streams = fusedrnn.data.batchify(ids, 16)
    state = None
    loss = None
    for epoch in range(6):
        for xb, yb in fusedrnn.data.bptt_chunks(streams, 32):
            model.zero_grad()
            if state is not None:
                state = tuple(s[:, :xb.shape[1]] for s in state)
            logits, state = model.forward(xb, state)
            loss, d = losses.cross_entropy(logits, yb)
            model.backward(d)
            fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    fusedrnn.save(os.path.join(out_dir, "charlm.safetensors"), model, vocab=vocab)
    return float(loss)


def train_sine(out_dir):
    """A GRU that predicts the next sample of sin(0.1 t + phase), trained for a few seconds."""
    rng = np.random.default_rng(0)
    model = RecurrentModel("gru", input_size=1, hidden_size=32, output_size=1, seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loss = None
    for step in range(150):
        phase = rng.uniform(0, 2 * np.pi, 16)
        t = np.arange(51)[:, None] * 0.1 + phase[None, :]
        s = np.sin(t).astype(np.float32)[:, :, None]          # [51, 16, 1]
        model.zero_grad()
        pred, _ = model.forward(s[:-1])
        loss, d = losses.mse(pred, s[1:])
        model.backward(d)
        opt.step()
    fusedrnn.save(os.path.join(out_dir, "sine_gru.safetensors"), model,
                  task="next sample of sin(0.1 t + phase)", step=0.1)
    return float(loss)


def train_ctc(out_dir):
    """The recognise task's model (a bidirectional LSTM + CTC) trained for a few seconds on its
    generated speech-like utterances; held-out utterances decoded greedily by Python."""
    from fusedrnn.ctc import ctc_greedy_decode, ctc_logits
    from fusedrnn.tasks.recognise import CtcRecognizer, make_utterances, phone_means

    rng = np.random.default_rng(5)
    means, silence = phone_means()
    model = CtcRecognizer(means.shape[2], 11, hidden=24, layers=1, cell="lstm", seed=0)
    opt = optim.Adam(model.parameters(), lr=3e-2)

    def batch(utts):
        lengths = np.array([len(f) for f, _ in utts], np.int64)
        x = np.zeros((lengths.max(), len(utts), means.shape[2]), np.float32)
        for n, (f, _) in enumerate(utts):
            x[:len(f), n] = f
        return x, lengths

    loss = None
    for step in range(120):  # labels decoded from ~50 steps on (CTC loss ~0.3 at 100)
        utts = make_utterances(rng, 8, means, silence, max_len=6)
        x, lengths = batch(utts)
        targets = np.concatenate([np.asarray(lab, np.int64) for _, lab in utts])
        tl = np.array([len(lab) for _, lab in utts], np.int64)
        model.zero_grad()
        logits = model.forward(x, lengths)
        loss, d = ctc_logits(logits, targets, lengths, tl)
        model.backward(d)
        opt.step()
    model.eval()
    x, lengths = batch(make_utterances(rng, 6, means, silence, max_len=6))
    lengths[-1] = max(1, int(lengths[-1]) // 2)  # one sequence decoded over a prefix only
    y = model.forward(x, lengths)
    decoded = ctc_greedy_decode(y, lengths)
    fusedrnn.save(os.path.join(out_dir, "ctc_recognise.safetensors"), model, task="recognise")
    labels = np.array([v for d in decoded for v in d], np.int64)
    save_tensors(os.path.join(out_dir, "ctc_recognise.io.safetensors"),
                 {"x": x, "lengths": lengths, "y": y, "labels": labels,
                  "label_counts": np.array([len(d) for d in decoded], np.int64)},
                 {"case": "ctc_recognise"})
    return float(loss), int(labels.size)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    # Results do not depend on the thread count; one thread is fastest for these tiny models and
    # immune to a busy machine (a second thread waiting at every step's barrier).
    fusedrnn.set_num_threads(1)
    t0 = time.time()
    isa = fusedrnn.build_info()["instruction_set"]
    names = []
    for i, (name, spec, tokens) in enumerate(grid()):
        write_case(args.out_dir, i, name, spec, tokens, isa)
        names.append(name)
    with open(os.path.join(args.out_dir, "cases.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    lm = train_charlm(args.out_dir)
    sine = train_sine(args.out_dir)
    ctc_loss, ctc_labels = train_ctc(args.out_dir)
    print(f"make_fixtures: {len(names)} cases, charlm (final loss {lm:.3f}), sine_gru (final "
          f"mse {sine:.2e}), ctc_recognise (final CTC loss {ctc_loss:.2f}, {ctc_labels} labels "
          f"decoded) in {args.out_dir} ({time.time() - t0:.1f} s, kernels: {isa})")


if __name__ == "__main__":
    main()
