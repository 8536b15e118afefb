"""numpy's BLAS beside the kernels' OpenMP team: one BLAS thread for the duration of fusedrnn's
own products (the Linear layer, gradient norms).

A training step alternates the recurrent kernels (an OpenMP team of fusedrnn.set_num_threads
threads) with a few numpy products (the output layer). Both thread pools busy-wait between
calls; with both multi-threaded on a machine with few cores they steal each other's cores
(measured 3x slower `fusedrnn train` steps on 2 cores with OMP_NUM_THREADS=2, which numpy's
OpenBLAS also obeys). Those products are a few percent of a step, so fusedrnn runs them on one
BLAS thread and gives the BLAS back its thread count afterwards: numpy's BLAS outside fusedrnn's
calls is untouched, OMP_NUM_THREADS keeps meaning the kernels' threads, and nobody has to set
OPENBLAS_NUM_THREADS by hand.

The BLAS libraries are found once, by threadpoolctl, when first needed (those loaded later, e.g.
by an import after the first call, are not limited). Calls from several Python threads nest: the
first one in sets one thread, the last one out restores the count it found.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved: list = []           # (lib controller, its thread count) while _depth > 0
_libs = None                # threadpoolctl controllers of the loaded BLAS libraries


def _blas_libs():
    global _libs
    if _libs is None:
        try:
            from threadpoolctl import ThreadpoolController
            _libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:   # noqa: BLE001 - no threadpoolctl support here: nothing to limit
            _libs = []
    return _libs


@contextmanager
def single_threaded_blas():
    """Runs the body with every BLAS library numpy uses limited to one thread."""
    global _depth
    with _lock:
        if _depth == 0:
            _saved.clear()
            for lib in _blas_libs():
                n = lib.get_num_threads()
                if n is not None and n != 1:
                    lib.set_num_threads(1)
                    _saved.append((lib, n))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, n in _saved:
                    lib.set_num_threads(n)
                _saved.clear()
