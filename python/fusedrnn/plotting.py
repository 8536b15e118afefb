"""Pictures of the ``fusedrnn`` command: matplotlib with the headless ``Agg`` backend.

matplotlib is a dependency of the package (``pip install fusedrnn`` installs it); where it is
missing anyway, :func:`pyplot` returns None and the command prints :data:`HOW_TO_PLOT` once
instead of a picture.
"""
from __future__ import annotations

import json
from typing import Optional

__all__ = ["pyplot", "save_png", "HOW_TO_PLOT"]

HOW_TO_PLOT = "no pictures: matplotlib is not installed (pip install matplotlib)"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_png(fig, path: str) -> Optional[str]:
    """Writes ``fig`` as a PNG to ``path`` atomically (no partial file on a failed write),
    closes it and returns ``path``."""
    from .tasks.guards import save_figure
    plt = pyplot()
    try:
        save_figure(fig, path)
    finally:
        if plt is not None:
            plt.close(fig)
    return path


# -- `fusedrnn report RUN_DIR`: one self-contained HTML page ----------------------------------------
PICTURES = ("loss.png", "classify.png", "forecast.png", "tag.png", "charlm.png",
            "translate.png")


def _metrics_problem(m: dict) -> Optional[str]:
    """What is wrong with the fields of a metrics.json that :func:`html_report` reads (None:
    nothing), so that a damaged or hand-edited file is one line, not a traceback (a ``task``
    of 5 was an AttributeError). ``metric`` and ``history`` are required; the others may be
    missing or null, as in a run that never validated."""
    def number(v):   # a JSON number (not a bool); NaN and inf are written as such
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    hist = m["history"]
    checks = (("metric", m["metric"], lambda v: isinstance(v, str), "a name"),
              ("history", hist, lambda v: isinstance(v, list)
               and all(isinstance(e, dict) for e in v), "a list of records"),
              ("task", m.get("task"), lambda v: isinstance(v, str), "a name"),
              ("config", m.get("config"), lambda v: isinstance(v, dict), "a mapping"),
              ("final", m.get("final"), lambda v: isinstance(v, dict), "a mapping"),
              ("versions", m.get("versions"), lambda v: isinstance(v, dict), "a mapping"),
              ("best_step", m.get("best_step"),
               lambda v: isinstance(v, int) and not isinstance(v, bool), "a step number"),
              ("steps", m.get("steps"),
               lambda v: isinstance(v, int) and not isinstance(v, bool), "a step count"),
              *((k, m.get(k), number, "a number of seconds")
                for k in ("train_time_s", "eval_time_s", "wall_time_s")))
    for name, value, ok, what in checks:
        if (value is not None or name in ("metric", "history")) and not ok(value):
            return f"{name} is not {what}: {json.dumps(value)[:60]}"
    return None


def html_report(run_dir: str, out: Optional[str] = None) -> str:
    """Writes ``<run_dir>/report.html`` (or ``out``): the run's configuration, its validation
    history as a table, the final / best metrics and every picture of the run inlined as a
    data: URI (the page needs no other file). ValueError when run_dir has no metrics.json."""
    import base64
    import html
    import json
    import os

    from .io import write_file
    mpath = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(mpath):
        raise ValueError(f"{run_dir} holds no metrics.json (not a `fusedrnn train` run "
                         f"directory)")
    try:
        with open(mpath, encoding="utf-8") as f:
            m = json.load(f)
        if not isinstance(m, dict):
            raise TypeError("not a JSON object")
        metric, hist = m["metric"], m["history"]
        problem = _metrics_problem(m)
        if problem:
            raise TypeError(problem)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{mpath} is not a fusedrnn metrics file ({e})") from None
    esc = html.escape
    # every value of the file reaches the page through fmt or esc (a hand-edited file may hold
    # markup in any field)
    fmt = (lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else esc(str(v)))
    keys = [k for k in (hist[0] if hist else {}) if k not in ("epoch",)]
    rows = "\n".join("<tr>" + "".join(f"<td>{fmt(e.get(k))}</td>" for k in keys) + "</tr>"
                     for e in hist)
    head = "".join(f"<th>{esc(k)}</th>" for k in keys)
    cfg = "\n".join(f"<tr><th>{esc(str(k))}</th><td>{esc(json.dumps(v))}</td></tr>"
                    for k, v in (m.get("config") or {}).items() if v is not None)
    final = m.get("final") or {}
    summary = (f"best validation {esc(metric)} <b>{fmt(final.get(metric))}</b> at step "
               f"{fmt(m.get('best_step'))} (baseline {fmt(final.get('baseline_' + metric))}); "
               f"{fmt(m.get('steps'))} steps, training {fmt(m.get('train_time_s'))} s, "
               f"validation {fmt(m.get('eval_time_s'))} s, wall time "
               f"{fmt(m.get('wall_time_s'))} s")
    imgs = []
    # this run's pictures: an earlier run of another task in the same --out (replaced with
    # --overwrite) may have left its own
    task = m.get("task")
    names = PICTURES if task is None else [n for n in PICTURES if n in ("loss.png", f"{task}.png")]
    for name in names:
        p = os.path.join(run_dir, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            imgs.append(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(name)}</figcaption></figure>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fusedrnn run: {esc(task or '')} ({esc(os.path.abspath(run_dir))})</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}}
table{{border-collapse:collapse;font-size:0.85em;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} th{{background:#f3f3f3}}
img{{max-width:100%;border:1px solid #ddd}} figure{{margin:1em 0}}</style></head>
<body>
<h1>fusedrnn train --task {esc(task or '')}</h1>
<p>{summary}</p>
<h2>Curves and pictures</h2>
{''.join(imgs) or '<p>(no pictures in this run directory)</p>'}
<h2>Validation history</h2>
<table><tr>{head}</tr>
{rows}
</table>
<h2>Configuration</h2>
<table>
{cfg}
</table>
<p>versions: {esc(json.dumps(m.get('versions', {})))}</p>
</body></html>
"""
    path = out or os.path.join(run_dir, "report.html")
    write_file(path, page.encode("utf-8"))
    return path
