"""`fusedrnn train --precision bf16` (issue 17): mixed-precision training on every task -- the
recurrent layers' compute precision is bfloat16, the checkpoint stays float32 and records it,
--resume restores it, --compare-torch trains the torch twin under torch.autocast(bfloat16);
models.set_compute and its errors."""
import json

import numpy as np
import pytest

import fusedrnn
from fusedrnn.cli import main
from fusedrnn.models import RecurrentModel, set_compute

TINY = ["--hidden", "16", "--seq-len", "20", "--batch-size", "8", "--lr", "0.01", "-q"]

#: a run of a few seconds of each task (tiny shapes); "twin": the task has a torch twin
TASKS = {
    "charlm": (["--task", "charlm", *TINY], True),
    "classify": (["--task", "classify", "--min-length", "8", "--max-length", "12", "--hidden",
                  "8", "--batch-size", "8", "-q"], True),
    "forecast": (["--task", "forecast", "--hidden", "8", "--window", "8", "--horizon", "2",
                  "--batch-size", "8", "-q"], True),
    "forecast-jordan": (["--task", "forecast", "--model", "jordan", "--hidden", "8",
                         "--window", "8", "--horizon", "2", "--batch-size", "8", "-q"], True),
    "tag": (["--task", "tag", "--hidden", "8", "--batch-size", "8", "-q"], True),
    "translate": (["--task", "translate", "--hidden", "8", "--batch-size", "8", "-q"], True),
    "translate-luong": (["--task", "translate", "--attention", "luong", "--hidden", "8",
                         "--batch-size", "8", "-q"], True),
    "recognise": (["--task", "recognise", "--hidden", "8", "--batch-size", "8", "-q"], False),
}


def _one_line(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fusedrnn: error: "), err
    assert needle in err, err


def _train(out, argv):
    assert main(["train", *argv, "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


def _have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_trains_in_bf16(name, tmp_path):
    argv, twin = TASKS[name]
    compare = ["--compare-torch"] if twin and _have_torch() else []
    steps = ["--steps", "2", "--eval-every", "2"]
    bf = _train(tmp_path / "bf16", argv + steps + compare + ["--precision", "bf16"])
    fp = _train(tmp_path / "fp32", argv + steps + compare)
    assert bf["config"]["precision"] == "bfloat16" and fp["config"]["precision"] == "float32"
    lb, lf = np.array(bf["train_loss_per_step"]), np.array(fp["train_loss_per_step"])
    # the same batches and initial weights: close, but not the float32 run
    assert not np.array_equal(lb, lf)
    np.testing.assert_allclose(lb, lf, rtol=2e-2)
    # the checkpoint holds float32 parameters and records the compute precision
    saved = fusedrnn.load(tmp_path / "bf16" / "model.safetensors")
    assert saved.metadata["run"]["precision"] == "bfloat16"
    assert all(v.dtype == np.float32 for v in saved.model.state_dict().values()
               if v.dtype.kind == "f")
    if compare:
        import torch
        tb = np.array(bf["compare_torch"]["train_loss_per_step"])
        tf = np.array(fp["compare_torch"]["train_loss_per_step"])
        assert fp["compare_torch"]["precision"] == "float32"
        if bf["compare_torch"]["precision"] == "float32":
            # only where torch's autocast LSTM cannot run (a CPU without bf16 instructions,
            # where oneDNN refuses it): the twin trained in float32, said so, and matches its
            # float32 run
            assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()
            assert "needs a CPU with bf16" in bf["compare_torch"]["precision_note"]
            np.testing.assert_array_equal(tb, tf)
        else:
            # the torch twin ran under autocast: its losses are not its float32 losses, and
            # follow the fusedrnn bf16 run's
            assert bf["compare_torch"]["precision"] == "bfloat16"
            assert not np.array_equal(tb, tf)
        np.testing.assert_allclose(tb, lb, rtol=2e-2)


def test_resume_restores_the_compute_precision(tmp_path):
    toy = tmp_path / "toy.txt"
    rng = np.random.default_rng(0)
    toy.write_text("\n".join(" ".join(rng.choice(["ab", "cd", "efg"], 5)) for _ in range(400)))
    argv = ["--data", str(toy), *TINY, "--eval-every", "3"]
    _train(tmp_path / "a", argv + ["--steps", "3", "--precision", "bfloat16"])
    ckpt = str(tmp_path / "a" / "model.safetensors")
    resumed = _train(tmp_path / "b", ["--resume", ckpt, "--steps", "3", "--eval-every", "3",
                                      "-q"])
    assert resumed["config"]["precision"] == "bfloat16"
    assert fusedrnn.load(tmp_path / "b" / "model.safetensors").metadata["run"]["precision"] \
        == "bfloat16"
    # an explicit --precision overrides the checkpoint's; the steps then differ
    fp = _train(tmp_path / "c", ["--resume", ckpt, "--steps", "3", "--eval-every", "3", "-q",
                                 "--precision", "fp32"])
    assert fp["config"]["precision"] == "float32"
    assert fp["steps"] == resumed["steps"] == 6
    lb, lf = resumed["train_loss_per_step"], fp["train_loss_per_step"]
    assert lb != lf and np.allclose(lb, lf, rtol=2e-2)
    # a checkpoint from before --precision (no record) resumes in float32
    old = fusedrnn.load(ckpt)
    old.metadata["run"].pop("precision")
    class Opt:
        def state_dict(self):
            return old.optimizer_state

    fusedrnn.save(tmp_path / "old.safetensors", old.model, Opt(), task=old.metadata["task"],
                  task_metadata=old.metadata["task_metadata"], trainer=old.metadata["trainer"],
                  run=old.metadata["run"])
    m = _train(tmp_path / "d", ["--resume", str(tmp_path / "old.safetensors"), "--steps", "1",
                                "-q"])
    assert m["config"]["precision"] == "float32"


def test_bf16_training_refusals_are_one_line(tmp_path, capsys):
    argv = ["train", *TASKS["classify"][0], "--steps", "1", "--precision", "bf16"]
    _one_line(capsys, main(argv + ["--cell", "lstm", "--layer-norm", "haste", "--out",
                                   str(tmp_path / "o")]),
              "--precision=bfloat16 is not available with layer_norm")
    assert not (tmp_path / "o").exists()
    _one_line(capsys, main(argv + ["--cell", "lstm", "--zoneout", "0.1", "--out",
                                   str(tmp_path / "o")]), "zoneout_h, zoneout_c")
    assert not (tmp_path / "o").exists()


def test_set_compute_sets_every_recurrent_layer_and_refuses_by_name():
    model = RecurrentModel("lstm", vocab_size=7, hidden_size=6, num_layers=2,
                           bidirectional=True, output_size=7, seed=0)
    assert set_compute(model, "bfloat16") is model
    assert model.rnn.compute == "bfloat16" and model.rnn.precision == "bfloat16"
    assert all(p.dtype == np.float32 for p in model.parameters())
    set_compute(model, "float32")
    assert model.rnn.compute == "float32"
    layer = fusedrnn.GRU(3, 4)
    set_compute(layer, "bfloat16")
    assert layer.compute == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        set_compute(layer, "int8")
    with pytest.raises(ValueError, match="needs float32 recurrent layers; rnn is float64"):
        set_compute(RecurrentModel("gru", input_size=3, hidden_size=4, dtype="float64"),
                    "bfloat16")
    with pytest.raises(ValueError, match="LSTMCell"):
        set_compute(fusedrnn.Sequential(fusedrnn.LSTMCell(3, 4)), "bfloat16")
    with pytest.raises(ValueError, match="has none"):
        set_compute(fusedrnn.Linear(3, 4), "bfloat16")
    reg = RecurrentModel("lstm", input_size=3, hidden_size=4, layer_norm="tfa")
    with pytest.raises(ValueError, match="layer_norm"):
        set_compute(reg, "bfloat16")
    assert reg.rnn.compute == "float32"          # refused before any layer changed
