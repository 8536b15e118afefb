"""A GRU sequence tagger with bidirectional_dynamic_rnn (TF1 tutorial style), on
fusedrnn.compat.v1.

Task (synthetic): tokens 0..V-1 in sequences of random length; each token's tag is the class
(mod 3) of the larger of its two neighbours (0 beyond the ends), so both directions are needed.
Per-step softmax over the concatenated forward and backward outputs; padding ignored.

    python examples/seeds/gru_tagger.py [--steps 300] [--seconds 30]
"""
import argparse
import time

import numpy as np

import fusedrnn
from fusedrnn import losses, optim
from fusedrnn.compat import v1 as tf


def batch(rng, N, T, V):
    lengths = rng.integers(2, T + 1, N)
    tok = rng.integers(0, V, (N, T))
    valid = np.arange(T)[None, :] < lengths[:, None]
    tok = np.where(valid, tok, 0)
    prev = np.pad(tok, ((0, 0), (1, 0)))[:, :T]
    nxt = np.where(np.arange(T)[None, :] + 1 < lengths[:, None], np.pad(tok, ((0, 0), (0, 1)))[:, 1:], 0)
    return tok, lengths, np.maximum(prev, nxt) % 3


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    V, H = 10, args.hidden
    emb = fusedrnn.Embedding(V, 16, seed=args.seed)
    fw = tf.nn.rnn_cell.GRUCell(H, seed=args.seed)
    bw = tf.nn.rnn_cell.GRUCell(H, seed=args.seed + 1)
    head = fusedrnn.Linear(2 * H, 3, seed=args.seed)
    opt, t0, history = None, time.perf_counter(), []
    for step in range(args.steps):
        tok, lengths, tags = batch(rng, 32, 15, V)
        inputs = emb(tok)
        (o_fw, o_bw), _ = tf.nn.bidirectional_dynamic_rnn(fw, bw, inputs, sequence_length=lengths,
                                                          dtype=np.float32)
        logits = head(np.concatenate([o_fw, o_bw], axis=2))
        loss, d_logits = losses.cross_entropy(logits, tags, lengths=lengths, time_axis=1)
        if opt is None:
            params = [p for m in (emb, fw, bw, head) for p in m.parameters()]
            opt = optim.Adam(params, lr=0.01)
        opt.zero_grad()
        d = head.backward(d_logits)
        emb.backward(fw.backward(np.ascontiguousarray(d[..., :H]))
                     + bw.backward(np.ascontiguousarray(d[..., H:])))
        opt.step()
        history.append(loss)
        if time.perf_counter() - t0 > args.seconds:
            break
    print(f"steps {len(history)}  loss first {history[0]:.3f}  last {np.mean(history[-10:]):.3f}")
    return history


if __name__ == "__main__":
    main()
