"""Sequence classification with dynamic_rnn and sequence_length (the TF1 tutorials' variable-length
classifier), on fusedrnn.compat.v1.

Task (synthetic): a sequence of 1-D values of random length; the class is whether the values
sum to more than zero. The final state's h of each sequence's last valid step feeds a softmax.

    python examples/seeds/classify.py [--steps 300] [--seconds 30]
"""
import argparse
import time

import numpy as np

import fusedrnn
from fusedrnn import losses, optim
from fusedrnn.compat import v1 as tf


def batch(rng, N, T):
    lengths = rng.integers(1, T + 1, N)
    x = rng.standard_normal((N, T, 1)).astype(np.float32)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    return x, lengths, y


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    cell = tf.nn.rnn_cell.LSTMCell(args.hidden, use_peepholes=True, seed=args.seed)
    head = fusedrnn.Linear(args.hidden, 2, seed=args.seed)
    opt, t0, history = None, time.perf_counter(), []
    for step in range(args.steps):
        x, lengths, y = batch(rng, 32, 12)
        outputs, state = tf.nn.dynamic_rnn(cell, x, sequence_length=lengths, dtype=np.float32)
        logits = head(state.h)
        loss, d_logits = losses.cross_entropy(logits, y)
        if opt is None:
            opt = optim.Adam(list(cell.parameters()) + list(head.parameters()), lr=0.01)
        opt.zero_grad()
        d_h = head.backward(d_logits)
        cell.backward(None, tf.LSTMStateTuple(np.zeros_like(state.c), d_h))
        opt.step()
        history.append(loss)
        if time.perf_counter() - t0 > args.seconds:
            break
    cell.eval()
    x, lengths, y = batch(rng, 512, 12)
    _, state = tf.nn.dynamic_rnn(cell, x, sequence_length=lengths, dtype=np.float32)
    accuracy = float((head(state.h).argmax(1) == y).mean())
    print(f"steps {len(history)}  loss first {history[0]:.3f}  last "
          f"{np.mean(history[-10:]):.3f}  accuracy {accuracy:.3f}")
    return history, accuracy


if __name__ == "__main__":
    main()
