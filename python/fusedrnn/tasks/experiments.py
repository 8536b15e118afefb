"""``fusedrnn experiment NAME``: small recipes that reproduce the classic comparisons of
recurrent cells, each a few ``fusedrnn train`` runs under one time budget, then a table and a
plot of the validation metric against steps and training time.

Recipes (:data:`RECIPES`):

* ``adding``: the adding problem at T = 150 (``--task classify --problem adding``): Elman RNN
  with tanh and PyTorch's initialisation, IRNN (ReLU RNN, identity recurrent weights; Le, Jaitly
  & Hinton 2015; the paper's SGD, lr 0.01, clip 1, batch 16), LSTM, GRU. The paper's result:
  the tanh RNN stays at the baseline (MSE 0.167, predicting 1), the IRNN and the LSTM learn.
  Budgeted by steps (:attr:`Recipe.steps`): 2000, 8000, 1200 and 1200; the IRNN does not leave
  the baseline within 8000: with these settings it learns after ~115 000 steps
  (``--runs IRNN --steps 130000``; the README shows the measured curves).
* ``temporal-order``: Hochreiter & Schmidhuber's experiment 6a (two relevant symbols far apart,
  4 classes; ``--problem temporal-order``), the same four cells.
* ``elman-jordan``: the forecast task (Mackey-Glass) with an Elman network (hidden-state
  feedback: ``--model encoder --cell rnn``) and a Jordan network (output feedback: ``--model
  jordan``, here around the same RNN cell, so it has both feedbacks).
* ``peepholes``: LSTM with and without peepholes (Gers, Schraudolph & Schmidhuber 2002) on
  measuring the delay between two spikes (``--problem spike-delay``), a timing task.

Each run is an ordinary ``fusedrnn train`` into ``<out>/<run>/`` (model, metrics.json,
loss.png); the recipe writes ``<out>/results.json``, ``<out>/results.md`` (the table) and
``<out>/<name>.png``. ``--budget`` sets the seconds per run (the recipes' defaults keep a whole
recipe under 10 minutes on 2 cores), ``--steps`` the steps per run (a recipe with
:attr:`Recipe.steps` stops each run at its own step count unless either is given); ``--length``
the sequence length of the classify recipes.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["RECIPES", "Recipe", "run_experiment", "plot_experiment"]


@dataclass
class Recipe:
    name: str
    help: str
    base: List[str]                              # train flags every run shares
    runs: List[Tuple[str, List[str]]]            # (label, extra flags)
    budget: float                                # seconds per run
    expect: str                                  # the published result, one sentence
    learners: Tuple[str, ...] = ()               # labels that should beat the baseline
    length_flags: Tuple[str, ...] = ()           # flags --length sets
    length_min: int = 2                          # the smallest --length its problem takes
    notes: List[str] = field(default_factory=list)
    # steps per run by label: the default stop rule when set (budgeted by steps, not seconds,
    # so a loaded machine does the same work, only slower); --budget or --steps override it
    steps: Dict[str, int] = field(default_factory=dict)


_CELLS4 = [
    ("tanh RNN", ["--cell", "rnn", "--lr", "1e-3"]),
    ("IRNN", ["--cell", "rnn", "--init", "irnn", "--lr", "1e-4"]),
    ("LSTM", ["--cell", "lstm", "--lr", "2e-3"]),
    ("GRU", ["--cell", "gru", "--lr", "2e-3"]),
]

# adding: the IRNN with the paper's optimiser (SGD, lr 0.01, clip 1, batch 16; Le, Jaitly &
# Hinton 2015). Budgeted by steps: whether a run leaves the baseline depends on its number of
# updates, not on the seconds a loaded machine happened to give it.
_ADDING = [
    ("tanh RNN", ["--cell", "rnn", "--lr", "1e-3"]),
    ("IRNN", ["--cell", "rnn", "--init", "irnn", "--optimizer", "sgd", "--lr", "0.01",
              "--batch-size", "16"]),
    ("LSTM", ["--cell", "lstm", "--lr", "2e-3"]),
    ("GRU", ["--cell", "gru", "--lr", "2e-3"]),
]

RECIPES: Dict[str, Recipe] = {r.name: r for r in [
    Recipe("adding", "tanh RNN vs IRNN vs LSTM vs GRU on the adding problem, T = 150",
           ["--task", "classify", "--problem", "adding", "--min-length", "150",
            "--max-length", "150", "--hidden", "64", "--batch-size", "32", "--clip", "1"],
           _ADDING, 130,
           "the IRNN and the LSTM learn (MSE well under the 0.167 baseline); the tanh RNN "
           "stays at the baseline (Le, Jaitly & Hinton 2015); the IRNN needs ~115K SGD steps "
           "here (--runs IRNN --steps 130000), more than this recipe's 8000",
           learners=("LSTM",), length_flags=("--min-length", "--max-length"),
           steps={"tanh RNN": 2000, "IRNN": 8000, "LSTM": 1200, "GRU": 1200}),
    Recipe("temporal-order", "the same four cells on the temporal-order problem, T = 100",
           ["--task", "classify", "--problem", "temporal-order", "--min-length", "100",
            "--max-length", "100", "--hidden", "64", "--batch-size", "32", "--clip", "1"],
           _CELLS4, 100,
           "the LSTM learns the order of two symbols 40-50 steps apart; the tanh RNN stays "
           "near chance (0.25) (Hochreiter & Schmidhuber 1997, experiment 6a)",
           learners=("LSTM",), length_flags=("--min-length", "--max-length"), length_min=10),
    Recipe("elman-jordan", "Elman (hidden-state feedback) vs Jordan (output feedback) "
           "network on the Mackey-Glass forecast",
           ["--task", "forecast", "--cell", "rnn", "--hidden", "32", "--horizon", "20"],
           [("Elman", ["--model", "encoder"]), ("Jordan", ["--model", "jordan"])], 60,
           "both forecast far better than the persistence baseline; the Jordan network's "
           "rollout feeds its own predictions back",
           learners=("Elman", "Jordan")),
    Recipe("peepholes", "LSTM with and without peepholes on measuring the delay between two "
           "spikes",
           ["--task", "classify", "--problem", "spike-delay", "--min-length", "10",
            "--max-length", "60", "--cell", "lstm", "--hidden", "16", "--batch-size", "32",
            "--lr", "3e-3", "--clip", "1"],
           [("LSTM", ["--no-peepholes"]), ("LSTM + peepholes", ["--peepholes"])], 90,
           "Gers, Schraudolph & Schmidhuber (2002) added peepholes for precise timing; on "
           "measuring a delay both variants should learn, peepholes at most helping precision",
           learners=("LSTM", "LSTM + peepholes"), length_flags=("--max-length",),
           length_min=10),
]}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def run_experiment(name: str, out: Optional[str] = None, budget: Optional[float] = None,
                   length: Optional[int] = None, runs: Optional[Sequence[str]] = None,
                   seed: int = 0, threads: Optional[int] = None, stdout=None,
                   overwrite: bool = True, steps: Optional[int] = None) -> Dict[str, Any]:
    """Runs recipe ``name``; returns the results dict (also written to <out>/results.json).
    ``steps``: every run stops after this many steps instead of the time budget (the same
    work on any machine; the tests use it)."""
    import sys

    from ..cli import build_parser
    from .trainer import UsageError, train

    p = (lambda s="": print(s, file=stdout if stdout is not None else sys.stdout))  # noqa: E731
    if name not in RECIPES:
        raise UsageError(f"unknown experiment {name!r}; choose from {', '.join(RECIPES)}")
    rec = RECIPES[name]
    out = out or os.path.join("runs", "experiments", name)
    budget_given = budget
    budget = rec.budget if budget is None else float(budget)
    chosen = rec.runs
    if runs:
        labels = {lab.lower(): (lab, f) for lab, f in rec.runs}
        bad = [r for r in runs if r.lower() not in labels]
        if bad:
            raise UsageError(f"--runs: {', '.join(bad)} not in experiment {name} (runs: "
                             f"{', '.join(lab for lab, _ in rec.runs)})")
        seen, twice = set(), []
        for r in runs:
            if r.lower() in seen:
                twice.append(r)
            seen.add(r.lower())
        if twice:   # (one directory a label: the second run would overwrite the first)
            raise UsageError(f"--runs: {', '.join(twice)} given twice")
        chosen = [labels[r.lower()] for r in runs]
    base = list(rec.base)
    help_text = rec.help
    if length is not None:
        if not rec.length_flags:
            raise UsageError(f"--length does not apply to experiment {name}")
        if length < rec.length_min:
            raise UsageError(f"--length for experiment {name} must be at least "
                             f"{rec.length_min} (its problem's shortest sequences), got {length}")
        for fl in rec.length_flags:
            base[base.index(fl) + 1] = str(length)
        help_text = re.sub(r"T = \d+", f"T = {length}", help_text)
    parser = build_parser()
    by_steps = rec.steps if rec.steps and steps is None and budget_given is None else None
    if by_steps:
        each = ", ".join(f"{label} {by_steps[label]}" for label, _ in chosen) + " steps"
        p(f"experiment {name}: {help_text}; {len(chosen)} runs ({each}) into {out}")
    else:
        each = f"{steps} steps" if steps else \
            f"{budget:g} s (training time, validation included)"
        p(f"experiment {name}: {help_text}; {len(chosen)} runs of {each} each into {out}")
    results = []
    for label, flags in chosen:
        rdir = os.path.join(out, _slug(label))
        if by_steps:
            stop = ["--steps", str(by_steps[label])]
        else:
            stop = ["--steps", str(steps)] if steps else ["--time-budget", f"{budget:g}"]
        argv = ["train", *base, *flags, *stop, "--seed", str(seed), "--out", rdir, "--quiet"]
        if overwrite:
            argv.append("--overwrite")
        if threads:
            argv += ["--threads", str(threads)]
        args = parser.parse_args(argv)
        p(f"  {label:<18} fusedrnn {' '.join(argv[:-1] if not threads else argv)}")
        t0 = time.perf_counter()
        rc = train(args, io.StringIO())
        if rc:   # Ctrl-C / SIGTERM: this run saved its best model; the experiment stops here
            raise KeyboardInterrupt
        wall = time.perf_counter() - t0
        with open(os.path.join(rdir, "metrics.json")) as f:
            m = json.load(f)
        final = m.get("final") or {}
        last = m["history"][-1] if m["history"] else {}
        results.append({
            "label": label, "flags": flags, "dir": rdir, "metric": m["metric"],
            "higher_is_better": m["higher_is_better"], "best": final.get(m["metric"]),
            "best_step": m["best_step"], "last": last.get(m["metric"]),
            "baseline": final.get("baseline_" + m["metric"], last.get("baseline_" +
                                                                      m["metric"])),
            "steps": m["steps"], "train_time_s": m["train_time_s"], "wall_s": round(wall, 1),
            "history": [{k: e.get(k) for k in ("step", "time_s", m["metric"])}
                        for e in m["history"]],
        })
        r = results[-1]
        p(f"  {'':<18} best {r['metric']} {_fmt(r['best'])} (baseline {_fmt(r['baseline'])}) "
          f"after {r['steps']} steps, {wall:.0f} s")
    res = {"experiment": name, "help": help_text, "expect": rec.expect,
           "budget_s": None if steps or by_steps else budget,
           "steps_per_run": ({label: by_steps[label] for label, _ in chosen} if by_steps
                             else steps),
           "base_flags": base, "seed": seed, "runs": results}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    table = results_table(res)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    p()
    p(table)
    p(f"published result: {rec.expect}")
    p(f"wrote {os.path.join(out, 'results.json')}, {os.path.join(out, 'results.md')}")
    png = plot_experiment(res, os.path.join(out, f"{name}.png"))
    if png:
        p(f"wrote {png}")
    else:
        p("no plot: matplotlib is not installed (pip install matplotlib)")
    for r in results:
        for pic in ("loss.png",):
            path = os.path.join(r["dir"], pic)
            if os.path.isfile(path):
                p(f"wrote {path}")
    res["plot"] = png
    return res


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if abs(v) >= 0.01 else f"{v:.3g}"


def results_table(res: Dict[str, Any]) -> str:
    """The results as a Markdown table."""
    runs = res["runs"]
    metric = runs[0]["metric"] if runs else "metric"
    lines = [f"| run | best {metric} | at step | last {metric} | baseline | steps | "
             f"training s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['label']} | {_fmt(r['best'])} | {r['best_step']} | "
                     f"{_fmt(r['last'])} | {_fmt(r['baseline'])} | {r['steps']} | "
                     f"{r['train_time_s']:.0f} |")
    return "\n".join(lines)


def plot_experiment(res: Dict[str, Any], path: str) -> Optional[str]:
    """The validation metric of every run against steps and training time; None without
    matplotlib."""
    from ..plotting import pyplot, save_png
    plt = pyplot()
    if plt is None:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    base = None
    for k, r in enumerate(res["runs"]):
        h = r["history"]
        steps = [e["step"] for e in h]
        secs = [e["time_s"] for e in h]
        vals = [e[r["metric"]] for e in h]
        a1.plot(steps, vals, "o-", ms=3, color=f"C{k}", label=r["label"])
        a2.plot(secs, vals, "o-", ms=3, color=f"C{k}", label=r["label"])
        base = r["baseline"] if r["baseline"] is not None else base
    metric = res["runs"][0]["metric"] if res["runs"] else ""
    vals = [e[r["metric"]] for r in res["runs"] for e in r["history"]
            if e.get(r["metric"]) is not None] + ([base] if base is not None else [])
    # errors spanning more than two decades: a log scale, so small differences show
    log = bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 100 and \
        not (res["runs"] and res["runs"][0]["higher_is_better"])
    for ax, xl in ((a1, "step"), (a2, "training time (s)")):
        if log:
            ax.set_yscale("log")
        if base is not None:
            ax.axhline(base, color="gray", ls=":", label=f"baseline {base:.3g}")
        ax.set_xlabel(xl)
        ax.set_ylabel(f"validation {metric}" + (" (log scale)" if log else ""))
        ax.grid(alpha=0.3)
    a1.legend()
    fig.suptitle(f"fusedrnn experiment {res['experiment']}: {res['help']}", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def add_parser(sub, parser_class) -> None:
    """Registers ``fusedrnn experiment``."""
    from .. import validators as V
    lines = "\n".join(f"  {n:<15} {r.help}" for n, r in RECIPES.items())
    e = sub.add_parser("experiment", help="reproduce a classic comparison of recurrent cells "
                                          "(table and plot)",
                       description="Run one of the recipes below: a few `fusedrnn train` runs "
                                   "with the same budget, then a table and a plot.\n" + lines,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("name", choices=tuple(RECIPES), metavar="NAME",
                   help=f"one of {', '.join(RECIPES)}")
    e.add_argument("--budget", type=V.parse_float(0, lo_open=True, what="a number > 0"),
                   metavar="SECONDS", help="training seconds per run (default: the recipe's "
                                           "seconds, or its steps per run for adding)")
    e.add_argument("--steps", type=V.parse_int(1), metavar="N",
                   help="stop every run after N steps instead of --budget")
    e.add_argument("--length", type=V.parse_int(2), metavar="T",
                   help="sequence length (adding, temporal-order: T; peepholes: the longest)")
    e.add_argument("--runs", metavar="LABELS",
                   help="comma-separated subset of the runs, e.g. 'IRNN,LSTM'")
    e.add_argument("--out", metavar="DIR", help="default runs/experiments/NAME")
    e.add_argument("--seed", type=V.parse_int(0), default=0)
    from ..cli import thread_count
    e.add_argument("--threads", type=thread_count, metavar="N", help="1 to 4096")
    e.set_defaults(func=cmd_experiment)


def cmd_experiment(args, t_start) -> int:
    from .trainer import UsageError
    runs = None
    if args.runs is not None:
        runs = [r.strip() for r in args.runs.split(",") if r.strip()]
        if not runs:   # ('' had run the whole recipe)
            raise UsageError("--runs: give at least one run label, e.g. 'IRNN,LSTM' (leave "
                             "--runs out for every run)")
    run_experiment(args.name, out=args.out, budget=args.budget, length=args.length, runs=runs,
                   seed=args.seed, threads=args.threads, steps=args.steps)
    return 0
