"""Issue 19's regulariser flags (--layer-norm, --ln-eps, --zoneout / --zoneout-h / --zoneout-c,
--recurrent-dropout, --input-dropout, --weight-drop, --dropout-masks) on translate (the
encoder and the decoder, with and without attention) and recognise (the CTC recogniser's
stack): a short run of each, the options in the layers, the config and the checkpoint's flags,
kept by --resume, evaluate and fusedrnn.load, eval mode deterministic; impossible
combinations and two values for one zoneout probability refused in one line."""
import argparse

import numpy as np
import pytest

import fusedrnn
from fusedrnn.cli import main
from fusedrnn.tasks.trainer import load_task_and_model, read_checkpoint

SMALL = ["--hidden", "8", "--batch-size", "8", "-q", "--steps", "2", "--eval-every", "2"]
TASKS = {"translate": ["--task", "translate", "--embed", "8"],
         "attention": ["--task", "translate", "--embed", "8", "--attention", "luong"],
         "recognise": ["--task", "recognise"]}
# flags -> the layer attributes they set (LSTM unless --cell says otherwise)
FLAGS = [
    (["--layer-norm", "haste", "--ln-eps", "1e-3"], {"layer_norm": "haste", "ln_eps": 1e-3}),
    (["--layer-norm", "tfa"], {"layer_norm": "tfa"}),
    (["--zoneout", "0.1"], {"zoneout_h": 0.1, "zoneout_c": 0.1}),
    (["--zoneout-h", "0.2", "--zoneout-c", "0.05"], {"zoneout_h": 0.2, "zoneout_c": 0.05}),
    (["--recurrent-dropout", "0.2"], {"recurrent_dropout": 0.2}),
    (["--input-dropout", "0.1", "--dropout-masks", "per_gate"],
     {"input_dropout": 0.1, "dropout_masks": "per_gate"}),
    (["--weight-drop", "0.3"], {"weight_drop": 0.3}),
    (["--cell", "gru", "--layer-norm", "haste", "--zoneout", "0.1", "--weight-drop", "0.2"],
     {"layer_norm": "haste", "zoneout_h": 0.1, "weight_drop": 0.2}),
]


def one_line_error(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fusedrnn: error: "), err
    assert needle in err, err


def _layers(model):
    return [model.rnn] if hasattr(model, "rnn") else [model.encoder, model.decoder]


def _eval_outputs(task, model):
    """The model's eval-mode outputs on a few validation items (twice: they must agree)."""
    model.eval()
    if hasattr(model, "rnn"):
        x, lengths, _, _ = task.make_batch(task.valid_utts[:5])
        return model.forward(x, lengths)
    src, src_len, tgt_in, _, tgt_len = task.make_batch(task.valid_pairs[:5])
    return model.forward(src, src_len, tgt_in, tgt_len)


# every flag set on translate (with and without attention); recognise, whose runs cost ~15 s
# each (its built-in data and beam decoding), takes three: zoneout h and c, per-gate input
# dropout, and layer norm + zoneout + weight_drop on the GRU (the flags reach its stack by the
# same code as translate's)
CASES = [(task, flags, attrs) for task in ("translate", "attention") for flags, attrs in FLAGS] + \
    [("recognise", *FLAGS[k]) for k in (3, 5, 7)]


@pytest.mark.parametrize("task,flags,attrs", CASES,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else
                         (v if isinstance(v, str) else ""))
def test_regulariser_flags_train_every_task_and_round_trip(task, flags, attrs, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TASKS[task], *SMALL, *flags, "--out", str(out)]) == 0
    ckpt = str(out / "model.safetensors")
    saved = read_checkpoint(ckpt)["task_metadata"]["flags"]
    for k, v in attrs.items():
        assert saved[k] == v, k
    t, model, _, _ = load_task_and_model(ckpt, argparse.Namespace())
    for layer in _layers(model):        # translate: the encoder and the decoder alike
        for k, v in attrs.items():
            assert getattr(layer, k) == v, (k, layer)
    assert model.config()["options"] == {k: v for k, v in attrs.items()}
    # fusedrnn.load rebuilds the same model from the config alone: equal outputs, and eval
    # mode is deterministic (dropout off, zoneout's expectation)
    again = fusedrnn.load(ckpt).model
    first = _eval_outputs(t, model)
    np.testing.assert_array_equal(first, _eval_outputs(t, model))
    np.testing.assert_array_equal(first, _eval_outputs(t, again))
    assert t.evaluate(model) == t.evaluate(again)
    # --resume keeps them (the model is rebuilt from the checkpoint's flags)
    assert main(["train", "--resume", ckpt, "--steps", "3", "-q", "--out", str(out)]) == 0
    _, resumed, _, _ = load_task_and_model(ckpt, argparse.Namespace(), prepare=False)
    for layer in _layers(resumed):
        for k, v in attrs.items():
            assert getattr(layer, k) == v


@pytest.mark.parametrize("task", ["translate", "recognise"])
def test_regularisers_change_the_training(task, tmp_path):
    """The options reach the model that trains: the same seed with and without --weight-drop
    (or --layer-norm) ends at different weights."""
    def run(name, *flags):
        out = tmp_path / name
        assert main(["train", *TASKS[task], *SMALL, *flags, "--out", str(out)]) == 0
        return fusedrnn.io.load_tensors(str(out / "model.safetensors"))[0]
    plain, dropped = run("plain"), run("wd", "--weight-drop", "0.5")
    key = next(k for k in plain if "weight_hh" in k)
    assert not np.array_equal(plain[key], dropped[key])
    normed = run("ln", "--layer-norm", "haste")
    assert any("ln_" in k for k in normed) and not any("ln_" in k for k in plain)


@pytest.mark.parametrize("argv,needle", [
    (["--task", "translate", "--layer-norm", "haste", "--precision", "bf16"],
     "--precision=bfloat16 is not available with layer_norm (layer 'encoder')"),
    (["--task", "recognise", "--zoneout", "0.1", "--precision", "bf16"],
     "--precision=bfloat16 is not available with zoneout_h, zoneout_c (layer 'rnn')"),
    (["--task", "translate", "--cell", "gru", "--layer-norm", "tfa"], "--layer-norm"),
    (["--task", "recognise", "--cell", "rnn", "--weight-drop", "0.1"],
     "--weight-drop applies to --cell lstm or --cell gru only, not --cell rnn"),
    (["--task", "translate", "--dropout-masks", "per_gate"],
     "--dropout-masks per_gate needs --recurrent-dropout"),
    (["--task", "translate", "--peepholes"], "--peepholes does not apply to task translate"),
    (["--task", "recognise", "--proj-size", "4"], "--proj-size does not apply to task recognise"),
])
def test_impossible_combinations_are_one_line_errors(argv, needle, tmp_path, capsys):
    rc = main(["train", *argv, *SMALL, "--out", str(tmp_path / "o")])
    one_line_error(capsys, rc, needle)


@pytest.mark.parametrize("task", ["charlm", "translate"])
@pytest.mark.parametrize("argv,named", [
    (["--zoneout", "0.1", "--zoneout-h", "0.2"], "--zoneout-h"),
    (["--zoneout-h", "0.2", "--zoneout", "0.1"], "--zoneout-h"),
    (["--zoneout", "0.1", "--zoneout-c", "0.2"], "--zoneout-c"),
    (["--zoneout-c", "0.2", "--zoneout-h", "0.3", "--zoneout", "0.1"],
     "--zoneout-h and --zoneout-c"),
])
def test_zoneout_with_zoneout_h_or_c_is_refused(task, argv, named, tmp_path, capsys):
    """--zoneout P sets both probabilities; with --zoneout-h / --zoneout-c one of the two
    values was silently dropped (zoneout_h stayed --zoneout-h's, in either order)."""
    rc = main(["train", "--task", task, *argv, *SMALL, "--out", str(tmp_path / "o")])
    one_line_error(capsys, rc, f"give either --zoneout or {named}, not both")
    assert not (tmp_path / "o").exists()


def test_zoneout_on_resume_replaces_the_saved_probabilities(tmp_path, capsys):
    """On --resume the checkpoint's zoneout_h / zoneout_c fill the flags the user did not give;
    --zoneout given then is the user's value (not a conflict with the saved ones), and a
    value that differs from the checkpoint's is refused as any changed model flag is."""
    out = tmp_path / "r"
    assert main(["train", *TASKS["recognise"], *SMALL, "--zoneout", "0.1",
                 "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--zoneout", "0.1", "--steps", "3", "-q",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    rc = main(["train", "--resume", str(out), "--zoneout", "0.2", "--steps", "4", "-q",
               "--out", str(out)])
    one_line_error(capsys, rc, "differs from the checkpoint's")
