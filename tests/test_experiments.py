"""Issue 27: `fusedrnn experiment NAME` in tiny versions (a few hundred steps each): every
recipe runs, writes its table, results and plot, and the cells that should learn beat the
trivial baseline. The full recipes (minutes) are for the user; see the README."""
import json

import pytest

from fusedrnn.cli import main
from fusedrnn.tasks.experiments import RECIPES, run_experiment

TINY = {   # name: (length, steps, runs, learners)
    "adding": (10, 300, None, ("LSTM",)),
    "temporal-order": (12, 400, ["tanh RNN", "LSTM"], ("LSTM",)),
    "elman-jordan": (None, 200, None, ("Elman", "Jordan")),
    "peepholes": (12, 300, None, ("LSTM", "LSTM + peepholes")),
}


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_recipe_learns(name, tmp_path, capsys):
    length, steps, runs, learners = TINY[name]
    res = run_experiment(name, out=str(tmp_path), length=length, steps=steps, runs=runs,
                         threads=1)
    text = capsys.readouterr().out
    assert "| run | best" in text and f"wrote {tmp_path / (name + '.png')}" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in saved["runs"]] == [r["label"] for r in res["runs"]]
    assert (tmp_path / "results.md").read_text().count("\n") == len(res["runs"]) + 2
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    for r in res["runs"]:
        assert r["steps"] == steps
        assert r["history"] and r["history"][-1]["step"] == steps
        if r["label"] in learners:
            better = r["best"] > r["baseline"] if r["higher_is_better"] else \
                r["best"] < r["baseline"]
            assert better, (r["label"], r["best"], r["baseline"])


def test_recipes_are_documented():
    for name, rec in RECIPES.items():
        assert rec.help and rec.expect and rec.runs and rec.budget * len(rec.runs) <= 540


def test_experiment_errors_are_one_line(tmp_path, capsys):
    rc = main(["experiment", "adding", "--runs", "LSTM,nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nope" in err
    rc = main(["experiment", "elman-jordan", "--length", "50", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--length does not apply" in err
    rc = main(["experiment", "nope"])
    assert rc == 2 and "invalid choice" in capsys.readouterr().err
    # a label given twice trained one directory twice and listed it twice; '' ran every run
    rc = main(["experiment", "adding", "--runs", "LSTM,lstm", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "fusedrnn: error: --runs: lstm given twice", err
    for runs in ("", " , "):
        rc = main(["experiment", "adding", "--runs", runs, "--out", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "--runs: give at least one run label" in err, err
    assert not any(tmp_path.iterdir())        # nothing trained


def test_length_below_a_problems_shortest_is_refused_and_the_header_says_t(tmp_path, capsys):
    for name in ("temporal-order", "peepholes"):
        rc = main(["experiment", name, "--length", "5", "--out", str(tmp_path / name)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"--length for experiment {name} must be at " \
            "least 10" in err[0]
    assert main(["experiment", "adding", "--length", "10", "--steps", "1", "--runs", "LSTM",
                 "--out", str(tmp_path / "a")]) == 0
    assert "T = 10;" in capsys.readouterr().out
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["help"].endswith("T = 10")


def test_recipe_steps_per_run(tmp_path, monkeypatch, capsys):
    """adding is budgeted by steps, each run its own count, unless --budget or --steps is
    given (tiny counts here; the recipe's own are in its table in the README)."""
    import dataclasses
    rec = RECIPES["adding"]
    assert set(rec.steps) == {label for label, _ in rec.runs}
    tiny = {"tanh RNN": 6, "IRNN": 9, "LSTM": 4, "GRU": 5}
    monkeypatch.setitem(RECIPES, "adding", dataclasses.replace(rec, steps=tiny))
    res = run_experiment("adding", out=str(tmp_path / "a"), length=5, threads=1)
    assert {r["label"]: r["steps"] for r in res["runs"]} == tiny
    assert res["steps_per_run"] == tiny and res["budget_s"] is None
    assert "tanh RNN 6, IRNN 9, LSTM 4, GRU 5 steps" in capsys.readouterr().out
    res = run_experiment("adding", out=str(tmp_path / "b"), length=5, threads=1, steps=3,
                         runs=["IRNN"])
    assert [r["steps"] for r in res["runs"]] == [3]
    res = run_experiment("adding", out=str(tmp_path / "c"), length=5, threads=1, budget=0.5,
                         runs=["GRU"])
    assert res["budget_s"] == 0.5 and res["steps_per_run"] is None
