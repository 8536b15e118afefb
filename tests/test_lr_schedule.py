"""`fusedrnn train --lr-schedule constant|cosine|linear --lr-min LR`: the learning rate of each
step from the run's progress towards its nearest limit, recorded in metrics.json's history,
replayed step for step by the --compare-torch twin, restarted from the saved --lr by --resume;
charlm's default is cosine, the other tasks' constant."""
import argparse
import json
import math

import pytest

from fusedrnn.cli import main
from fusedrnn.tasks import get_task
from fusedrnn.tasks.trainer import Run, UsageError, resolve, scheduled_lr

from test_task_charlm import TINY, make_text, one_line_error


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("lrs") / "toy.txt"
    path.write_text(make_text(400), encoding="utf-8")
    return path


def _history(out):
    return json.loads((out / "metrics.json").read_text())


def test_scheduled_lr_values():
    assert scheduled_lr("constant", 0.1, 0.0, 0.7) == 0.1
    assert scheduled_lr("cosine", 0.1, 0.0, 0.0) == 0.1
    assert scheduled_lr("cosine", 0.1, 0.02, 0.5) == pytest.approx(0.06, rel=1e-15)
    assert scheduled_lr("cosine", 0.1, 0.02, 1.0) == pytest.approx(0.02, rel=1e-15)
    assert scheduled_lr("linear", 0.1, 0.0, 0.25) == pytest.approx(0.075, rel=1e-15)
    assert scheduled_lr("linear", 0.1, 0.0, 1.0) == 0.0
    # progress outside [0, 1] (a budget overrun) is clamped
    assert scheduled_lr("cosine", 0.1, 0.0, 1.3) == pytest.approx(0.0, abs=1e-18)
    assert scheduled_lr("linear", 0.1, 0.0, -0.1) == 0.1


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_each_step_gets_the_scheduled_rate(schedule, toy, tmp_path):
    """Step k (from 1) of a --steps S run trains with the rate at progress (k - 1) / S; the
    history records the rate of the step it follows."""
    rc = main(["train", "--data", str(toy), *TINY, "--lr", "0.01", "--lr-min", "0.001",
               "--lr-schedule", schedule, "--steps", "10", "--eval-every", "5",
               "--out", str(tmp_path)])
    assert rc == 0
    m = _history(tmp_path)
    assert m["config"]["lr_schedule"] == schedule
    got = {e["step"]: e["lr"] for e in m["history"]}
    want = {k: scheduled_lr(schedule, 0.01, 0.001, (k - 1) / 10) for k in (5, 10)}
    assert got == pytest.approx(want, rel=1e-12)
    if schedule == "constant":
        assert got == {5: 0.01, 10: 0.01}


def test_defaults_cosine_for_charlm_constant_elsewhere():
    for name, want in (("charlm", "cosine"), ("forecast", "constant"), ("classify", "constant"),
                       ("tag", "constant"), ("translate", "constant")):
        a = resolve(argparse.Namespace(task=name, steps=None, epochs=None, time_budget=None,
                                       eval_every=None, out=None), get_task(name))
        assert a.lr_schedule == want, name
        assert a.lr_min == 0.0


def test_progress_follows_the_nearest_limit():
    """Progress is the largest of steps / --steps, epochs / --epochs, seconds / --time-budget."""
    run = Run(argparse.Namespace(steps=100, epochs=4.0, time_budget=None, quiet=True))
    assert run._progress(25, 0.5, 999.0, None) == 0.25
    assert run._progress(25, 2.0, 999.0, None) == 0.5
    run.args.time_budget = 60.0
    assert run._progress(25, 0.5, 45.0, 60.0) == 0.75
    assert run._progress(100, 5.0, 90.0, 60.0) == 1.0   # capped


def test_lr_min_above_lr_is_one_line(toy, tmp_path, capsys):
    rc = main(["train", "--data", str(toy), *TINY, "--lr", "0.01", "--lr-min", "0.02",
               "--lr-schedule", "cosine", "--steps", "2", "--out", str(tmp_path)])
    one_line_error(capsys, rc, "--lr-min 0.02 is above --lr 0.01")
    # a constant schedule never reaches --lr-min: no error
    assert main(["train", "--data", str(toy), *TINY, "--lr", "0.01", "--lr-min", "0.02",
                 "--lr-schedule", "constant", "--steps", "2", "--out", str(tmp_path)]) == 0


def test_unknown_schedule_is_one_line(toy, tmp_path, capsys):
    rc = main(["train", "--data", str(toy), *TINY, "--lr-schedule", "step", "--steps", "2",
               "--out", str(tmp_path)])
    one_line_error(capsys, rc, "argument --lr-schedule: invalid choice: 'step'")
    with pytest.raises(UsageError, match="--lr-schedule must be"):
        scheduled_lr("step", 0.1, 0.0, 0.5)


def test_resume_restarts_the_schedule_from_the_saved_lr(toy, tmp_path):
    """The checkpoint's optimiser holds the decayed rate; --resume starts its own schedule from
    the run's --lr (kept in the checkpoint), with the saved schedule and --lr-min."""
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--data", str(toy), *TINY, "--lr", "0.01", "--lr-schedule", "linear",
                 "--lr-min", "0.002", "--steps", "10", "--eval-every", "10",
                 "--out", str(first)]) == 0
    assert main(["train", "--resume", str(first / "model.safetensors"), "--steps", "10",
                 "--eval-every", "5", "--out", str(second), "-q"]) == 0
    m = _history(second)
    assert m["config"]["lr_schedule"] == "linear" and m["config"]["lr_min"] == 0.002
    assert m["config"]["lr"] == 0.01
    resumed = [e for e in m["history"] if e["step"] > 10]
    assert [e["step"] for e in resumed] == [15, 20]
    assert [e["lr"] for e in resumed] == pytest.approx(
        [scheduled_lr("linear", 0.01, 0.002, k / 10) for k in (4, 9)], rel=1e-12)


def test_compare_torch_twin_replays_the_rates(toy, tmp_path, capsys):
    pytest.importorskip("torch")
    rc = main(["train", "--data", str(toy), *TINY, "--lr-schedule", "cosine", "--steps", "8",
               "--eval-every", "4", "--compare-torch", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    m = _history(tmp_path)
    fused = [e["lr"] for e in m["history"]]
    twin = [e["lr"] for e in m["compare_torch"]["history"]]
    assert fused == twin
    assert fused == pytest.approx([scheduled_lr("cosine", 0.01, 0.0, k / 8) for k in (3, 7)],
                                  rel=1e-12)
    assert not math.isclose(fused[0], fused[1])


def test_resume_checks_lr_min_against_the_saved_lr(toy, tmp_path, capsys):
    """On --resume without --lr, --lr-min is checked against the saved run's --lr (0.01 here),
    not the task's default (charlm: 0.002)."""
    first = tmp_path / "a"
    assert main(["train", "--data", str(toy), *TINY, "--lr", "0.01", "--steps", "4",
                 "--eval-every", "4", "--out", str(first)]) == 0
    ok = tmp_path / "b"
    assert main(["train", "--resume", str(first), "--lr-min", "0.005", "--steps", "4",
                 "--eval-every", "4", "--out", str(ok), "-q"]) == 0
    m = _history(ok)
    assert m["config"]["lr"] == 0.01 and m["config"]["lr_schedule"] == "cosine"
    assert m["history"][-1]["lr"] == pytest.approx(scheduled_lr("cosine", 0.01, 0.005, 3 / 4),
                                                   rel=1e-12)
    capsys.readouterr()
    rc = main(["train", "--resume", str(first), "--lr-min", "0.02", "--steps", "4",
               "--out", str(tmp_path / "c")])
    one_line_error(capsys, rc, "--lr-min 0.02 is above --lr 0.01")


@pytest.mark.parametrize("bad", [{"lr_schedule": "step"}, {"lr_min": "x"}, {"lr_min": -1.0},
                                 {"clip": "x"}, {"clip": -1.0}])
def test_resume_refuses_a_bad_saved_schedule_before_any_work(toy, tmp_path, capsys, bad):
    """A checkpoint whose run record holds a schedule, --lr-min or --clip the flags would refuse:
    a one-line error naming it, exit 2, before the run writes anything."""
    import fusedrnn
    first = tmp_path / "a"
    assert main(["train", "--data", str(toy), *TINY, "--steps", "2", "--eval-every", "2",
                 "--out", str(first), "-q"]) == 0
    old = fusedrnn.load(first / "model.safetensors")

    class Opt:
        def state_dict(self):
            return old.optimizer_state

    fusedrnn.save(tmp_path / "bad.safetensors", old.model, Opt(), task=old.metadata["task"],
                  task_metadata=old.metadata["task_metadata"], trainer=old.metadata["trainer"],
                  run={**old.metadata["run"], **bad})
    capsys.readouterr()
    out = tmp_path / "b"
    rc = main(["train", "--resume", str(tmp_path / "bad.safetensors"), "--steps", "2",
               "--out", str(out)])
    key = next(iter(bad))
    one_line_error(capsys, rc, f"its run's {key}")
    assert not out.exists()
