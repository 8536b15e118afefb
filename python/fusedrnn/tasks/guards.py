"""The general rules that keep ``fusedrnn`` runs from losing work or dying with a traceback.

* :func:`check_memory`: a configuration's estimated memory against what the machine has,
  before anything is allocated (one line naming the flag and the estimate).
* :func:`read_text` / :func:`read_lines`: data and input files read with a size limit (a
  device such as /dev/zero or a huge file is refused instead of filling the memory).
* :func:`strip_bom` / :func:`split_lines`: the one way every reader of text turns a file into
  lines: a leading UTF-8 byte-order mark dropped, lines split at "\n" (and "\r\n") only.
* :func:`json_safe` / :func:`dumps`: JSON without NaN or infinities (JSON has none): each
  non-finite number becomes ``null`` and the key ``"non_finite_as_null"`` lists where.
* :func:`prepare_out_dir`: the output directory created and probed (write and remove a
  temporary file) before training starts, so that a bad ``--out`` fails at once.
"""
from __future__ import annotations

import json
import math
import os
import stat
from typing import Any, Iterable, List, Optional, Tuple

__all__ = ["TooLarge", "available_memory", "fmt_bytes", "check_memory", "read_text",
           "read_lines", "strip_bom", "split_lines", "read_limited", "json_safe", "dumps",
           "save_figure", "prepare_out_dir",
           "MAX_TEXT_BYTES"]

#: the largest data or input file read (text); above it the memory of its encoded form (8-byte
#: tokens, windows) would dominate a run on any ordinary machine
MAX_TEXT_BYTES = 1 << 30


class TooLarge(ValueError):
    """A configuration or file that would need more memory than the machine has."""


def fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable (Linux), else the physical memory;
    the environment variable FUSEDRNN_MEMORY_LIMIT (bytes) overrides both."""
    env = os.environ.get("FUSEDRNN_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 1 << 62


def check_memory(parts: Iterable[Tuple[str, float]], what: str = "this configuration") -> float:
    """``parts``: (what causes it, e.g. "--hidden 1000000000 (weights)", bytes). Raises
    :class:`TooLarge` naming the largest part when their sum exceeds the available memory;
    returns the total."""
    parts = [(name, float(b)) for name, b in parts]
    total = sum(b for _, b in parts)
    avail = available_memory()
    if total > avail:
        name, b = max(parts, key=lambda p: p[1])
        raise TooLarge(f"{what} needs about {fmt_bytes(total)} of memory ({name}: "
                       f"{fmt_bytes(b)}), more than the {fmt_bytes(avail)} available")
    return total


# -- files ---------------------------------------------------------------------------------------
def _open_limited(path: str, what: str, limit: int):
    from .base import DataError
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{what} {path}: no such file (it does not exist)") from None
    except IsADirectoryError:
        raise DataError(f"{what} {path}: is a directory, not a file") from None
    except OSError as e:
        raise DataError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    return f


def read_limited(f, name: str, limit: Optional[int] = None):
    """``f.read()`` of an open file (text or binary) of at most ``limit`` bytes / characters
    (default MAX_TEXT_BYTES); DataError naming ``name`` for a larger file or a device."""
    from .base import DataError
    limit = MAX_TEXT_BYTES if limit is None else limit
    try:
        st = os.fstat(f.fileno())
    except (OSError, AttributeError, ValueError):
        st = None
    if st is not None:
        if (stat.S_ISCHR(st.st_mode) and not os.isatty(f.fileno())) or stat.S_ISBLK(st.st_mode):
            raise DataError(f"{name}: is a device, not a file of data")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise DataError(f"{name}: {fmt_bytes(st.st_size)}, larger than the "
                            f"{fmt_bytes(limit)} fusedrnn reads")
    try:
        data = f.read(limit + 1)
    except OSError as e:
        raise DataError(f"{name}: cannot read it ({e.strerror or e})") from None
    if len(data) > limit:
        raise DataError(f"{name}: larger than the {fmt_bytes(limit)} fusedrnn reads "
                        f"(a device or a huge file?)")
    return data


def strip_bom(text: str) -> str:
    """``text`` without a leading byte-order mark (U+FEFF), which editors on Windows write at
    the start of UTF-8 files: it is a marker, not content (a vocabulary entry, a word)."""
    return text[1:] if text.startswith("\ufeff") else text


def split_lines(text: str) -> List[str]:
    r"""The lines of ``text``, split at "\n" only ("\r\n" too: the "\r" is dropped), without the
    empty string after a final newline. Not ``str.splitlines()``: that also splits at
    characters that may be content of a line (form feed, U+2028, U+0085, the separators
    \x1c-\x1e), so ``predict`` gave more outputs than input lines and error messages named
    the wrong line numbers."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_text(path: str, what: str = "--data", limit: Optional[int] = None,
              encoding: str = "utf-8") -> str:
    """The text of the file ``path`` (a leading byte-order mark dropped), at most ``limit``
    bytes (default MAX_TEXT_BYTES); DataError (one line naming ``what`` and the path)
    otherwise."""
    from .base import DataError
    limit = MAX_TEXT_BYTES if limit is None else limit
    with _open_limited(path, what, limit) as f:
        data = read_limited(f, f"{what} {path}", limit)
    try:
        return strip_bom(data.decode(encoding))
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path}: not {encoding} text ({e.reason} at byte "
                        f"{e.start})") from None


def read_lines(path: Optional[str], stdin=None, limit: Optional[int] = None) -> List[str]:
    """Input lines of ``fusedrnn predict``: the file ``path`` or, without one, standard input,
    each at most ``limit`` bytes in all; split by :func:`split_lines` (one line of input, one
    line of output), a leading byte-order mark dropped."""
    from .base import DataError
    limit = MAX_TEXT_BYTES if limit is None else limit
    if path:
        return split_lines(read_text(path, "--input", limit))
    import sys
    stream = stdin if stdin is not None else sys.stdin
    raw = getattr(stream, "buffer", None)
    if raw is None:
        text = stream.read(limit + 1)
        if len(text) > limit:
            raise DataError(f"standard input: larger than the {fmt_bytes(limit)} fusedrnn reads")
        return split_lines(strip_bom(text))
    data = read_limited(raw, "standard input", limit)
    try:
        return split_lines(strip_bom(data.decode("utf-8")))
    except UnicodeDecodeError as e:
        raise DataError(f"standard input: not UTF-8 text ({e.reason} at byte {e.start})") \
            from None


# -- JSON ----------------------------------------------------------------------------------------
def json_safe(obj: Any, where: str = "", found: Optional[List[str]] = None) -> Any:
    """``obj`` with every non-finite float replaced by None; ``found`` collects their paths
    (``history[3].rmse``)."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if found is not None:
            found.append(where or "(value)")
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v, f"{where}.{k}" if where else str(k), found)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0:
        return json_safe(obj.item(), where, found)       # numpy scalars
    return obj


def dumps(obj: Any, **kw) -> str:
    """JSON text of ``obj`` (a dict) that every JSON parser reads: non-finite numbers become
    null and, when there are any, the key ``non_finite_as_null`` lists their paths."""
    found: List[str] = []
    clean = json_safe(obj, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite_as_null"] = found
    return json.dumps(clean, allow_nan=False, default=str, **kw)


def save_figure(fig, path: str) -> None:
    """A matplotlib figure as PNG to ``path`` through the atomic writer (an error names the
    path and the bytes needed; a failed write leaves no partial file)."""
    import io

    from ..io import write_file
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_file(path, buf.getvalue())


# -- the output directory ------------------------------------------------------------------------
def prepare_out_dir(out: str, outputs: Iterable[str]) -> bool:
    """Creates ``out`` (with its parents) and checks that the files ``outputs`` can be written
    there: none of them is a directory, and a temporary file can be created and removed.
    Returns whether the directory was created here. ValueError with one line otherwise."""
    if not out or not out.strip():
        raise ValueError("--out must name a directory, got an empty string")
    created = not os.path.exists(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the directory ({e.strerror or e})") \
            from None
    for name in outputs:
        p = os.path.join(out, name)
        if os.path.isdir(p):
            raise ValueError(f"--out {out}: {p} is a directory; the run writes a file there")
    probe = os.path.join(out, f".fusedrnn-probe-{os.getpid()}.tmp")
    try:
        with open(probe, "wb") as f:
            f.write(b"probe")
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    return created


