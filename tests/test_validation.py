"""Argument validation of the public API (fusedrnn.functional) and of the low-level _core.

The promise (functional.py): every argument is checked before any work starts and nothing is
silently copied or cast.  Mixed dtypes, other dtypes, wrong shapes, non-contiguous arrays,
bad lengths, unknown variant/nonlinearity, non-bool flags, lists instead of arrays, x not 3-D,
zero-size dims, a missing or foreign cache and wrong cotangents all raise TypeError (type or
dtype) or ValueError (shape, order, value), with a message that names the argument and says
what was expected.

Each (function, argument, bad value) is one test id.  The table is built from one set of
valid arguments per cell (T=4, N=3, C=5, H=6, float64) and a list of mutations.  "lstm_proj"
is the LSTM with a projection w_hr [P, H] (P = 2): w_hh is then [4H, P], h0, h_n, y, dy and
dh_n have P units, and the shape messages say where H and P came from.  While a bad
call runs, the kernel entry points of _core are replaced by stubs that fail the test, so a
check that only fires inside (or after) the kernel does not count as "before any work".
"""
from __future__ import annotations

import functools
import re

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _core, functional
from fusedrnn import reference as ref

T, N, C, H = 4, 3, 5, 6
LENGTHS = [4, 0, 2]                 # a full, an empty and a partial sequence
P = 2                               # projection size of "lstm_proj"
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CELLS = tuple(GATES)
FORWARD = {c: getattr(fusedrnn, f"{c}_forward") for c in CELLS}
BACKWARD = {c: getattr(fusedrnn, f"{c}_backward") for c in CELLS}
REF_FORWARD = {c: getattr(ref, f"{c}_forward") for c in CELLS}
FORWARD["lstm_proj"], BACKWARD["lstm_proj"] = fusedrnn.lstm_forward, fusedrnn.lstm_backward
REF_FORWARD["lstm_proj"] = ref.lstm_forward


def base_cell(cell):
    return "lstm" if cell == "lstm_proj" else cell


def proj_where(letters):
    """The note a projected LSTM's shape message adds after the expected shape."""
    return f" ({letters} with H = {H}, P = {P} from w_hr [P, H])"


# ----------------------------------------------------------------------------------------------
# Valid arguments

def input_shapes(cell):
    if cell == "lstm_proj":
        s = input_shapes("lstm")
        s.update(w_hh=(4 * H, P), h0=(N, P), w_hr=(P, H))
        return s
    G = GATES[cell]
    s = {"x": (T, N, C), "w_ih": (G * H, C), "w_hh": (G * H, H), "b_ih": (G * H,),
         "b_hh": (G * H,), "h0": (N, H)}
    if cell == "lstm":
        s.update(c0=(N, H), w_peep=(3, H))
    return s


def cotangent_shapes(cell):
    if cell == "lstm_proj":
        return {"dy": (T, N, P), "dh_n": (N, P), "dc_n": (N, H)}
    s = {"dy": (T, N, H), "dh_n": (N, H)}
    if cell == "lstm":
        s["dc_n"] = (N, H)
    return s


def _random(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return {k: (0.5 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def forward_args(cell, dtype=np.float64, seed=0):
    """Valid keyword arguments of <cell>_forward, every optional input given."""
    kw = _random(input_shapes(cell), dtype, seed)
    kw.update(lengths=np.array(LENGTHS), reverse=False, training=True)
    return kw


@functools.lru_cache(maxsize=None)
def training_output(cell, dtype):
    """The output of a valid training forward; shared, as backward does not modify the cache."""
    return FORWARD[cell](**forward_args(cell, dtype))


def training_cache(cell, dtype):
    return training_output(cell, dtype).cache


def backward_args(cell, dtype=np.float64, seed=1):
    """Valid keyword arguments of <cell>_backward."""
    kw = _random(cotangent_shapes(cell), dtype, seed)
    kw["cache"] = training_cache(cell, dtype)
    return kw


def forbid_kernels(monkeypatch):
    """From here on, any kernel call fails the test: validation must happen before it."""
    def make(name):
        def stub(*args, **kwargs):
            raise AssertionError(f"_core.{name} ran: the bad argument was not rejected first")
        return stub
    for cell in CELLS:
        for direction in ("forward", "backward"):
            name = f"{cell}_{direction}"
            monkeypatch.setattr(_core, name, make(name))


# ----------------------------------------------------------------------------------------------
# Mutations of one array argument.  Each maker takes the valid value and returns a bad one;
# None means "not applicable to this array" (e.g. a transposed view of a 1-D array).

def _transposed(a):
    return np.ascontiguousarray(a.T).T if a.ndim >= 2 else None   # same shape, Fortran order


def _strided(a):
    return np.repeat(a, 2, axis=-1)[..., ::2]                    # same shape, every other item


def _broadcast(a):
    return np.broadcast_to(a.reshape(-1)[:1].reshape((1,) * a.ndim), a.shape)   # zero strides


def _swapped(a):
    return np.ascontiguousarray(a.T) if a.ndim == 2 and a.shape[0] != a.shape[1] else None


def _last_plus_one(a):
    return np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)


def _first_plus_one(a):
    return np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype)


BAD_DTYPES = {          # id -> dtype; the valid dtype is float64
    "float32": np.float32,          # mixed float dtypes
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "complex128": np.complex128,
    "bool": np.bool_,
    "float64_big_endian": np.dtype(">f8"),   # float64 in name only: would need a byte swap
}

BAD_SHAPES = {          # id -> maker
    "last_dim_plus_1": _last_plus_one,
    "first_dim_plus_1": _first_plus_one,
    "extra_dim": lambda a: a[None],
    "swapped": _swapped,
    "flattened": lambda a: a.reshape(-1) if a.ndim > 1 else None,
}

NON_CONTIGUOUS = {      # id -> maker; all keep the shape and the values
    "transposed": _transposed,
    "fortran": lambda a: np.asfortranarray(a) if a.ndim >= 2 else None,
    "strided": _strided,
    "reversed": lambda a: a[..., ::-1],
    "broadcast": _broadcast,
}


def _shape_str(shape):
    return re.escape(str(list(shape)))


def array_cases(fn, name, value, required=False, where=""):
    """(bad id, bad value, exception, message pattern) for a generic array argument `name`
    (anything but x and w_hh, whose messages differ) whose valid value is `value`; `where` is
    the note the shape message adds after the expected shape."""
    p = rf"{fn}: {name} must"
    for bid, dt in BAD_DTYPES.items():
        yield (bid, value.astype(dt), TypeError,
               rf"{p} have dtype float64 \(the dtype of x\), got {re.escape(str(np.dtype(dt)))}")
    yield ("list", value.tolist(), TypeError,
           rf"{p} be a numpy array of shape {_shape_str(value.shape)}, got list")
    yield ("tuple", tuple(value.tolist()), TypeError, rf"{p} be a numpy array.*got tuple")
    yield ("scalar", 1.0, TypeError, rf"{p} be a numpy array.*got float")
    for bid, make in BAD_SHAPES.items():
        bad = make(value)
        if bad is not None:
            yield (bid, bad, ValueError,
                   rf"{p} have shape {_shape_str(value.shape)}{re.escape(where)}, "
                   rf"got {_shape_str(bad.shape)}")
    for bid, make in NON_CONTIGUOUS.items():
        bad = make(value)
        if bad is not None:
            yield (bid, bad, ValueError, rf"{p} be C-contiguous")
    if required:
        yield ("None", None, ValueError, rf"{p} not be None")


def x_cases(fn, cell, x):
    G = GATES[base_cell(cell)]
    proj = cell == "lstm_proj"
    R = P if proj else H
    first = "w_hr" if proj else "w_hh"    # the weight checked first, which gives H (and P)
    where_ih = re.escape(proj_where("[4*H, C]")) if proj else ""
    where_h0 = re.escape(proj_where("[N, P]")) if proj else ""
    p = rf"{fn}: x must"
    for bid, dt in BAD_DTYPES.items():
        if bid == "float32":   # x float32, weights float64: reported on the first weight checked
            yield (bid, x.astype(dt), TypeError,
                   rf"{fn}: {first} must have dtype float32 \(the dtype of x\), got float64")
        else:
            yield (bid, x.astype(dt), TypeError,
                   rf"{p} have dtype float32 or float64, got {re.escape(str(np.dtype(dt)))}")
    yield ("list", x.tolist(), TypeError, rf"{p} be a numpy array of shape \[T, N, C\], got list")
    yield ("None", None, TypeError, rf"{p} be a numpy array.*got NoneType")
    for bid, bad in {"2d": x[0], "4d": x[None], "1d": x.reshape(-1), "0d": np.array(1.0)}.items():
        yield (f"not_3d_{bid}", bad, ValueError,
               rf"{p} have shape \[T, N, C\] \(3 dimensions\), got shape")
    for axis, dim in enumerate("TNC"):
        shape = list(x.shape)
        shape[axis] = 0
        yield (f"zero_{dim}", np.zeros(shape), ValueError,
               rf"{p} have T, N, C >= 1, got shape {re.escape(str(tuple(shape)))}")
    # an x whose C or N disagrees with the other arguments: reported on those
    yield ("C_mismatch", np.zeros((T, N, C + 1)), ValueError,
           rf"{fn}: w_ih must have shape {_shape_str((G * H, C + 1))}{where_ih}, "
           rf"got {_shape_str((G * H, C))}")
    yield ("N_mismatch", np.zeros((T, N + 1, C)), ValueError,
           rf"{fn}: h0 must have shape {_shape_str((N + 1, R))}{where_h0}, "
           rf"got {_shape_str((N, R))}")
    for bid, make in NON_CONTIGUOUS.items():
        yield (bid, make(x), ValueError, rf"{p} be C-contiguous \(use np.ascontiguousarray\)")


def w_hh_cases(fn, cell, w_hh):
    G = GATES[cell]
    p = rf"{fn}: w_hh must"
    for bid, dt in BAD_DTYPES.items():
        yield (bid, w_hh.astype(dt), TypeError,
               rf"{p} have dtype float64 \(the dtype of x\), got {re.escape(str(np.dtype(dt)))}")
    for bid, bad in {"list": w_hh.tolist(), "None": None, "scalar": 1.0}.items():
        yield (bid, bad, TypeError, rf"{p} be a numpy array of shape \[{G}\*H, H\]")
    for bid, bad in {"extra_dim": w_hh[None], "flattened": w_hh.reshape(-1)}.items():
        yield (bid, bad, ValueError, rf"{p} be a numpy array of shape \[{G}\*H, H\]")
    for bid, bad in {"first_dim_plus_1": _first_plus_one(w_hh),
                     "last_dim_plus_1": _last_plus_one(w_hh),
                     "zero_H": np.zeros((0, 0)),
                     "zero_rows": np.zeros((0, H))}.items():
        yield (bid, bad, ValueError,
               rf"{p} have shape \[{G}\*H, H\], got {_shape_str(bad.shape)}")
    # a consistent w_hh with another H: w_hh defines H, the other arguments disagree
    yield ("H_mismatch", np.zeros((G * (H + 1), H + 1)), ValueError,
           rf"{fn}: w_ih must have shape {_shape_str((G * (H + 1), C))}, "
           rf"got {_shape_str((G * H, C))}")
    for bid, make in NON_CONTIGUOUS.items():
        bad = make(w_hh)
        if bad is not None:
            yield (bid, bad, ValueError, rf"{p} be C-contiguous")


def w_hr_cases(fn, w_hr):
    """The projection w_hr [P, H] defines P and H: a w_hr of another (valid) shape is reported
    on w_hh, checked next; one not narrower than h (P >= H: swapped, say) on w_hr itself."""
    p = rf"{fn}: w_hr must"
    for bid, dt in BAD_DTYPES.items():
        yield (bid, w_hr.astype(dt), TypeError,
               rf"{p} have dtype float64 \(the dtype of x\), got {re.escape(str(np.dtype(dt)))}")
    for bid, bad in {"list": w_hr.tolist(), "tuple": tuple(w_hr.tolist()), "scalar": 1.0,
                     "masked": np.ma.masked_array(w_hr)}.items():
        yield (bid, bad, TypeError,
               rf"{p} be a numpy array of shape \[P, H\], got {type(bad).__name__}$")
    for bid, bad in {"1d": w_hr.reshape(-1), "3d": w_hr[None], "0d": np.array(1.0)}.items():
        yield (bid, bad, ValueError,
               rf"{p} have shape \[P, H\] \(2 dimensions\), got {_shape_str(bad.shape)}")
    for bid, bad in {"zero_P": np.zeros((0, H)), "zero_H": np.zeros((P, 0))}.items():
        yield (bid, bad, ValueError,
               rf"{p} have shape \[P, H\] with P, H >= 1, got {_shape_str(bad.shape)}")
    yield ("swapped", np.zeros((H, P)), ValueError,
           rf"{p} have shape \[P, H\] with P < H .*got {_shape_str((H, P))}")
    for bid, (p2, h2) in {"P_plus_1": (P + 1, H), "H_plus_1": (P, H + 1)}.items():
        yield (bid, np.zeros((p2, h2)), ValueError,
               rf"{fn}: w_hh must have shape {_shape_str((4 * h2, p2))} "
               rf"\(\[4\*H, P\] with H = {h2}, P = {p2} from w_hr \[P, H\]\), "
               rf"got {_shape_str((4 * H, P))}")
    for bid, make in NON_CONTIGUOUS.items():
        bad = make(w_hr)
        if bad is not None:
            yield (bid, bad, ValueError, rf"{p} be C-contiguous")


def proj_cases(fn, name, value):
    """Cases of the LSTM with projection's arguments other than x and w_hr: the generic ones
    (with the note on where H and P came from) and the un-projected shape given by mistake."""
    notes = {"w_hh": "[4*H, P]", "w_ih": "[4*H, C]", "h0": "[N, P]"}
    where = proj_where(notes[name]) if name in notes else ""
    yield from array_cases(fn, name, value, required=name in ("w_ih", "w_hh"), where=where)
    mistaken = {"w_hh": (4 * H, H), "h0": (N, H), "c0": (N, P)}   # H and P mixed up
    if name in mistaken:
        bad = np.zeros(mistaken[name])
        yield ("P_H_mixed_up", bad, ValueError,
               rf"{fn}: {name} must have shape {_shape_str(value.shape)}{re.escape(where)}, "
               rf"got {_shape_str(bad.shape)}")


def forward_array_params():
    for cell in CELLS + ("lstm_proj",):
        fn = f"{base_cell(cell)}_forward"
        valid = forward_args(cell)
        for name in input_shapes(cell):
            if name == "x":
                cases = x_cases(fn, cell, valid[name])
            elif name == "w_hr":
                cases = w_hr_cases(fn, valid[name])
            elif cell == "lstm_proj":
                cases = proj_cases(fn, name, valid[name])
            elif name == "w_hh":
                cases = w_hh_cases(fn, cell, valid[name])
            else:
                cases = array_cases(fn, name, valid[name], required=(name == "w_ih"))
            for bid, bad, exc, pattern in cases:
                yield pytest.param(cell, name, bad, exc, pattern,
                                   id=f"{cell}_forward-{name}-{bid}")


def lengths_params():
    bad = {   # id -> (value, exception, pattern after "<fn>: lengths must ")
        "negative": (np.array([-1, 0, 2]), ValueError, r"lie in \[0, T=4\], got min -1 max 2"),
        "greater_than_T": (np.array([5, 0, 2]), ValueError, r"lie in \[0, T=4\], got min 0 max 5"),
        "negative_list": ([4, -3, 2], ValueError, r"lie in \[0, T=4\]"),
        "huge_uint64": (np.array([1, 2, 2**63], np.uint64), ValueError, r"lie in \[0, T=4\]"),
        "float_array": (np.array([4.0, 0.0, 2.0]), TypeError,
                        r"have an integer dtype, got float64"),
        "float32_array": (np.array([4, 0, 2], np.float32), TypeError,
                          r"have an integer dtype, got float32"),
        "float_list": ([4.0, 0.0, 2.0], TypeError, r"have an integer dtype, got float64"),
        "bool_array": (np.array([True, False, True]), TypeError,
                       r"have an integer dtype, got bool"),
        "bool_list": ([True, False, True], TypeError, r"have an integer dtype, got bool"),
        "complex_array": (np.array([4, 0, 2], np.complex128), TypeError,
                          r"have an integer dtype, got complex128"),
        "str_array": (np.array(["4", "0", "2"]), TypeError, r"have an integer dtype"),
        "int_scalar": (3, TypeError, r"be an integer numpy array of shape \[3\], got int"),
        "numpy_int_scalar": (np.int64(3), TypeError, r"be an integer numpy array of shape \[3\]"),
        "float_scalar": (3.0, TypeError, r"be an integer numpy array of shape \[3\], got float"),
        "str": ("402", TypeError, r"be an integer numpy array of shape \[3\], got str"),
        "dict": ({0: 4, 1: 0, 2: 2}, TypeError, r"be an integer numpy array.*got dict"),
        "too_short": (np.array([4, 0]), ValueError,
                      r"have shape \[3\] \(one per sequence\), got \[2\]"),
        "too_long": (np.array([4, 0, 2, 1]), ValueError, r"have shape \[3\].*got \[4\]"),
        "too_short_list": ([4, 0], ValueError, r"have shape \[3\].*got \[2\]"),
        "2d": (np.array([[4, 0, 2]]), ValueError, r"have shape \[3\].*got \[1, 3\]"),
        "column": (np.array([[4], [0], [2]]), ValueError, r"have shape \[3\].*got \[3, 1\]"),
        "0d": (np.array(2), ValueError, r"have shape \[3\].*got \[\]"),
        "empty": (np.array([], np.int64), ValueError, r"have shape \[3\].*got \[0\]"),
    }
    for cell in CELLS:
        for bid, (value, exc, pattern) in bad.items():
            yield pytest.param(cell, value, exc, rf"{cell}_forward: lengths must {pattern}",
                               id=f"{cell}_forward-lengths-{bid}")


FLAG_BAD = {"int_1": 1, "int_0": 0, "None": None, "str": "True", "float": 1.0,
            "array_0d": np.array(True), "list": [True]}


def flag_params():
    for cell in CELLS:
        for flag in ("reverse", "training"):
            for bid, value in FLAG_BAD.items():
                got = type(value).__name__
                yield pytest.param(cell, flag, value,
                                   rf"{cell}_forward: {flag} must be a bool, got {got}$",
                                   id=f"{cell}_forward-{flag}-{bid}")


# ----------------------------------------------------------------------------------------------
# Forward rejections

@pytest.mark.parametrize("cell, name, bad, exc, pattern", list(forward_array_params()))
def test_forward_rejects_bad_array(cell, name, bad, exc, pattern, monkeypatch):
    kw = forward_args(cell)
    kw[name] = bad
    forbid_kernels(monkeypatch)
    with pytest.raises(exc, match=pattern):
        FORWARD[cell](**kw)


@pytest.mark.parametrize("cell, bad, exc, pattern", list(lengths_params()))
def test_forward_rejects_bad_lengths(cell, bad, exc, pattern, monkeypatch):
    kw = forward_args(cell)
    kw["lengths"] = bad
    forbid_kernels(monkeypatch)
    with pytest.raises(exc, match=pattern):
        FORWARD[cell](**kw)


@pytest.mark.parametrize("cell", CELLS)
def test_forward_rejects_bool_inside_lengths_list(cell, monkeypatch):
    kw = forward_args(cell)
    kw["lengths"] = [True, 0, 2]
    forbid_kernels(monkeypatch)
    with pytest.raises(TypeError, match=rf"{cell}_forward: lengths"):
        FORWARD[cell](**kw)


@pytest.mark.parametrize("cell, flag, bad, pattern", list(flag_params()))
def test_forward_rejects_non_bool_flag(cell, flag, bad, pattern, monkeypatch):
    kw = forward_args(cell)
    kw[flag] = bad
    forbid_kernels(monkeypatch)
    with pytest.raises(TypeError, match=pattern):
        FORWARD[cell](**kw)


@pytest.mark.parametrize("cell, option, bad", [
    pytest.param(cell, option, bad, id=f"{cell}_forward-{option}-{bid}")
    for cell, option, values in [
        ("gru", "variant", {"unknown": "reset", "upper_case": "RESET_AFTER", "None": None,
                            "bool": True, "empty": "", "trailing_space": "reset_after ",
                            "nonlinearity_value": "tanh"}),
        ("rnn", "nonlinearity", {"unknown": "sigmoid", "upper_case": "Tanh", "None": None,
                                 "bool": True, "empty": "", "trailing_space": "relu ",
                                 "variant_value": "reset_after"}),
    ]
    for bid, bad in values.items()
])
def test_forward_rejects_unknown_option(cell, option, bad, monkeypatch):
    kw = forward_args(cell)
    kw[option] = bad
    allowed = {"variant": "'reset_after' or 'reset_before'", "nonlinearity": "'tanh' or 'relu'"}
    forbid_kernels(monkeypatch)
    with pytest.raises(ValueError, match=rf"{cell}_forward: {option} must be "
                                         rf"{allowed[option]}, got {re.escape(repr(bad))}$"):
        FORWARD[cell](**kw)


@pytest.mark.parametrize("cell, name", [(c, n) for c in CELLS + ("lstm_proj",)
                                        for n in ["x", "w_ih", "w_hh", "h0"]
                                        + (["w_hr"] if c == "lstm_proj" else [])])
def test_forward_never_silently_copies_fortran_order(cell, name, monkeypatch):
    """A Fortran-ordered array has the right shape, dtype and values; it is rejected rather
    than copied into C order behind the caller's back."""
    kw = forward_args(cell)
    kw[name] = np.asfortranarray(kw[name])
    assert kw[name].flags.f_contiguous and not kw[name].flags.c_contiguous
    forbid_kernels(monkeypatch)
    with pytest.raises(ValueError,
                       match=rf"{base_cell(cell)}_forward: {name} must be C-contiguous"):
        FORWARD[cell](**kw)


@pytest.mark.parametrize("cell, name", [(c, n) for c in CELLS + ("lstm_proj",)
                                        for n in ["w_ih", "w_hh", "b_ih", "h0"]
                                        + (["w_hr"] if c == "lstm_proj" else [])])
def test_forward_rejects_float64_argument_with_float32_x(cell, name, monkeypatch):
    kw = forward_args(cell, np.float32)
    kw[name] = kw[name].astype(np.float64)
    forbid_kernels(monkeypatch)
    with pytest.raises(TypeError, match=rf"{base_cell(cell)}_forward: {name} must have dtype "
                                        rf"float32 \(the dtype of x\), got float64"):
        FORWARD[cell](**kw)


# ----------------------------------------------------------------------------------------------
# Backward rejections

def cache_params():
    for cell in CELLS:
        fn = f"{cell}_backward"
        yield pytest.param(cell, "no_training", ValueError,
                           rf"{fn}: cache is None: the forward was run with training=False",
                           id=f"{fn}-cache-None_from_training_False")
        for other in CELLS:
            if other != cell:
                yield pytest.param(cell, f"kind:{other}", ValueError,
                                   rf"{fn}: cache comes from {other}_forward, not {cell}_forward",
                                   id=f"{fn}-cache-from_{other}_forward")
        for bid in ("reference", "whole_output", "array", "dict", "str"):
            yield pytest.param(cell, bid, TypeError,
                               rf"{fn}: cache must be the cache returned by "
                               rf"fusedrnn\.{cell}_forward \(training=True\), got \w+",
                               id=f"{fn}-cache-{bid}")


def _bad_cache(cell, what):
    kw = forward_args(cell)
    if what == "no_training":
        kw["training"] = False
        out = FORWARD[cell](**kw)
        assert out.cache is None
        return out.cache
    if what.startswith("kind:"):
        return training_cache(what[5:], np.float64)
    if what == "reference":      # the NumPy reference's cache is not the kernels' cache
        return REF_FORWARD[cell](**kw).cache
    if what == "whole_output":   # the forward's whole result instead of its .cache
        return training_output(cell, np.float64)
    return {"array": np.zeros(100), "dict": {"kind": cell}, "str": cell}[what]


@pytest.mark.parametrize("cell, what, exc, pattern", list(cache_params()))
def test_backward_rejects_bad_cache(cell, what, exc, pattern, monkeypatch):
    kw = backward_args(cell)
    kw["cache"] = _bad_cache(cell, what)
    forbid_kernels(monkeypatch)
    with pytest.raises(exc, match=pattern):
        BACKWARD[cell](**kw)


def backward_array_params():
    for cell in CELLS + ("lstm_proj",):
        fn = f"{base_cell(cell)}_backward"
        proj = cell == "lstm_proj"
        valid = _random(cotangent_shapes(cell), np.float64, 1)
        notes = {"dy": "[T, N, P]", "dh_n": "[N, P]"} if proj else {}
        for name in cotangent_shapes(cell):
            where = proj_where(notes[name]) if name in notes else ""
            cases = list(array_cases(fn, name, valid[name], where=where))
            if proj:   # the un-projected shape given by mistake
                bad = np.zeros({"dy": (T, N, H), "dh_n": (N, H), "dc_n": (N, P)}[name])
                cases.append(("P_H_mixed_up", bad, ValueError,
                              rf"{fn}: {name} must have shape {_shape_str(valid[name].shape)}"
                              rf"{re.escape(where)}, got {_shape_str(bad.shape)}"))
            for bid, bad, exc, pattern in cases:
                yield pytest.param(cell, name, bad, exc, pattern,
                                   id=f"{cell}_backward-{name}-{bid}")


@pytest.mark.parametrize("cell, name, bad, exc, pattern", list(backward_array_params()))
def test_backward_rejects_bad_cotangent(cell, name, bad, exc, pattern, monkeypatch):
    kw = backward_args(cell)
    kw[name] = bad
    forbid_kernels(monkeypatch)
    with pytest.raises(exc, match=pattern):
        BACKWARD[cell](**kw)


@pytest.mark.parametrize("cell, name", [pytest.param(c, n, id=f"{c}_backward-{n}")
                                        for c in CELLS + ("lstm_proj",)
                                        for n in cotangent_shapes(c)])
def test_backward_rejects_float64_cotangent_with_float32_cache(cell, name, monkeypatch):
    kw = backward_args(cell, np.float32)
    kw[name] = kw[name].astype(np.float64)
    forbid_kernels(monkeypatch)
    with pytest.raises(TypeError, match=rf"{base_cell(cell)}_backward: {name} must have dtype "
                                        rf"float32 \(the dtype of x\), got float64"):
        BACKWARD[cell](**kw)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_projection_is_lstm_only(cell, monkeypatch):
    kw = forward_args(cell)
    forbid_kernels(monkeypatch)
    with pytest.raises(TypeError, match="w_hr"):
        FORWARD[cell](**kw, w_hr=np.zeros((P, H)))


def test_projected_cache_needs_projected_cotangents_and_plain_cache_plain_ones(monkeypatch):
    """Each cache knows whether its forward had a projection: the cotangent shapes follow."""
    proj, plain = backward_args("lstm_proj"), backward_args("lstm")
    forbid_kernels(monkeypatch)
    with pytest.raises(ValueError, match=r"lstm_backward: dy must have shape \[4, 3, 6\], "
                                         r"got \[4, 3, 2\]"):
        fusedrnn.lstm_backward(plain["cache"], dy=proj["dy"])
    with pytest.raises(ValueError, match=r"lstm_backward: dh_n must have shape \[3, 2\] "):
        fusedrnn.lstm_backward(proj["cache"], dh_n=plain["dh_n"])


# ----------------------------------------------------------------------------------------------
# Valid calls succeed (and the kernel stub is really what the rejection tests run against)

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS + ("lstm_proj",))
def test_valid_calls_succeed(cell, dtype):
    kw = forward_args(cell, dtype)
    out = FORWARD[cell](**kw)
    R = P if cell == "lstm_proj" else H
    assert out.y.shape == (T, N, R) and out.y.dtype == dtype
    assert out.h_n.shape == (N, R) and out.h_n.dtype == dtype
    assert np.isfinite(out.y).all() and out.cache is not None
    bkw = backward_args(cell, dtype)
    grads = BACKWARD[cell](**bkw)
    for name, shape in input_shapes(cell).items():
        g = getattr(grads, "d" + name)
        assert g.shape == shape and g.dtype == dtype and np.isfinite(g).all(), name
    # None cotangents are allowed (zero)
    BACKWARD[cell](bkw["cache"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_valid_minimal_and_optional_variants_succeed(cell, dtype):
    kw = forward_args(cell, dtype)
    x, w_ih, w_hh = kw["x"], kw["w_ih"], kw["w_hh"]
    out = FORWARD[cell](x, w_ih, w_hh, training=False)
    assert out.cache is None and out.y.dtype == dtype
    extra = {"lstm": {}, "gru": {"variant": "reset_before"}, "rnn": {"nonlinearity": "relu"}}
    out = FORWARD[cell](x, w_ih, w_hh, reverse=np.bool_(True), training=np.bool_(True),
                        lengths=np.array(LENGTHS, np.int32), **extra[cell])
    grads = BACKWARD[cell](out.cache, dy=np.ones_like(out.y))
    assert grads.dx.shape == x.shape and grads.dh0 is None


def test_kernel_stub_is_effective(monkeypatch):
    forbid_kernels(monkeypatch)
    with pytest.raises(AssertionError, match="ran"):
        fusedrnn.lstm_forward(**forward_args("lstm"))


# ----------------------------------------------------------------------------------------------
# Threads and build information

@pytest.fixture
def restore_threads(monkeypatch):
    before = fusedrnn.get_num_threads()
    # monkeypatch puts the module's setting (None = OpenMP default) back after the test
    monkeypatch.setattr(functional, "_num_threads", functional._num_threads)
    yield before
    monkeypatch.undo()
    assert fusedrnn.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, False, None, "2", 2.0, np.float64(2.0)],
                         ids=lambda v: f"{type(v).__name__}_{v!r}")
def test_set_num_threads_rejects(bad, restore_threads):
    fusedrnn.set_num_threads(2)
    with pytest.raises((TypeError, ValueError), match=r"set_num_threads: n must be an integer "
                                                      r"in \[1, 4096\], got " + re.escape(repr(bad))):
        fusedrnn.set_num_threads(bad)
    assert fusedrnn.get_num_threads() == 2            # a rejected value changes nothing


def test_set_num_threads_rejects_value_beyond_c_int(restore_threads):
    with pytest.raises((TypeError, ValueError), match="set_num_threads"):
        fusedrnn.set_num_threads(2**31)


@pytest.mark.parametrize("n", [1, 2, 3, np.int64(2)], ids=lambda v: f"{type(v).__name__}_{v}")
def test_get_num_threads_returns_what_was_set(n, restore_threads):
    fusedrnn.set_num_threads(n)
    got = fusedrnn.get_num_threads()
    assert got == n and type(got) is int
    assert fusedrnn.build_info()["num_threads"] == n


def test_results_do_not_depend_on_num_threads(restore_threads):
    kw = forward_args("lstm")
    fusedrnn.set_num_threads(1)
    one = fusedrnn.lstm_forward(**kw).y
    fusedrnn.set_num_threads(3)
    three = fusedrnn.lstm_forward(**kw).y
    np.testing.assert_array_equal(one, three)


def test_build_info_keys():
    info = fusedrnn.build_info()
    for key in ("version", "compiler", "instruction_set", "openmp", "eigen_version"):
        assert key in info, key
    assert info["version"] == fusedrnn.__version__
    assert isinstance(info["openmp"], bool)
    for key in ("version", "compiler", "instruction_set", "eigen_version"):
        assert isinstance(info[key], str) and info[key], key
    assert info["num_threads"] == fusedrnn.get_num_threads()


# ----------------------------------------------------------------------------------------------
# The low-level _core functions: their own checks keep the C++ side safe when called directly.
# Keyword arguments: python/bindings/{lstm,single_state}.cc.

CORE_FLAG = {"lstm": [], "gru": [("variant", _core.GruVariant.reset_after)],
             "rnn": [("nonlinearity", _core.Nonlinearity.tanh)]}


CORE_CELLS = CELLS + ("lstm_proj",)


def core_args(cell, direction, dtype=np.float64):
    """Ordered (name, value) pairs of a valid _core.<cell>_<direction> call, and the names of
    the arrays with their required element count and writeability. "lstm_proj": the LSTM
    with projection, dims (T, N, C, H, P)."""
    proj = cell == "lstm_proj"
    lstm = base_cell(cell) == "lstm"
    R = P if proj else H
    dims = (T, N, C, H, P) if proj else (T, N, C, H)
    cache_size, fws, bws = getattr(_core, f"{base_cell(cell)}_sizes")(dims)
    inputs = forward_args(cell, dtype)
    lengths = np.array(LENGTHS, np.int64)
    head = [("dims", dims), ("reverse", False), ("num_threads", 0)]
    if direction == "forward":
        head += [("weights_packed", False), ("precision", _core.Precision.float32)]
    head += CORE_FLAG[base_cell(cell)]
    size = {k: int(np.prod(s)) for k, s in input_shapes(cell).items()}
    size.update(lengths=N, y=T * N * R, h_n=N * R, c_n=N * H, cache=cache_size)
    if direction == "forward":
        names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"]
        names += ["c0", "w_peep"] if lstm else []
        outs = ["y", "h_n"] + (["c_n"] if lstm else []) + ["cache", "workspace"]
        size["workspace"] = fws
        pairs = [(n, inputs[n]) for n in names]
        pairs += [("w_hr", inputs["w_hr"] if proj else None)] if lstm else []
        pairs += [("lengths", lengths)]
        pairs += [(n, np.zeros(size[n], dtype)) for n in outs]
    else:
        fwd = dict(core_args(cell, "forward", dtype)[0])
        cots = _random(cotangent_shapes(cell), dtype, 1)
        ins = ["x", "w_ih", "w_hh"] + (["w_peep", "w_hr"] if lstm else [])
        pairs = [(n, fwd[n]) for n in ins] + [("lengths", lengths),
                                               ("cache", core_cache(cell, dtype))]
        pairs += list(cots.items())
        grads = ["dx", "dh0"] + (["dc0"] if lstm else []) + ["dw_ih", "dw_hh", "db_ih", "db_hh"]
        grads += ["dw_peep"] if lstm else []
        grads += ["dw_hr"] if proj else []
        for g in grads:
            size[g] = size[g[1:]]
        size.update(dy=T * N * R, dh_n=N * R, dc_n=N * H, workspace=bws)
        pairs += [(g, np.zeros(size[g], dtype)) for g in grads]
        pairs += [("dw_hr", None)] if lstm and not proj else []
        pairs += [("workspace", np.zeros(size["workspace"], dtype))]
    arrays = [n for n, _ in pairs if n in size]
    return head + pairs, arrays, size


@functools.lru_cache(maxsize=None)
def core_cache(cell, dtype):
    """A cache filled by a valid _core forward (read-only: backward only reads it)."""
    fwd = dict(core_args(cell, "forward", dtype)[0])
    _core_call(cell, "forward", list(fwd.items()))
    fwd["cache"].flags.writeable = False
    return fwd["cache"]


def _core_call(cell, direction, pairs):
    kw = dict(pairs)
    getattr(_core, f"{base_cell(cell)}_{direction}")(kw.pop("dims"), **kw)


def core_params():
    for cell in CORE_CELLS:
        for direction in ("forward", "backward"):
            fn = f"{base_cell(cell)}_{direction}"
            tag = f"{cell}_{direction}"      # the test id: lstm_proj_* for the projection
            pairs, arrays, size = core_args(cell, direction)
            for name in arrays:
                if name == "x":       # a float32 x selects the float32 kernel: w_ih is then wrong
                    dtype_pattern = r"^w_ih must have dtype float32, got float64$"
                elif name == "lengths":
                    dtype_pattern = r"^lengths must have dtype int64, got float64$"
                else:
                    dtype_pattern = rf"^{name} must have dtype float64, got float32$"
                yield pytest.param(cell, direction, name, "dtype", TypeError, dtype_pattern,
                                   id=f"_core.{tag}-{name}-wrong_dtype")
                yield pytest.param(cell, direction, name, "size", ValueError,
                                   rf"^{name} must have {size[name]} elements, "
                                   rf"got {size[name] - 1}$", id=f"_core.{tag}-{name}-wrong_size")
                yield pytest.param(cell, direction, name, "strided", ValueError,
                                   rf"^{name} must be C-contiguous$",
                                   id=f"_core.{tag}-{name}-strided")
                yield pytest.param(cell, direction, name, "list", TypeError,
                                   rf"^{name} must be a numpy array$",
                                   id=f"_core.{tag}-{name}-list")
            yield pytest.param(cell, direction, "x", "int", TypeError,
                               r"^x must have dtype float32 or float64, got int64$",
                               id=f"_core.{tag}-x-int64")
            # The values of dims are the kernel's to check (its size query runs first).
            yield pytest.param(cell, direction, "dims", "zero", ValueError,
                               rf"^{base_cell(cell)}_sizes: dims must be positive "
                               r"\(T, N, C, H >= 1\)$", id=f"_core.{tag}-dims-zero")
            yield pytest.param(cell, direction, "dims", "three", ValueError,
                               r"^dims must be \(T, N, C, H\) or \(T, N, C, H, P\)$",
                               id=f"_core.{tag}-dims-3_items")
            yield pytest.param(cell, direction, "lengths", "range", ValueError,
                               rf"{fn}: lengths\[1\] = 5 is outside \[0, T=4\]",
                               id=f"_core.{tag}-lengths-out_of_range")
            out = "y" if direction == "forward" else "dx"
            yield pytest.param(cell, direction, out, "readonly", ValueError,
                               rf"^{out} must be writeable$", id=f"_core.{tag}-{out}-read_only")
            # backward's dx may be None (not computed: tests/test_input_grad.py); its cache may not
            need = "y" if direction == "forward" else "cache"
            yield pytest.param(cell, direction, need, "None", ValueError,
                               rf"^{need} must not be None$", id=f"_core.{tag}-{need}-None")


def _core_mutate(value, how, name):
    if how == "dtype":
        return value.astype(np.float64 if name == "lengths" else np.float32)
    if how == "size":
        return np.ascontiguousarray(value.reshape(-1)[:-1])
    if how == "strided":
        return np.repeat(value.reshape(-1), 2)[::2]
    if how == "list":
        return value.tolist()
    if how == "int":
        return value.astype(np.int64)
    if how == "zero":
        return (T, 0, C, H)
    if how == "three":
        return (T, N, C)
    if how == "range":
        return np.array([4, 5, 0], np.int64)
    if how == "readonly":
        value = value.copy()
        value.flags.writeable = False
        return value
    if how == "None":
        return None
    raise AssertionError(how)


@pytest.mark.parametrize("cell, direction, name, how, exc, pattern", list(core_params()))
def test_core_rejects_bad_array(cell, direction, name, how, exc, pattern):
    pairs, _, _ = core_args(cell, direction)
    pairs = [(n, _core_mutate(v, how, n) if n == name else v) for n, v in pairs]
    with pytest.raises(exc, match=pattern):
        _core_call(cell, direction, pairs)


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("cell", CORE_CELLS)
def test_core_valid_call_succeeds(cell, direction):
    pairs, _, _ = core_args(cell, direction)
    _core_call(cell, direction, pairs)
    out = dict(pairs)["y" if direction == "forward" else "dx"]
    assert np.isfinite(out).all()


def _core_projection_cases():
    """(id, cell of the valid call, direction, {argument: replacement}, exception, pattern)."""
    w_hr = np.zeros(P * H)
    five = (T, N, C, H, 0)
    # The kernel checks the projection (its std::invalid_argument is a ValueError).
    for direction in ("forward", "backward"):
        yield ("w_hr_None_with_P", "lstm_proj", direction, {"w_hr": None}, ValueError,
               rf"^lstm_{direction}: w_hr must not be null when P = {P} > 0$")
        yield ("w_hr_without_P", "lstm", direction, {"w_hr": w_hr}, ValueError,
               rf"^lstm_{direction}: w_hr given but P = 0 \(no projection\)$")
        yield ("P_negative", "lstm_proj", direction, {"dims": (T, N, C, H, -1)}, ValueError,
               r"^lstm_sizes: Dims::P = -1 must be >= 0 \(0 = no projection\)$")
        yield ("dims_6_items", "lstm_proj", direction, {"dims": (T, N, C, H, P, 1)}, ValueError,
               r"^dims must be \(T, N, C, H\) or \(T, N, C, H, P\)$")
        # dims with P = 0 but arrays sized for P: the sizes of the un-projected LSTM
        yield ("P_0_with_projected_arrays", "lstm_proj", direction,
               {"dims": five, "w_hr": None} | ({"dw_hr": None} if direction == "backward"
                                               else {}), ValueError,
               rf"^w_hh must have {4 * H * H} elements, got {4 * H * P}$")
        for cell in ("gru", "rnn"):
            yield ("dims_with_P", cell, direction, {"dims": (T, N, C, H, 1)}, ValueError,
                   rf"^{cell}_sizes: Dims::P = 1: projection is an LSTM option, P must be 0 here$")
    yield ("dw_hr_without_P", "lstm", "backward", {"dw_hr": w_hr}, ValueError,
           r"^lstm_backward: dw_hr given but w_hr is null \(P = 0\)$")


@pytest.mark.parametrize("cell, direction, changes, exc, pattern", [
    pytest.param(c, d, ch, e, pat, id=f"_core.{c}_{d}-{i}")
    for i, c, d, ch, e, pat in _core_projection_cases()])
def test_core_rejects_inconsistent_projection(cell, direction, changes, exc, pattern):
    pairs, _, _ = core_args(cell, direction)
    assert set(changes) <= {n for n, _ in pairs}
    pairs = [(n, changes.get(n, v)) for n, v in pairs]
    with pytest.raises(exc, match=pattern):
        _core_call(cell, direction, pairs)


def test_core_projection_dims_with_P_0_are_the_plain_lstm():
    pairs, _, _ = core_args("lstm", "forward")
    y = dict(pairs)["y"]
    _core_call("lstm", "forward", pairs)
    want = y.copy()
    pairs = [(n, (T, N, C, H, 0) if n == "dims" else v) for n, v in pairs]
    _core_call("lstm", "forward", pairs)
    assert np.array_equal(y, want)
    with pytest.raises(ValueError, match=r"^lstm_sizes: Dims::P = -1 must be >= 0"):
        _core.lstm_sizes((T, N, C, H, -1))
    assert _core.gru_sizes((T, N, C, H, 0)) == _core.gru_sizes((T, N, C, H))
    with pytest.raises(ValueError, match=r"^gru_sizes: Dims::P = 1: projection is an LSTM"):
        _core.gru_sizes((T, N, C, H, 1))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("arg", ["x", "w_hh", "h0"])
def test_forward_rejects_masked_arrays(cell, arg, monkeypatch):
    """A masked array's mask would be silently ignored by the kernels: refuse it."""
    kw = forward_args(cell)
    kw[arg] = np.ma.masked_array(kw[arg])
    forbid_kernels(monkeypatch)
    with pytest.raises(TypeError, match=rf"{cell}_forward: {arg} must be a numpy array"):
        FORWARD[cell](**kw)


def test_equal_dtype_objects_are_accepted():
    """A dtype equal to float32 but a distinct object (copy.deepcopy of a layer copies its
    np.dtype) is accepted; a non-native byte order is not."""
    import copy
    dt = copy.deepcopy(np.dtype(np.float32))
    x = np.zeros((3, 2, 4), dt)
    w = np.zeros((16, 4), dt)
    out = fusedrnn.lstm_forward(x, w, w.copy(), training=False)
    assert out.y.dtype == np.float32
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got >f4"):
        fusedrnn.lstm_forward(x.astype(">f4"), w, w.copy(), training=False)


def _gemm_args(m=4, k=5, n=6, dtype=np.float32):
    return [np.ones((m, k), dtype), np.ones((k, n), dtype), np.zeros((m, n), dtype)]


@pytest.mark.parametrize("change, exc, pattern", [
    (lambda a: a.__setitem__(0, [1.0, 2.0]), TypeError, r"^a must be a numpy array$"),
    (lambda a: a.__setitem__(0, a[0].ravel()), ValueError, r"^a must be 2-D, got 1-D$"),
    (lambda a: a.__setitem__(1, np.ones((4, 6), np.float32)), ValueError,
     r"^b must have shape \[k, n\] = \[5, n\] \(a is \[m, k\]\), got \[4, 6\]$"),
    (lambda a: a.__setitem__(2, np.zeros((6, 4), np.float32)), ValueError,
     r"^c must have shape \[m, n\] = \[4, 6\], got \[6, 4\]$"),
    (lambda a: a.__setitem__(1, a[1].astype(np.float64)), TypeError,
     r"^b must have dtype float32, got float64$"),
    (lambda a: a.__setitem__(0, a[0].astype(np.int64)), TypeError,
     r"^a must have dtype float32 or float64, got int64$"),
    (lambda a: a.__setitem__(0, np.asfortranarray(a[0])), ValueError,
     r"^a must be C-contiguous$"),
    (lambda a: a[2].setflags(write=False), ValueError, r"^c must be writeable$"),
])
def test_reference_gemm_rejects_bad_arrays(change, exc, pattern):
    args = _gemm_args()
    change(args)
    before = None if not isinstance(args[2], np.ndarray) else args[2].copy()
    with pytest.raises(exc, match=pattern):
        _core.reference_gemm(*args)
    if before is not None:
        assert np.array_equal(args[2], before), "c was written before the arguments were checked"


def test_reference_gemm_rejects_empty_sizes_and_negative_threads():
    with pytest.raises(ValueError, match=r"^reference_gemm: sizes must be positive, got m=0 n=6 "
                                         r"k=5$"):
        _core.reference_gemm(*_gemm_args(m=0))
    with pytest.raises(ValueError, match=r"^reference_gemm: num_threads must be >= 0 \(0 = "
                                         r"OpenMP default\), got -1$"):
        _core.reference_gemm(*_gemm_args(), -1)


def test_cell_clip_must_be_a_normal_number_of_the_dtype():
    """A positive cell_clip below the dtype's smallest normal number would be flushed to 0 by
    the kernels (no clip at all); one past its largest would be inf: both refused, naming it."""
    rng = np.random.default_rng(0)
    for dt, small, big in ((np.float32, 1e-38, 1e39), (np.float64, 1e-310, None)):
        x = rng.standard_normal((3, 2, 4)).astype(dt)
        w_ih = rng.standard_normal((12, 4)).astype(dt)
        w_hh = rng.standard_normal((12, 3)).astype(dt)
        for bad in (small, big):
            if bad is None:
                continue
            with pytest.raises(ValueError, match="cell_clip must lie in"):
                fusedrnn.lstm_forward(x, w_ih, w_hh, cell_clip=bad)
            with pytest.raises(ValueError, match="cell_clip must lie in"):
                fusedrnn.LSTM(4, 3, cell_clip=bad, dtype=np.dtype(dt).name)
        tiny = float(np.finfo(dt).tiny)
        out = fusedrnn.lstm_forward(x * 1e3, w_ih, w_hh, cell_clip=tiny, training=False)
        assert np.abs(out.c_n).max() <= tiny


def test_lengths_are_copied_for_backward_and_an_empty_list_names_the_shape():
    """The training cache keeps its own copy of lengths: refilling the caller's array before
    backward changes nothing. lengths=[] for N = 3 is the shape error."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4, 3))
    w_ih, w_hh = rng.standard_normal((12, 3)), rng.standard_normal((12, 3))
    dy = rng.standard_normal((6, 4, 3))
    lengths = np.array([6, 2, 4, 0], np.int64)
    want = fusedrnn.lstm_backward(fusedrnn.lstm_forward(x, w_ih, w_hh, lengths=lengths.copy())
                                  .cache, dy)
    out = fusedrnn.lstm_forward(x, w_ih, w_hh, lengths=lengths)
    lengths[:] = [1, 6, 6, 6]
    got = fusedrnn.lstm_backward(out.cache, dy)
    np.testing.assert_array_equal(got.dx, want.dx)
    np.testing.assert_array_equal(got.dw_ih, want.dw_ih)
    with pytest.raises(ValueError, match=r"lengths must have shape \[4\]"):
        fusedrnn.lstm_forward(x, w_ih, w_hh, lengths=[])


def test_ragged_lengths_list_is_named():
    # numpy's own "inhomogeneous shape" error named neither the call nor lengths
    x = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"LSTM.forward: lengths must be a flat list of 3 "
                                         r"integers \(one per sequence\), got \[1, \[2\], 3\]"):
        fusedrnn.LSTM(2, 5).forward(x, lengths=[1, [2], 3])
    w = np.zeros((15, 2), np.float32), np.zeros((15, 5), np.float32)
    with pytest.raises(ValueError, match="gru_forward: lengths must be a flat list"):
        fusedrnn.gru_forward(x, *w, lengths=(1, (2, 3), 3))
