"""Issue 25: pictures of `fusedrnn train` (loss.png for every task, one task picture where it
helps, every path printed), TensorBoard logs (--tensorboard), `fusedrnn report RUN_DIR`."""
import json
import shutil
import struct
import subprocess

import numpy as np
import pytest

from fusedrnn.cli import main

pytest.importorskip("matplotlib")

SMALL = {
    "charlm": ["--hidden", "8", "--embed", "8", "--seq-len", "10", "--batch-size", "4"],
    "classify": ["--hidden", "8", "--min-length", "6", "--max-length", "20", "--batch-size", "8"],
    "forecast": ["--hidden", "8", "--window", "10", "--horizon", "3", "--batch-size", "8"],
    "tag": ["--hidden", "8", "--embed", "8", "--batch-size", "8"],
    "translate": ["--hidden", "8", "--embed", "8", "--batch-size", "8"],
}
TASK_PICTURE = {"charlm": "charlm.png", "classify": "classify.png", "forecast": "forecast.png",
                "tag": "tag.png", "translate": "translate.png"}


def png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for task, flags in SMALL.items():
        d = tmp_path_factory.mktemp(task)
        assert main(["train", "--task", task, *flags, "--steps", "6", "--eval-every", "2",
                     "-q", "--out", str(d), "--overwrite"]) == 0
        out[task] = d
    return out


@pytest.mark.parametrize("task", list(SMALL))
def test_every_task_writes_loss_png_and_its_picture(task, runs):
    d = runs[task]
    w, h = png_size(d / "loss.png")
    assert 800 <= w <= 2000 and 500 <= h <= 1500
    pic = TASK_PICTURE[task]
    if pic:
        w, h = png_size(d / pic)
        assert 300 <= w <= 2000 and 200 <= h <= 1500


def test_translate_with_attention_draws_its_attention(tmp_path, monkeypatch, capsys):
    """translate.png with --attention: four heatmaps, each the attention weights of one
    validation source (columns: its characters) while the model writes its output (rows: the
    output characters and </s>); every row sums to 1. Without attention the picture is exact
    match by source length (bars in [0, 1])."""
    import fusedrnn.plotting as P
    figs = {}
    real = P.save_png

    def capture(fig, path):
        name = path.rsplit("/", 1)[-1]
        figs[name] = [(ax.get_images()[0].get_array() if ax.get_images() else None,
                       [t.get_text() for t in ax.get_xticklabels()],
                       [t.get_text() for t in ax.get_yticklabels()],
                       [b.get_height() for b in ax.patches]) for ax in fig.axes]
        return real(fig, path)

    monkeypatch.setattr(P, "save_png", capture)
    out = tmp_path / "attn"
    assert main(["train", "--task", "translate", *SMALL["translate"], "--attention", "luong",
                 "--steps", "4", "-q", "--out", str(out)]) == 0
    assert f"picture: {out / 'translate.png'}" in capsys.readouterr().out
    w, h = png_size(out / "translate.png")
    assert 400 <= w <= 2000 and 300 <= h <= 1500
    axes = figs["translate.png"]
    assert len(axes) == 4
    for img, xt, yt, _ in axes:
        img = np.asarray(img)
        assert img.shape == (len(yt), len(xt)) and yt[-1] == "</s>"
        np.testing.assert_allclose(img.sum(1), 1, atol=1e-5)
    out2 = tmp_path / "plain"
    assert main(["train", "--task", "translate", *SMALL["translate"], "--steps", "2", "-q",
                 "--out", str(out2)]) == 0
    (img, _, _, bars), = figs["translate.png"]
    assert img is None and bars and all(0 <= b <= 1 for b in bars)


def test_matplotlib_is_a_runtime_dependency():
    """`pip install .` alone (no extra) installs matplotlib: the installed distribution's
    metadata requires it unconditionally (a requirement without an `extra ==` marker)."""
    from importlib.metadata import requires
    reqs = [r for r in (requires("fusedrnn") or []) if r.lower().startswith("matplotlib")]
    assert any("extra" not in r for r in reqs), reqs


def test_train_prints_the_path_of_every_picture(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["train", "--task", "classify", *SMALL["classify"], "--steps", "4", "-q",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("loss.png", "classify.png"):
        assert f"picture: {out / name}" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("picture: ")]) == 2


def test_without_matplotlib_one_line_says_how(tmp_path, capsys, monkeypatch):
    import fusedrnn.plotting as P
    monkeypatch.setattr(P, "pyplot", lambda: None)
    out = tmp_path / "np"
    assert main(["train", "--task", "classify", *SMALL["classify"], "--steps", "2", "-q",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert P.HOW_TO_PLOT in text and "picture:" not in text
    assert not (out / "loss.png").exists()


def test_loss_png_holds_the_logged_points(tmp_path, monkeypatch):
    """The curves are drawn from exactly the numbers in metrics.json: every validation point
    against its step and its time, the per-step training losses, the best step starred."""
    import fusedrnn.plotting as P
    figs = {}
    real = P.save_png

    def capture(fig, path):
        figs[path.rsplit("/", 1)[-1]] = [[(ln.get_label(), list(ln.get_xdata()),
                                          list(ln.get_ydata())) for ln in ax.get_lines()]
                                         for ax in fig.axes]
        return real(fig, path)

    monkeypatch.setattr(P, "save_png", capture)
    out = tmp_path / "pts"
    assert main(["train", "--task", "classify", *SMALL["classify"], "--steps", "9",
                 "--eval-every", "3", "-q", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    ax_loss, ax_val, ax_tloss, ax_tval = figs["loss.png"]
    hist = m["history"]
    steps = [e["step"] for e in hist]
    times = [e["time_s"] for e in hist]
    vals = [e["mse"] for e in hist]
    label, x, y = next(ln for ln in ax_val if ln[0] == "fusedrnn validation")
    assert x == steps and y == pytest.approx(vals)
    label, x, y = next(ln for ln in ax_tval if ln[0] == "fusedrnn validation")
    assert x == times and y == pytest.approx(vals)
    label, x, y = next(ln for ln in ax_loss if ln[0] == "fusedrnn train loss")
    assert list(x) == list(range(1, 10)) and y == pytest.approx(m["train_loss_per_step"])
    star = [ln for ln in ax_val if ln[0].startswith("saved checkpoint")]
    assert len(star) == 1 and star[0][1] == [m["best_step"]]
    best = next(e for e in hist if e["step"] == m["best_step"])
    assert star[0][2] == pytest.approx([best["mse"]])
    assert min(vals) == pytest.approx(best["mse"])


def test_compare_torch_draws_both_curves(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import fusedrnn.plotting as P
    labels = []
    real = P.save_png

    def capture(fig, path):
        if path.endswith("loss.png"):
            labels.extend(ln.get_label() for ax in fig.axes for ln in ax.get_lines())
        return real(fig, path)

    monkeypatch.setattr(P, "save_png", capture)
    assert main(["train", "--task", "classify", *SMALL["classify"], "--steps", "4",
                 "--eval-every", "2", "-q", "--compare-torch", "--out", str(tmp_path)]) == 0
    for who in ("fusedrnn", "torch"):
        assert f"{who} train loss" in labels and f"{who} validation" in labels


# -- TensorBoard ------------------------------------------------------------------------------------
def _read_scalars(logdir):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    ea = ea_mod.EventAccumulator(str(logdir), size_guidance={ea_mod.SCALARS: 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_tensorboard_events_equal_the_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    out, tb = tmp_path / "run", tmp_path / "tb"
    assert main(["train", "--task", "classify", *SMALL["classify"], "--steps", "8",
                 "--eval-every", "4", "--clip", "1", "-q", "--out", str(out),
                 "--tensorboard", str(tb)]) == 0
    assert f"TensorBoard logs: {tb}" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    s = _read_scalars(tb)
    assert [v for _, v in s["train/loss"]] == pytest.approx(m["train_loss_per_step"], rel=1e-6)
    assert [st for st, _ in s["train/loss"]] == list(range(1, 9))
    assert len(s["train/grad_norm"]) == 8 and all(v > 0 for _, v in s["train/grad_norm"])
    assert all(v == pytest.approx(m["config"]["lr"]) for _, v in s["train/lr"])
    for key in ("mse", "baseline_mse", "accuracy"):
        assert s[f"val/{key}"] == [(e["step"], pytest.approx(e[key], rel=1e-6))
                                   for e in m["history"]]
    assert len(s["train/seqs_per_second"]) == len(m["history"])


def test_tensorboard_compare_torch_logs_two_runs(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("torch")
    tb = tmp_path / "tb"
    assert main(["train", "--task", "classify", *SMALL["classify"], "--steps", "4", "-q",
                 "--compare-torch", "--out", str(tmp_path / "r"), "--tensorboard",
                 str(tb)]) == 0
    f, t = _read_scalars(tb / "fusedrnn"), _read_scalars(tb / "torch")
    assert len(f["train/loss"]) == len(t["train/loss"]) == 4
    assert [v for _, v in f["train/loss"]] == pytest.approx([v for _, v in t["train/loss"]],
                                                            abs=1e-4)


@pytest.mark.parametrize("bad", ["file", "under-file"])
def test_bad_tensorboard_path_is_a_one_line_error_before_training(bad, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    f = tmp_path / "afile"
    f.write_text("x")
    path = f if bad == "file" else f / "sub"
    out = tmp_path / "o"
    rc = main(["train", "--task", "classify", *SMALL["classify"], "--steps", "2", "-q",
               "--out", str(out), "--tensorboard", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--tensorboard" in err, err
    assert not (out / "model.safetensors").exists()


def test_tensorboard_without_tensorboardx_is_refused(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboardX" else real(name, *a))
    rc = main(["train", "--task", "classify", *SMALL["classify"], "--steps", "2", "-q",
               "--out", str(tmp_path / "o"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install" in err and "tensorboardX" in err


# -- report -----------------------------------------------------------------------------------------
def test_report_is_self_contained(runs, capsys):
    d = runs["classify"]
    assert main(["report", str(d)]) == 0
    assert f"wrote {d / 'report.html'}" in capsys.readouterr().out
    page = (d / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2      # loss.png, classify.png
    assert "src=\"http" not in page and "<script" not in page
    m = json.loads((d / "metrics.json").read_text())
    assert f"<td>{m['history'][-1]['step']}</td>" in page


def test_report_of_a_non_run_is_one_line(tmp_path, capsys):
    rc = main(["report", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "metrics.json" in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    import matplotlib.image as mpimg
    d = runs["classify"]
    assert main(["report", str(d)]) == 0
    shot = tmp_path / "shot.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
                        f"--screenshot={shot}", "--window-size=1200,1600",
                        (d / "report.html").as_uri()], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    # the page loads without errors: no script error, no resource that failed to load
    for bad in ("Uncaught", "net::ERR_", "Not allowed to load"):
        assert bad not in r.stderr, r.stderr[-2000:]
    img = mpimg.imread(str(shot))[..., :3]
    assert img.std() > 0.05                       # not blank
    # matplotlib's first colour (C0, #1f77b4) is drawn only by the inlined pictures
    c0 = np.array([0x1f, 0x77, 0xb4]) / 255
    assert (np.abs(img - c0).max(axis=-1) < 0.06).sum() > 200


def test_html_report_takes_only_this_runs_pictures_and_refuses_malformed_metrics(tmp_path):
    """A picture another task's earlier run left in the directory stays out of the page; a
    metrics.json whose fields have the wrong types is a ValueError naming the file."""
    import json
    from fusedrnn.plotting import html_report
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"task": "forecast", "metric": "rmse",
                                                  "history": [{"step": 1, "rmse": 0.5}]}))
    for name in ("loss.png", "forecast.png", "translate.png"):
        (run / name).write_bytes(b"\x89PNG not really")
    page = open(html_report(str(run)), encoding="utf-8").read()
    assert "forecast.png" in page and "loss.png" in page and "translate.png" not in page
    for bad in ({"metric": "mse", "history": None}, {"metric": "mse", "history": [[1, 2]]},
                {"metric": "mse", "history": [], "config": [1]},
                {"metric": "mse", "history": [], "final": [1]}, {"metric": [1], "history": []}):
        (run / "metrics.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="is not a fusedrnn metrics file"):
            html_report(str(run))


@pytest.mark.parametrize("field, value", [
    ("task", 5), ("task", ["charlm"]), ("steps", "<script>alert(1)</script>"), ("steps", 2.5),
    ("steps", True), ("best_step", "3"), ("train_time_s", "<b>1</b>"), ("eval_time_s", [1]),
    ("wall_time_s", {"s": 1}), ("versions", "<i>x</i>"), ("final", 3), ("config", "x"),
    ("metric", None), ("history", {"step": 1})])
def test_report_of_malformed_metrics_is_one_line(tmp_path, capsys, field, value):
    """Every field `fusedrnn report` reads is checked first: a wrong type is one line naming the
    field, exit status 2, and no page (a task of 5 was an AttributeError traceback; a steps
    string reached the page as raw HTML)."""
    m = {"task": "classify", "metric": "mse", "history": [{"step": 1, "mse": 0.5}],
         "steps": 1, "best_step": 1, "train_time_s": 1.0, "eval_time_s": 0.5,
         "wall_time_s": 2.0, "final": {"step": 1, "mse": 0.5}, "config": {}, "versions": {}}
    m[field] = value
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    rc = main(["report", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("fusedrnn: error: ") and f"({field} is not" in err, err
    assert "Traceback" not in err and not (tmp_path / "report.html").exists()


def test_report_of_null_fields_is_a_page(tmp_path, capsys):
    # null is allowed for every optional field; "config": null was an AttributeError traceback
    m = {"task": "classify", "metric": "mse", "history": [{"step": 1, "mse": 0.5}],
         "steps": None, "best_step": None, "train_time_s": None, "eval_time_s": None,
         "wall_time_s": None, "final": None, "config": None, "versions": None}
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    assert main(["report", str(tmp_path)]) == 0, capsys.readouterr().err
    assert (tmp_path / "report.html").exists()


def test_report_escapes_every_value(tmp_path):
    """Markup anywhere in a (well-typed) metrics.json reaches the page as text."""
    from fusedrnn.plotting import html_report
    x = "<script>alert(1)</script>"
    m = {"task": x, "metric": x, "history": [{"step": 1, x: x, "note": x}],
         "final": {x: x, "baseline_" + x: x}, "best_step": 1, "steps": 1,
         "train_time_s": float("nan"), "eval_time_s": 1, "wall_time_s": 2.5,
         "config": {x: x}, "versions": {x: x}}
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    page = open(html_report(str(tmp_path)), encoding="utf-8").read()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "training nan s, validation 1 s, wall time 2.5 s" in page
