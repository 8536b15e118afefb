"""Stream batching for truncated BPTT (fusedrnn.data)."""
import numpy as np
import pytest

from fusedrnn.data import batchify, bptt_chunks


def test_batchify_and_chunks_cover_each_stream_in_order():
    tokens = np.arange(103)
    streams = batchify(tokens, 4)
    assert streams.shape == (25, 4) and streams.flags.c_contiguous
    np.testing.assert_array_equal(streams[:, 1], np.arange(25, 50))
    xs, ys = zip(*bptt_chunks(streams, 7))
    assert [x.shape[0] for x in xs] == [7, 7, 7, 3]
    np.testing.assert_array_equal(np.concatenate(xs), streams[:-1])
    np.testing.assert_array_equal(np.concatenate(ys), streams[1:])
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(y[:-1], x[1:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="1-D"):
        batchify(np.zeros((3, 3)), 2)
    with pytest.raises(ValueError, match="batch_size"):
        batchify(np.arange(10), 0)
    with pytest.raises(ValueError, match="too few"):
        batchify(np.arange(10), 6)
    with pytest.raises(ValueError, match="seq_len"):
        list(bptt_chunks(np.zeros((5, 2)), 0))
    with pytest.raises(ValueError, match="2-D"):
        list(bptt_chunks(np.zeros(5), 2))
