"""The forecast task: Mackey-Glass and CSV data, the encoder and Jordan models, metrics,
predict, metadata round trip, plot, and error messages."""
import argparse
import itertools
import json
import math

import numpy as np
import pytest

import fusedrnn
from fusedrnn.module import module_from_config
from fusedrnn.tasks import DataError, get_task
from fusedrnn.tasks.base import TASK_FLAGS
from fusedrnn.tasks.forecast import (Forecast, ForecastEncoder, JordanForecaster, mackey_glass,
                                     min_rows, split_sizes)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_task(**kw):
    task = Forecast(argparse.Namespace(**kw))
    task.prepare()
    return task


def train(task, steps, lr=1e-2, seed=0):
    model = task.build_model()
    opt = fusedrnn.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for batch in itertools.islice(task.batches(np.random.default_rng(seed)), steps):
        model.zero_grad()
        loss, count = task.train_step(model, batch)
        assert count == task.args.batch_size and math.isfinite(loss)
        losses.append(loss)
        fusedrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return model, losses


SMALL = dict(window=16, horizon=5, hidden=16, batch_size=32)


@pytest.fixture(scope="module")
def trained():
    """One trained small model per --model, shared by the tests below."""
    out = {}
    for kind, steps in (("encoder", 150), ("jordan", 250)):
        fusedrnn.set_num_threads(1)
        task = make_task(model=kind, **SMALL)
        model, losses = train(task, steps)
        out[kind] = (task, model, losses)
    return out


def test_registry_and_defaults():
    assert get_task("forecast") is Forecast
    task = Forecast(argparse.Namespace())      # every flag None or absent: the task's defaults
    a = task.args
    assert (a.model, a.window, a.horizon, a.cell) == ("encoder", 64, 20, "lstm")
    assert a.hidden == Forecast.defaults["hidden"] and a.seed == 0
    assert Forecast.metric == "rmse" and not Forecast.higher_is_better
    assert "time_budget" in Forecast.defaults and "lr" in Forecast.defaults
    # explicit None (the CLI's "unset") is the same as absent
    t2 = Forecast(argparse.Namespace(**{k: None for k in TASK_FLAGS}))
    assert vars(t2.args)["window"] == 64 and t2.args.model == "encoder"


def test_mackey_glass_series():
    s = mackey_glass(6000)
    assert s.shape == (6000,) and np.isfinite(s).all()
    assert s is mackey_glass(6000)                           # cached, read-only
    assert not s.flags.writeable
    # the classic tau=17 attractor: values in about [0.2, 1.4], mean ~0.9, std ~0.23
    assert 0.2 < s.min() < 0.6 and 1.2 < s.max() < 1.45
    assert abs(s.mean() - 0.9) < 0.1 and 0.18 < s.std() < 0.28
    # the integration converges: halving dt changes the first 100 time units by < 1e-4
    coarse, fine = mackey_glass(100, discard=0.0), mackey_glass(100, dt=0.05, discard=0.0)
    np.testing.assert_allclose(fine, coarse, atol=1e-4)
    # chaotic, not periodic: no short lag repeats it
    z = (s - s.mean()) / s.std()
    ac = [np.mean(z[:-k] * z[k:]) for k in range(20, 200)]
    assert max(ac) < 0.9


def test_split_and_normalisation():
    task = make_task(**SMALL)
    n_tr, n_val, n_test = split_sizes(6000)
    assert (task.n_train, task.n_val, task.n_test) == (n_tr, n_val, n_test) == (4200, 900, 900)
    train = mackey_glass(6000)[:n_tr]
    assert task.mean == pytest.approx(train.mean()) and task.std == pytest.approx(train.std())
    # validation forecasts start inside the validation split and end before the test split
    assert task.val_starts[0] == n_tr and task.val_starts[-1] + 5 == n_tr + n_val
    assert task.test_starts[-1] + 5 == 6000
    x, y = task._windows(task.val_starts[:3])
    assert x.shape == (16, 3) and y.shape == (5, 3) and x.dtype == np.float32
    np.testing.assert_allclose(y[0] * task.std + task.mean, mackey_glass(6000)[n_tr:n_tr + 3],
                               rtol=1e-5)
    # training batches come from the training split only, deterministically per generator
    b1 = next(task.batches(np.random.default_rng(3)))
    b2 = next(task.batches(np.random.default_rng(3)))
    np.testing.assert_array_equal(b1[0], b2[0])
    assert b1[0].shape == (16, 32) and b1[1].shape == (5, 32)
    assert task.epoch == pytest.approx(2 * 32 / task.num_train_windows)


@pytest.mark.parametrize("kind", ["encoder", "jordan"])
def test_beats_persistence(trained, kind):
    task, model, losses = trained[kind]
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5])
    m = task.evaluate(model)
    assert set(m) >= {"rmse", "baseline_rmse", "nrmse", "rmse_first", "rmse_last"}
    assert all(isinstance(v, float) for v in m.values())
    # the persistence baseline of a 5-step forecast on this series is ~0.1
    assert 0.08 < m["baseline_rmse"] < 0.13
    assert m["rmse"] < 0.5 * m["baseline_rmse"], m
    assert m["nrmse"] == pytest.approx(m["rmse"] / task.std)
    lines = task.summary(model)
    assert any("persistence" in line and "test RMSE" in line for line in lines)


def test_jordan_rollout_feeds_back_its_predictions(trained):
    task, model, _ = trained["jordan"]
    x, _ = task._windows(task.val_starts[:4])
    u, y = model.rollout(x, 5)
    assert u.shape == (16 + 4, 4, 2) and y.shape == (20, 4)
    np.testing.assert_array_equal(u[:16, :, 0], x)                 # observed over the window
    np.testing.assert_array_equal(u[1:, :, 1], y[:-1])             # feedback: own prediction
    np.testing.assert_array_equal(u[16:, :, 0], y[15:-1])          # horizon: autoregressive
    assert model.training is False
    # the trained pass over the same inputs reproduces the rollout (same computation)
    model.train()
    pred, _ = model.forward(u)
    model.eval()
    np.testing.assert_allclose(pred[:, :, 0], y, atol=1e-5)
    np.testing.assert_array_equal(model.predict(x, 5), y[15:])
    # rollout restores train mode and leaves the trained pass usable
    model.train()
    model.rollout(x, 5)
    assert model.training and model.rnn.training
    model.eval()


@pytest.mark.parametrize("kind", ["encoder", "jordan"])
def test_predict_round_trip(trained, kind):
    task, model, _ = trained[kind]
    s = mackey_glass(6000)
    starts = task.val_starts[[0, 100, 500]]
    lines = [", ".join(f"{v:.17g}" for v in s[i - 30:i]) for i in starts]   # longer than window
    out = task.predict(model, lines)
    assert len(out) == 3
    got = np.array([[float(v) for v in line.split(",")] for line in out])
    assert got.shape == (3, 5)
    x, y = task._windows(starts)
    want = (task.forecast(model, x) * task.std + task.mean).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # close to the truth too (the model beats persistence)
    assert np.sqrt(np.mean((got - (y.T * task.std + task.mean)) ** 2)) < 0.1
    assert task.predict(model, []) == []
    with pytest.raises(ValueError, match="line 2.*need at least --window 16"):
        task.predict(model, [lines[0], "1, 2, 3"])
    with pytest.raises(ValueError, match="line 1: expected comma-separated numbers"):
        task.predict(model, ["1, 2, x" + ", 1" * 20])
    # one separator per line: semicolons alone work; a line mixing them (European decimal
    # commas, "0,1;0,2") is refused, not read as twice as many numbers
    assert task.predict(model, [lines[0].replace(",", ";")]) == task.predict(model, lines[:1])
    eu = ";".join(f"{v:.3f}".replace(".", ",") for v in s[100:130])
    with pytest.raises(ValueError, match="line 2: separate the values by commas or by "
                                         "semicolons, not both"):
        task.predict(model, [lines[0], eu])
    # Python's float() spellings that are not numbers of a data file
    for odd in ("1_000", "\u0661\u0662", "\uff11"):
        with pytest.raises(ValueError, match="line 1: expected comma-separated numbers"):
            task.predict(model, [lines[0] + ", " + odd])


@pytest.mark.parametrize("kind", ["encoder", "jordan"])
def test_metadata_restore_and_model_config(trained, kind):
    task, model, _ = trained[kind]
    meta = json.loads(json.dumps(task.metadata()))              # JSON-serialisable
    assert meta["mean"] == task.mean and meta["std"] == task.std
    assert meta["flags"]["model"] == kind and meta["flags"]["window"] == 16
    # a fresh task takes the checkpoint's flags, except those given to it (the user's win)
    fresh = Forecast(argparse.Namespace(model=None, window=None, batch_size=7))
    fresh.restore(meta)
    a = fresh.args
    assert (a.model, a.window, a.horizon, a.hidden, a.batch_size) == (kind, 16, 5, 16, 7)
    assert (fresh.mean, fresh.std) == (task.mean, task.std)
    # the model rebuilds from its config (as a checkpoint does) and predicts identically
    cls = ForecastEncoder if kind == "encoder" else JordanForecaster
    rebuilt = module_from_config(json.loads(json.dumps(model.config())))
    assert type(rebuilt) is cls
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    line = ", ".join(str(v) for v in mackey_glass(6000)[4500:4516])
    assert fresh.predict(rebuilt, [line]) == task.predict(model, [line])
    # evaluate after restore + prepare (data regenerated, stored normalisation kept)
    fresh.prepare()
    assert fresh.evaluate(rebuilt)["rmse"] == pytest.approx(task.evaluate(model)["rmse"])


def test_plot(trained, tmp_path):
    pytest.importorskip("matplotlib")
    task, model, _ = trained["encoder"]
    path = task.plot(model, str(tmp_path))
    assert path == str(tmp_path / "forecast.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    other = task.plot(model, str(tmp_path / "mine.png"))
    assert other.endswith("mine.png")


# -- CSV data ----------------------------------------------------------------------------------
def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_series_trains(tmp_path):
    t = np.arange(400)
    rows = "\n".join(f"{i},{math.sin(i * 0.3) * 5 + 20 + 0.5 * math.sin(i * 0.71):.6f},x"
                     for i in t)
    f = write_csv(tmp_path / "s.csv", "step, temp ,note\n" + rows + "\n\n")
    task = make_task(data=f, column="temp", window=12, horizon=3, hidden=16, batch_size=32)
    assert task.series.size == 400 and abs(task.mean - 20) < 0.5
    model, _ = train(task, 60)
    m = task.evaluate(model)
    assert m["rmse"] < 0.5 * m["baseline_rmse"], m
    assert "s.csv" in task.summary(model)[0]


def test_csv_single_column_needs_no_column_flag(tmp_path):
    f = write_csv(tmp_path / "one.csv", "value\n" + "\n".join(str(math.sin(i)) for i in range(60)))
    task = make_task(data=f, window=4, horizon=2)
    assert task.series.size == 60


def test_csv_errors(tmp_path):
    ok = "a,b\n" + "\n".join(f"{i},{i * 2}" for i in range(200)) + "\n"
    f = write_csv(tmp_path / "d.csv", ok)
    with pytest.raises(DataError, match=r"--data .*missing\.csv: no such file"):
        make_task(data=str(tmp_path / "missing.csv"), column="a")
    with pytest.raises(DataError, match="no column 'c'.*columns: a, b"):
        make_task(data=f, column="c")
    with pytest.raises(DataError, match="give --column, one of: a, b"):
        make_task(data=f)
    bad = write_csv(tmp_path / "bad.csv", "a,b\n1,2\n3,oops\n5,6\n")
    with pytest.raises(DataError, match="column 'b' is not numeric: row 3 holds 'oops'"):
        make_task(data=bad, column="b")
    for odd in ("1_000", "\u0661\u0662", "0x10"):   # float() takes the first two
        f_odd = write_csv(tmp_path / "odd.csv", f"a\n1\n2\n{odd}\n")
        with pytest.raises(DataError, match=f"not numeric: row 4 holds {odd!r}"):
            make_task(data=f_odd, column="a")
    nan = write_csv(tmp_path / "nan.csv", "a\n1\nnan\n")
    with pytest.raises(DataError, match="must be finite"):
        make_task(data=nan, column="a")
    need = min_rows(64, 20)
    assert 64 + 20 < need < 200
    short = write_csv(tmp_path / "short.csv", "a\n" + "\n".join(str(math.sin(i))
                                                               for i in range(need - 1)))
    with pytest.raises(DataError, match=f"{need - 1} values is too few for --window 64 and "
                                        f"--horizon 20: need at least {need}"):
        make_task(data=short, window=64, horizon=20)
    empty = write_csv(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match="empty"):
        make_task(data=empty, column="a")
    with pytest.raises(DataError, match="is a directory"):
        make_task(data=str(tmp_path), column="a")
    const = write_csv(tmp_path / "const.csv", "a\n" + "3\n" * 200)
    with pytest.raises(DataError, match="constant"):
        make_task(data=const, column="a", window=4, horizon=2)
    assert issubclass(DataError, ValueError)
    # the smallest accepted file works
    small = write_csv(tmp_path / "small.csv", "a\n" + "\n".join(str(math.sin(i))
                                                               for i in range(need)))
    assert make_task(data=small, window=64, horizon=20).val_starts.size >= 1


@pytest.mark.parametrize("flags, match", [
    (dict(window=0), "--window must be an integer >= 1, got 0"),
    (dict(horizon=2.5), "--horizon must be an integer"),
    (dict(model="lstm"), "--model must be one of encoder, jordan"),
    (dict(cell="transformer"), "--cell must be one of lstm, gru, rnn"),
    (dict(dropout=1.0), r"--dropout must be a number in \[0, 1\)"),
    (dict(batch_size=0), "--batch-size must be an integer >= 1"),
    (dict(column="x"), "--column needs --data"),
    (dict(bidirectional=True), "--bidirectional"),
])
def test_flag_errors(flags, match):
    with pytest.raises(ValueError, match=match):
        Forecast(argparse.Namespace(**flags))


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_and_layers_run(cell):
    task = make_task(cell=cell, layers=2, dropout=0.1, window=8, horizon=3, hidden=8,
                     batch_size=8, model="jordan" if cell == "gru" else "encoder")
    model, losses = train(task, 3)
    assert type(model.rnn).__name__ == cell.upper() and model.rnn.num_layers == 2
    assert math.isfinite(task.evaluate(model)["rmse"])


@pytest.mark.parametrize("kind", ["encoder", "jordan"])
def test_torch_twin(kind):
    torch = pytest.importorskip("torch")
    task = make_task(model=kind, **SMALL)
    model = task.build_model()
    tmodel = task.torch_model(model)
    batch = next(task.batches(np.random.default_rng(0)))
    model.zero_grad()
    loss, n = task.train_step(model, batch)
    tmodel.zero_grad()
    tloss, tn = task.torch_train_step(tmodel, batch)
    assert n == tn and tloss == pytest.approx(loss, rel=1e-4)
    tgrads = {f"rnn.{k}": p.grad for k, p in tmodel.rnn.named_parameters()}
    tgrads.update({f"head.{k}": p.grad for k, p in tmodel.head.named_parameters()})
    for name, g in model.grad_dict().items():
        np.testing.assert_allclose(g, tgrads[name].numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    model.eval()
    ours, theirs = task.evaluate(model), task.torch_evaluate(tmodel)
    for k in ours:
        assert theirs[k] == pytest.approx(ours[k], rel=1e-4), k
    assert isinstance(tmodel, torch.nn.Module)
