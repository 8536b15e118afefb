"""`fusedrnn export` and `fusedrnn import` (issue 22): ONNX and Keras round trips through the
command line, and their errors (exit status 2, one line naming the problem)."""
import numpy as np
import pytest

import fusedrnn
from fusedrnn.cli import main
from fusedrnn.models import RecurrentModel


@pytest.fixture
def checkpoint(tmp_path):
    model = RecurrentModel("lstm", vocab_size=10, embed_dim=4, hidden_size=6, num_layers=2,
                           bidirectional=True, output_size=10, seed=0)
    path = tmp_path / "run" / "model.safetensors"
    path.parent.mkdir()
    fusedrnn.save(path, model, step=3)
    return path, model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].tobytes() == sb[k].tobytes() for k in sa)


def test_export_import_onnx(tmp_path, checkpoint, capsys):
    pytest.importorskip("onnx")
    path, model = checkpoint
    out = tmp_path / "m.onnx"
    # a run directory works like its model.safetensors
    assert main(["export", str(path.parent), "--format", "onnx", "--out", str(out),
                 "--lengths", "--initial-state", "--opset", "18"]) == 0
    assert "inputs x, lengths, h0, c0" in capsys.readouterr().out
    back = tmp_path / "back.safetensors"
    assert main(["import", str(out), "--out", str(back)]) == 0
    restored = fusedrnn.load(back).model
    assert isinstance(restored, RecurrentModel) and _same(model, restored)
    assert fusedrnn.load(back).metadata["source_format"] == "onnx"


def test_export_import_keras(tmp_path, checkpoint):
    pytest.importorskip("h5py")
    path, model = checkpoint
    out = tmp_path / "m.weights.h5"
    assert main(["export", str(path), "--format", "keras", "--out", str(out)]) == 0
    back = tmp_path / "back.safetensors"
    assert main(["import", str(out), "--out", str(back), "--return-sequences", "yes"]) == 0
    restored = fusedrnn.load(back).model
    x = np.random.default_rng(0).integers(0, 10, (3, 5))
    y, _ = model.eval().forward(np.ascontiguousarray(x.T))
    got = restored.forward(x)
    np.testing.assert_allclose(got, y.transpose(1, 0, 2), rtol=1e-5, atol=1e-6)


def test_errors(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    cases = [
        (["export", str(path), "--format", "onnx", "--out", str(out)], "exists"),
        (["import", str(tmp_path / "nothing.onnx"), "--out", str(tmp_path / "c")],
         "no such file"),
        (["import", str(path), "--out", str(tmp_path / "c")], "unknown format"),
        (["import", str(out), "--out", str(tmp_path / "c")], "not a valid ONNX model"),
        (["export", str(out), "--format", "onnx", "--out", str(tmp_path / "x.onnx")],
         "cannot read checkpoint"),
        (["export", str(path), "--format", "keras", "--out", str(tmp_path / "x.weights.h5"),
          "--lengths"], "for --format onnx"),
    ]
    pytest.importorskip("onnx")
    pytest.importorskip("h5py")
    proj = tmp_path / "proj.safetensors"
    fusedrnn.save(proj, fusedrnn.LSTM(3, 5, proj_size=2))
    cases.append((["export", str(proj), "--format", "keras", "--out",
                   str(tmp_path / "p.weights.h5")], "projection"))
    lin = tmp_path / "lin.safetensors"
    fusedrnn.save(lin, fusedrnn.Sequential(fusedrnn.Linear(2, 3)))
    cases.append((["export", str(lin), "--format", "onnx", "--out", str(tmp_path / "l.onnx")],
                  "holds Sequential"))
    for argv, match in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("fusedrnn: error: ") and match in err and err.count("\n") == 1, err
    assert out.read_bytes() == b"old"
    assert main(["export", str(path), "--out", "x"]) == 2  # --format is required


def test_import_fusedrnn_imports_no_interchange_package():
    import subprocess
    import sys
    code = ("import sys, fusedrnn; fusedrnn.onnx; fusedrnn.keras; "
            "print(sorted(m for m in ('onnx', 'h5py', 'keras', 'onnxruntime', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_export_takes_what_the_exporters_take(tmp_path, checkpoint, capsys):
    """A checkpoint that `fusedrnn import X.weights.h5` wrote holds a KerasModel: export
    --format keras takes it (as fusedrnn.keras.save does); ONNX's exporter refuses it, in one
    line naming the model."""
    pytest.importorskip("h5py")
    from fusedrnn.keras import KerasModel
    path, _ = checkpoint
    h5 = tmp_path / "m.weights.h5"
    assert main(["export", str(path), "--format", "keras", "--out", str(h5)]) == 0
    ck = tmp_path / "ck.safetensors"
    assert main(["import", str(h5), "--out", str(ck)]) == 0
    kmodel = fusedrnn.load(ck).model
    assert isinstance(kmodel, KerasModel)
    again = tmp_path / "again.weights.h5"
    assert main(["export", str(ck), "--format", "keras", "--out", str(again)]) == 0
    back = tmp_path / "back.safetensors"
    assert main(["import", str(again), "--out", str(back)]) == 0
    assert _same(kmodel, fusedrnn.load(back).model)
    capsys.readouterr()
    pytest.importorskip("onnx")
    assert main(["export", str(ck), "--format", "onnx", "--out", str(tmp_path / "k.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusedrnn: error: ") and err.count("\n") == 1, err
    assert "holds KerasModel" in err and "fusedrnn.onnx.export" in err, err
    assert not (tmp_path / "k.onnx").exists()


def test_import_gru_without_bias_takes_variant(tmp_path, capsys):
    """A bias-less GRU's .weights.h5 does not tell its formula (Keras writes no record of it):
    `fusedrnn import` refuses it in one line naming --variant, and --variant takes it."""
    h5py = pytest.importorskip("h5py")
    from fusedrnn import keras as fkeras
    gru = fusedrnn.GRU(3, 4, bias=False, variant="reset_before", seed=1)
    src = tmp_path / "g.weights.h5"
    fkeras.save(gru, src)
    with h5py.File(src, "r+") as f:                   # as Keras itself writes it
        for k in [k for k in f.attrs if k.startswith("fusedrnn")]:
            del f.attrs[k]
    out = tmp_path / "g.safetensors"
    assert main(["import", str(src), "--out", str(out)]) == 2
    assert "variant" in capsys.readouterr().err
    assert main(["import", str(src), "--out", str(out), "--variant", "reset_before"]) == 0
    back = fusedrnn.load(out).model
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    y, _ = gru.eval().forward(np.ascontiguousarray(x.transpose(1, 0, 2)))
    np.testing.assert_allclose(back.forward(x), y.transpose(1, 0, 2), rtol=1e-5, atol=1e-6)
