"""Result types shared by the kernels' wrappers (functional.py) and the NumPy reference.

Plain named tuples: the reference and the kernels return the same field names, so tests
compare them field by field.  ``cache`` is opaque and belongs to whichever implementation
produced it (a reference cache cannot be fed to the kernels' backward, or vice versa).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

Array = np.ndarray


class LstmOutput(NamedTuple):
    # R = P with a projection w_hr [P, H], else H
    y: Array             # [T, N, R]; zero at steps >= length
    h_n: Array           # [N, R]
    c_n: Array           # [N, H]
    cache: Any           # None when training=False


class LstmGrads(NamedTuple):
    dx: Array                  # [T, N, C]
    dh0: Optional[Array]       # [N, R] or None when h0 was not given
    dc0: Optional[Array]       # [N, H] or None when c0 was not given
    dw_ih: Array               # [4H, C]
    dw_hh: Array               # [4H, R]
    db_ih: Optional[Array]     # [4H] or None
    db_hh: Optional[Array]     # [4H] or None
    dw_peep: Optional[Array]   # [3, H] or None
    dw_hr: Optional[Array]     # [P, H] or None without projection


class GruOutput(NamedTuple):
    y: Array
    h_n: Array
    cache: Any


class GruGrads(NamedTuple):
    dx: Array
    dh0: Optional[Array]
    dw_ih: Array
    dw_hh: Array
    db_ih: Optional[Array]
    db_hh: Optional[Array]


class RnnOutput(NamedTuple):
    y: Array
    h_n: Array
    cache: Any


class RnnGrads(NamedTuple):
    dx: Array
    dh0: Optional[Array]
    dw_ih: Array
    dw_hh: Array
    db_ih: Optional[Array]
    db_hh: Optional[Array]
