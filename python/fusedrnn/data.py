"""Batching helpers for stateful training on long streams (truncated BPTT).

A long token stream is cut into ``batch_size`` parallel streams (``batchify``), and the streams
are read in chunks of ``seq_len`` steps (``bptt_chunks``): chunk k of stream n continues chunk
k-1 of stream n, so the final state of one chunk is the right initial state of the next.
Gradients stop at chunk boundaries because the carried state is an ordinary input.

    streams = batchify(tokens, 32)                 # [L, 32]
    state = None
    for x, y in bptt_chunks(streams, 100):         # x, y [<=100, 32]; y is x shifted by one
        out, state = lstm.forward(embed.forward(x), state)
        ...
"""
from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from . import validators as V

__all__ = ["batchify", "bptt_chunks"]


def batchify(tokens, batch_size: int) -> np.ndarray:
    """[L, batch_size] array (a copy) of ``tokens`` (1-D) as parallel streams, time-major;
    stream n is the n-th contiguous slice of length L = len(tokens) // batch_size (the remainder
    is dropped)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"batchify: tokens must be 1-D, got shape {list(tokens.shape)}")
    batch_size = V.positive_int("batchify", "batch_size", batch_size)
    L = tokens.size // batch_size
    if L < 2:
        raise ValueError(f"batchify: {tokens.size} tokens are too few for {batch_size} streams "
                         f"of at least 2 tokens")
    return np.ascontiguousarray(tokens[:L * batch_size].reshape(batch_size, L).T)


def bptt_chunks(streams: np.ndarray, seq_len: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields (inputs, targets), each [T <= seq_len, N] and C-contiguous: targets are the
    inputs shifted one step ahead in the same streams. The last chunk may be shorter."""
    if not isinstance(streams, np.ndarray) or streams.ndim != 2:
        raise ValueError("bptt_chunks: streams must be a 2-D array [L, N] (see batchify)")
    seq_len = V.positive_int("bptt_chunks", "seq_len", seq_len)
    L = streams.shape[0]
    for t0 in range(0, L - 1, seq_len):
        t1 = min(t0 + seq_len, L - 1)
        yield (np.ascontiguousarray(streams[t0:t1]), np.ascontiguousarray(streams[t0 + 1:t1 + 1]))
