"""The TF1 PTB tutorial's LSTM language model, on fusedrnn.compat.v1.

Embedding -> MultiRNNCell([DropoutWrapper(BasicLSTMCell(H, forget_bias=0.0),
output_keep_prob=keep)] * layers) -> dynamic_rnn over num_steps -> softmax; the final state of
each batch is the initial state of the next (truncated BPTT), as in ptb_word_lm.py. The corpus is
a small built-in text (characters as words), so it runs anywhere.

    python examples/seeds/ptb_lm.py [--steps 200] [--seconds 30]
"""
import argparse
import time

import numpy as np

import fusedrnn
from fusedrnn import losses, optim
from fusedrnn.compat import v1 as tf

TEXT = ("the quick brown fox jumps over the lazy dog. " * 3 +
        "a stitch in time saves nine. all that glitters is not gold. " * 2 +
        "to be or not to be, that is the question. ") * 8


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--num-steps", type=int, default=20)
    ap.add_argument("--keep", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("steps", "hidden", "layers", "batch", "num_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")

    vocab = sorted(set(TEXT))
    ids = np.array([vocab.index(ch) for ch in TEXT])
    V, N, S = len(vocab), args.batch, args.num_steps
    per = len(ids) // N
    if S + 1 > per:   # (ptb_producer's "epoch_size == 0, decrease batch_size or num_steps")
        ap.error(f"--num-steps {S} needs {S + 1} characters per stream; the text has {per} "
                 f"per stream at --batch {N}: decrease --batch or --num-steps")
    data = ids[:per * N].reshape(N, per)   # ptb_producer: N parallel streams

    emb = fusedrnn.Embedding(V, args.hidden, seed=args.seed)
    rnn_cell = tf.nn.rnn_cell
    cell = rnn_cell.MultiRNNCell([
        rnn_cell.DropoutWrapper(rnn_cell.BasicLSTMCell(args.hidden, forget_bias=0.0,
                                                       seed=args.seed + k),
                                output_keep_prob=args.keep, seed=args.seed + k)
        for k in range(args.layers)])
    head = fusedrnn.Linear(args.hidden, V, seed=args.seed)
    state = cell.zero_state(N, np.float32)
    opt = None
    t0, history, pos = time.perf_counter(), [], 0
    for step in range(args.steps):
        if pos + S + 1 > per:
            pos, state = 0, cell.zero_state(N, np.float32)
        x, y = data[:, pos:pos + S], data[:, pos + 1:pos + S + 1]
        pos += S
        inputs = emb(x)                                   # [N, S, H]
        outputs, state = tf.nn.dynamic_rnn(cell, inputs, initial_state=state)
        logits = head(outputs)                            # [N, S, V]
        loss, d_logits = losses.cross_entropy(logits, y)
        if opt is None:   # the cell's variables exist after its first call, as in TF1
            params = list(emb.parameters()) + list(cell.parameters()) + list(head.parameters())
            opt = optim.Adam(params, lr=0.01)
        opt.zero_grad()
        emb.backward(cell.backward(head.backward(d_logits)))
        optim.clip_grad_norm_(params, 5.0)
        opt.step()
        history.append(loss)
        if time.perf_counter() - t0 > args.seconds:
            break
    print(f"steps {len(history)}  loss first {history[0]:.3f}  last {np.mean(history[-5:]):.3f}"
          f"  perplexity {np.exp(np.mean(history[-5:])):.2f}")
    return history


if __name__ == "__main__":
    main()
