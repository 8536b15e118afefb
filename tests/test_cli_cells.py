"""Issue 27: every cell option from the command line (--nonlinearity, --init, --peepholes,
--proj-size, --variant, --forget-bias), kept in the checkpoint and restored on --resume, refused
in one line where it does not apply; the spike-delay problem; `fusedrnn experiment` recipes in
tiny versions."""
import json

import numpy as np
import pytest

import fusedrnn
from fusedrnn.cli import main
from fusedrnn.tasks.trainer import load_task_and_model, read_checkpoint

CLASSIFY = ["--task", "classify", "--min-length", "8", "--max-length", "12", "--hidden", "8",
            "--batch-size", "8", "-q", "--steps", "3", "--eval-every", "3"]


def one_line_error(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fusedrnn: error: "), err
    assert needle in err, err


@pytest.mark.parametrize("argv,needle", [
    (["--cell", "gru", "--peepholes"], "--peepholes applies to --cell lstm only"),
    (["--cell", "rnn", "--proj-size", "4"], "--proj-size applies to --cell lstm only"),
    (["--cell", "lstm", "--variant", "reset_before"], "--variant applies to --cell gru only"),
    (["--cell", "lstm", "--nonlinearity", "relu"], "--nonlinearity applies to --cell rnn only"),
    (["--cell", "gru", "--forget-bias", "1"], "--forget-bias applies to --cell lstm only"),
    (["--cell", "lstm", "--init", "irnn"], "--init irnn"),
    (["--cell", "rnn", "--init", "irnn", "--nonlinearity", "tanh"], "--nonlinearity relu"),
    (["--cell", "rnn", "--init", "orthogonal"], "--init"),
    (["--cell", "lstm", "--proj-size", "0"], "--proj-size"),
    (["--cell", "lstm", "--forget-bias", "inf"], "--forget-bias"),
])
def test_inapplicable_cell_options_are_one_line_errors(argv, needle, tmp_path, capsys):
    rc = main(["train", *CLASSIFY, "--out", str(tmp_path / "o"), *argv])
    one_line_error(capsys, rc, needle)
    assert not (tmp_path / "o").exists()        # refused before the output directory


def test_translate_refuses_cell_options(tmp_path, capsys):
    rc = main(["train", "--task", "translate", "--peepholes", "--out", str(tmp_path / "o")])
    one_line_error(capsys, rc, "--peepholes does not apply to task translate")


@pytest.mark.parametrize("task,argv,attr,value", [
    ("classify", ["--cell", "rnn", "--init", "irnn"], "nonlinearity", "relu"),
    ("classify", ["--cell", "rnn", "--nonlinearity", "relu"], "nonlinearity", "relu"),
    ("classify", ["--cell", "lstm", "--peepholes"], "peepholes", True),
    ("classify", ["--cell", "lstm", "--proj-size", "5"], "proj_size", 5),
    ("classify", ["--cell", "gru", "--variant", "reset_before"], "variant", "reset_before"),
    ("classify", ["--cell", "lstm", "--forget-bias", "2.5"], "forget_bias", 2.5),
    ("forecast", ["--cell", "lstm", "--proj-size", "3", "--peepholes"], "proj_size", 3),
    ("forecast", ["--model", "jordan", "--cell", "rnn", "--init", "irnn"], "nonlinearity",
     "relu"),
    ("tag", ["--cell", "lstm", "--proj-size", "6"], "proj_size", 6),
    ("charlm", ["--cell", "gru", "--variant", "reset_before", "--init", "keras"], "variant",
     "reset_before"),
])
def test_cell_options_reach_the_layer_and_round_trip(task, argv, attr, value, tmp_path):
    out = tmp_path / "run"
    small = {"classify": CLASSIFY[2:],
             "forecast": ["--hidden", "8", "--window", "10", "--horizon", "3", "--batch-size",
                          "8", "-q", "--steps", "2", "--eval-every", "2"],
             "tag": ["--hidden", "8", "--embed", "8", "--batch-size", "8", "-q", "--steps", "2",
                     "--eval-every", "2"],
             "charlm": ["--hidden", "8", "--embed", "8", "--seq-len", "10", "--batch-size", "4",
                        "-q", "--steps", "2", "--eval-every", "2"]}[task]
    assert main(["train", "--task", task, *small, *argv, "--out", str(out)]) == 0
    meta = read_checkpoint(str(out / "model.safetensors"))
    flags = meta["task_metadata"]["flags"]
    assert flags[attr] == value
    ns = __import__("argparse").Namespace()
    _, model, _, _ = load_task_and_model(str(out / "model.safetensors"), ns, prepare=False)
    rnn = model.rnn if hasattr(model, "rnn") else model.encoder
    assert getattr(rnn, attr) == value
    if "--init" in argv and argv[argv.index("--init") + 1] == "irnn":
        W = fusedrnn.load(out / "model.safetensors")   # the checkpoint reads back as a whole
        assert W is not None
    if attr == "proj_size":
        assert rnn.state_size == value and model.head.in_features % value == 0
    # --resume keeps the options; giving a different one is refused
    assert main(["train", "--resume", str(out), "--steps", "1", "-q", "--out", str(out)]) == 0
    assert read_checkpoint(str(out))["task_metadata"]["flags"][attr] == value


FB_TASKS = {
    "charlm": ["--embed", "4", "--layers", "1"],
    "tag": ["--embed", "4"],
    "forecast": ["--window", "10", "--horizon", "3"],
    "classify": ["--min-length", "5", "--max-length", "8"],
}


def _forget_and_input_bias(tmp_path, task, init, extra=()):
    """The first LSTM layer's (forget, input) blocks of bias_ih right after initialisation
    (one step at --lr 1e-9 moves them by about 1e-9)."""
    out = tmp_path / f"{task}_{init}"
    assert main(["train", "--task", task, "--cell", "lstm", "--init", init, "--hidden", "64",
                 "--batch-size", "4", "--steps", "1", "--lr", "1e-9", "--out", str(out), "-q",
                 *FB_TASKS[task], *extra]) == 0
    model = fusedrnn.load(out / "model.safetensors").model
    rnn = model.rnn
    H = rnn.hidden_size
    b = rnn.bias_ih_l0.data.astype(np.float64)
    return b[H:2 * H], b[:H]


@pytest.mark.parametrize("task", list(FB_TASKS))
@pytest.mark.parametrize("init", ["pytorch", "keras"])
def test_task_default_forget_bias(task, init, tmp_path):
    """The forget-gate biases the README and --help state per task: charlm and tag none
    (PyTorch's U(+-1/sqrt(H)), Keras' unit forget bias 1); forecast +1, which under --init
    keras replaces Keras' 1 instead of adding to it (it gave 2); classify chrono (forget bias
    log U(1, max_length - 1), input bias its negative) under either init."""
    f, i = _forget_and_input_bias(tmp_path, task, init)
    if task == "classify":
        np.testing.assert_allclose(i, -f, atol=1e-6)
        assert f.min() >= -1e-6 and f.max() <= np.log(8 - 1) + 1e-6 and f.std() > 0.2
        return
    shift = {"charlm": 0.0, "tag": 0.0, "forecast": 1.0}[task]
    if init == "keras":
        np.testing.assert_allclose(f, 1.0, atol=1e-6)
    else:
        bound = 1 / np.sqrt(64)
        assert np.all(np.abs(f - shift) <= bound + 1e-6) and f.std() > bound / 4, f


@pytest.mark.parametrize("init, expected", [("pytorch", 2.5), ("keras", 3.5)])
def test_forget_bias_flag_replaces_the_task_default(init, expected, tmp_path):
    """--forget-bias X replaces forecast's default and is added to the initialisation's bias
    (PyTorch's uniform one, or Keras' unit forget bias)."""
    f, _ = _forget_and_input_bias(tmp_path, "forecast", init, ["--forget-bias", "2.5"])
    tol = 1e-6 if init == "keras" else 1 / np.sqrt(64) + 1e-6
    assert np.all(np.abs(f - expected) <= tol), f


def test_irnn_initialisation_is_identity():
    """--init irnn: identity recurrent weights, zero biases, ReLU (Le, Jaitly & Hinton 2015)."""
    import argparse
    from fusedrnn.tasks import get_task
    args = argparse.Namespace(cell="rnn", init="irnn", hidden=6, min_length=5, max_length=9)
    task = get_task("classify")(args)
    model = task.build_model()
    assert model.config()["options"] == {"init": "irnn", "nonlinearity": "relu"}
    rnn = model.rnn
    assert rnn.nonlinearity == "relu"
    np.testing.assert_array_equal(rnn.weight_hh_l0.data, np.eye(6))
    assert not rnn.bias_ih_l0.data.any() and not rnn.bias_hh_l0.data.any()


def test_resume_refuses_a_different_cell_option(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["train", *CLASSIFY, "--cell", "lstm", "--peepholes", "--out", str(out)]) == 0
    capsys.readouterr()
    rc = main(["train", "--resume", str(out), "--no-peepholes", "--steps", "1", "-q",
               "--out", str(out)])
    one_line_error(capsys, rc, "--peepholes False differs from the checkpoint's True")


def test_peepholes_change_the_model(tmp_path):
    """--peepholes adds the peephole weights; the default model has none."""
    for flag, n in (("--peepholes", 1), ("--no-peepholes", 0)):
        out = tmp_path / flag
        assert main(["train", *CLASSIFY, "--cell", "lstm", flag, "--out", str(out)]) == 0
        names = fusedrnn.io.tensor_shapes(str(out / "model.safetensors"))
        assert sum("peep" in k for k in names) == n


def test_spike_delay_problem():
    from fusedrnn.tasks.classify import make_spike_delay
    rng = np.random.default_rng(0)
    lengths = np.array([5, 9, 20, 2])
    x, y = make_spike_delay(rng, lengths, 20.0)
    assert x.shape == (20, 4, 1)
    for n, L in enumerate(lengths):
        spikes = np.flatnonzero(x[:, n, 0])
        assert spikes[-1] == L - 1 and x[L:, n].sum() == 0
        assert len(spikes) in (1, 2)            # t1 = L - 1 cannot happen; t1 = 0 = L - 1 for L=1
        assert y[n] * 20 == pytest.approx(L - 1 - spikes[0])


def test_spike_delay_predict(tmp_path, capsys):
    out = tmp_path / "sd"
    assert main(["train", "--task", "classify", "--problem", "spike-delay", "--hidden", "8",
                 "--min-length", "4", "--max-length", "10", "-q", "--steps", "2",
                 "--out", str(out)]) == 0
    inp = tmp_path / "in.txt"
    inp.write_text("0100001\n1001\n")
    capsys.readouterr()
    assert main(["predict", str(out), "--input", str(inp)]) == 0
    lines = capsys.readouterr().out.split()
    assert len(lines) == 2 and all(np.isfinite(float(v)) for v in lines)
