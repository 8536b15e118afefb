"""The C++ example programs (examples/cpp: ctc_decode, stream, generate) and bench/stream_latency
refuse careless arguments and inputs with a message and exit 2 instead of reading past the end
of a tensor, running on garbage numbers, or aborting. They are built only with
-DFUSEDRNN_BUILD_EXAMPLES=ON: set FUSEDRNN_EXAMPLES_DIR to that build directory (the one with
the `ctc_decode`, `stream`, `generate` and `stream_latency` executables) to run these tests;
without it they skip. The checkpoints are small untrained models written here (the exit codes
and messages do not depend on the weights)."""
import os
import subprocess

import numpy as np
import pytest

import fusedrnn
from fusedrnn.io import save_tensors
from fusedrnn.models import RecurrentModel

BUILD = os.environ.get("FUSEDRNN_EXAMPLES_DIR", "")
pytestmark = pytest.mark.skipif(
    not (BUILD and os.path.isfile(os.path.join(BUILD, "ctc_decode"))),
    reason="FUSEDRNN_EXAMPLES_DIR (a -DFUSEDRNN_BUILD_EXAMPLES=ON build) not set")

T, N, F, K = 12, 6, 5, 11


def _run(prog, *args, timeout=120, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([os.path.join(BUILD, prog), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from fusedrnn.ctc import ctc_greedy_decode
    from fusedrnn.tasks.recognise import CtcRecognizer

    d = tmp_path_factory.mktemp("examples")
    ctc = CtcRecognizer(F, K, hidden=8, layers=1, cell="lstm", seed=0)
    ctc.eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, F)).astype(np.float32)
    lengths = np.array([12, 11, 9, 12, 5, 7], np.int64)
    x[np.arange(T)[:, None] >= lengths[None, :]] = 0
    decoded = ctc_greedy_decode(ctc.forward(x, lengths), lengths)
    labels = np.array([v for dd in decoded for v in dd], np.int64)
    counts = np.array([len(dd) for dd in decoded], np.int64)
    assert labels.size >= 2 and counts.min() >= 0
    fusedrnn.save(str(d / "ctc.safetensors"), ctc, task="recognise")
    feats = {"x": x, "lengths": lengths, "labels": labels, "label_counts": counts}
    p = {"ctc": d / "ctc.safetensors"}

    def feat(name, **t):
        p[name] = d / f"{name}.safetensors"
        save_tensors(str(p[name]), {k: v for k, v in {**feats, **t}.items() if v is not None})

    feat("good")
    feat("short_lengths", lengths=lengths[:1].copy())
    feat("lengths_2d", lengths=np.stack([lengths, lengths]))
    feat("lengths_i32", lengths=lengths.astype(np.int32))
    feat("lengths_big", lengths=np.where(np.arange(N) == 0, 10**6, lengths))
    feat("short_labels", labels=labels[:1].copy())
    feat("short_counts", label_counts=counts[:1].copy())
    feat("negative_count", label_counts=np.concatenate([[-1, counts[0] + counts[1] + 1],
                                                         counts[2:]]).astype(np.int64))
    feat("labels_only", label_counts=None)
    feat("x_f64", x=x.astype(np.float64))
    feat("x_T0", x=x[:0].copy(), lengths=None, labels=None, label_counts=None)
    vocab = list("abcdefgh")
    lm = RecurrentModel("lstm", vocab_size=len(vocab), embed_dim=4, hidden_size=8,
                        output_size=len(vocab), seed=0)
    fusedrnn.save(str(d / "charlm.safetensors"), lm, vocab=vocab)
    p["charlm"] = d / "charlm.safetensors"
    sine = RecurrentModel("gru", input_size=1, hidden_size=8, output_size=1, seed=0)
    fusedrnn.save(str(d / "sine.safetensors"), sine)
    p["sine"] = d / "sine.safetensors"
    bi = RecurrentModel("lstm", input_size=1, hidden_size=8, output_size=1, seed=0,
                        bidirectional=True)
    fusedrnn.save(str(d / "bi.safetensors"), bi)
    p["bi"] = d / "bi.safetensors"
    # layer norm + zoneout with a projection: the regularised kernel projects (C++ too)
    lnp = RecurrentModel("lstm", input_size=1, hidden_size=8, output_size=1, seed=0,
                         proj_size=3, layer_norm="haste", zoneout_h=0.1)
    fusedrnn.save(str(d / "lnp.safetensors"), lnp)
    p["lnp"] = d / "lnp.safetensors"
    # dropout = 1 between layers (torch's top value; training only, recorded and ignored here)
    drop1 = RecurrentModel("gru", input_size=1, hidden_size=8, output_size=1, seed=0,
                           num_layers=2, dropout=1.0)
    fusedrnn.save(str(d / "drop1.safetensors"), drop1)
    p["drop1"] = d / "drop1.safetensors"
    # the recogniser with issue 19's options (`--layer-norm haste --recurrent-dropout 0.2`):
    # its config keeps them in an "options" object, which the C++ loader had refused
    ctco = CtcRecognizer(F, K, hidden=8, layers=1, cell="lstm", seed=1,
                         options={"layer_norm": "haste", "recurrent_dropout": 0.2})
    ctco.eval()
    dec = ctc_greedy_decode(ctco.forward(x, lengths), lengths)
    fusedrnn.save(str(d / "ctc_opts.safetensors"), ctco, task="recognise")
    p["ctc_opts"] = d / "ctc_opts.safetensors"
    feat("good_opts", labels=np.array([v for dd in dec for v in dd], np.int64),
         label_counts=np.array([len(dd) for dd in dec], np.int64))
    return p


@pytest.mark.parametrize("model, feats", [("ctc", "good"), ("ctc_opts", "good_opts")])
def test_ctc_decode_runs_and_matches_its_reference(files, model, feats):
    r = _run("ctc_decode", files[model], files[feats])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("[reference: equal]") == N


@pytest.mark.parametrize("name, want", [
    ("short_lengths", '"lengths" must be [6] int64'),
    ("lengths_2d", '"lengths" must be [6] int64'),
    ("lengths_i32", '"lengths" must be [6] int64'),
    ("lengths_big", '"lengths"[0] = 1000000 is outside [0, T = 12]'),
    ("short_labels", '"label_counts" must be >= 0 and sum to the 1 "labels"'),
    ("short_counts", '"label_counts" must be [6] int64'),
    ("negative_count", "is negative"),
    ("labels_only", 'has "labels" without "label_counts"'),
    ("x_f64", 'needs "x" [T, N, 5] float32'), ("x_T0", 'not [0, 6, 5] float32')])
def test_ctc_decode_refuses_tensors_of_the_wrong_form(files, name, want):
    """lengths [1] for N = 6 read past its end (an error quoting garbage), a [2, 6] one was taken
    as [12]; short labels / label_counts were read past their ends too."""
    r = _run("ctc_decode", files["ctc"], files[name])
    assert r.returncode == 2 and want in r.stderr, (r.returncode, r.stderr)
    assert "utterance" not in r.stdout  # refused before any decoding


def test_ctc_decode_names_a_token_input_checkpoint_and_a_bad_blank(files):
    r = _run("ctc_decode", files["charlm"], files["good"])
    assert r.returncode == 2 and "takes token ids" in r.stderr and "FEATURES" not in r.stderr
    for blank, want in (("abc", "BLANK must be a class id"), ("-1", "BLANK must be a class id"),
                        ("11", "BLANK 11 is not a class")):
        r = _run("ctc_decode", files["ctc"], files["good"], blank)
        assert r.returncode == 2 and want in r.stderr, (blank, r.stderr)


def test_stream_and_generate_run(files):
    r = _run("stream", files["sine"], 300)
    assert r.returncode == 0 and "over 300 steps" in r.stdout, r.stderr
    r = _run("generate", files["charlm"], "abc", 20, 0.8, 0)
    assert r.returncode == 0 and r.stdout.startswith("abc") and len(r.stdout) == 3 + 20 + 1
    r0 = _run("generate", files["charlm"], "abc", 20, 0, 0)
    assert r0.returncode == 0 and len(r0.stdout) == 24
    r1 = _run("generate", files["charlm"], "abc", 0)
    assert r1.returncode == 0 and r1.stdout == "abc\n"
    r2 = _run("generate", files["charlm"], "abz", 5)
    assert r2.returncode == 2 and "'z' is not in the vocabulary" in r2.stderr and not r2.stdout


def test_stream_refuses_a_bidirectional_model_and_runs_a_projected_layer_norm_one(files):
    r = _run("stream", files["bi"], 10)
    assert r.returncode == 2 and "bidirectional" in r.stderr, (r.returncode, r.stderr)
    r = _run("stream", files["lnp"], 50)
    assert r.returncode == 0 and "over 50 steps" in r.stdout, r.stderr
    r = _run("stream", files["drop1"], 50)     # (dropout = 1 had been refused: [0, 1))
    assert r.returncode == 0 and "over 50 steps" in r.stdout, r.stderr


@pytest.mark.parametrize("steps", ["abc", "-5", "0", "1e3", "99999999999999", " 5", "5x"])
def test_stream_refuses_bad_steps(files, steps):
    r = _run("stream", files["sine"], steps)
    assert r.returncode == 2 and "STEPS must be an integer in [1, 10000000]" in r.stderr


@pytest.mark.parametrize("args, want", [
    (["-5"], "LENGTH"), (["abc"], "LENGTH"), (["2000000000"], "LENGTH"),
    (["10", "nan"], "TEMPERATURE"), (["10", "-1"], "TEMPERATURE"), (["10", "inf"], "TEMPERATURE"),
    (["10", "abc"], "TEMPERATURE"), (["10", "0.8", "-1"], "SEED"),
    (["10", "0.8", "abc"], "SEED"), (["10", "0.8", "99999999999999999999999"], "SEED")])
def test_generate_refuses_bad_numbers(files, args, want):
    r = _run("generate", files["charlm"], "abc", *args)
    assert r.returncode == 2 and f"generate: {want} must be" in r.stderr, r.stderr
    assert not r.stdout


@pytest.mark.parametrize("args, want", [
    (["--bogus"], "unknown flag '--bogus'"), (["50"], "steps must be an integer"),
    (["100", "abc"], "peer_steps must be an integer"), (["99999999999"], "steps must be"),
    (["100", "100", "100"], "a third number"),
    (["--rt-only", "--rows=gru:20:1"], "'gru:20:1' is not a row"),
    (["--rows="], "'' is not a row")])
def test_stream_latency_refuses_bad_arguments(args, want):
    r = _run("stream_latency", *args)
    assert r.returncode == 2 and want in r.stderr, (r.returncode, r.stderr)


def test_stream_latency_flags_anywhere_and_errors_caught():
    """Flags before the numbers were read as numbers (--rt-only as 0 steps, then the full
    table); FUSEDRNN_ISA=bogus aborted on an uncaught exception."""
    r = _run("stream_latency", "--rt-only", "--rows=gru:16:1", "100", "200")
    assert r.returncode == 0, r.stderr
    assert "100 timed steps each" in r.stdout and "(200 steps each" in r.stdout
    assert "Stream::step median" not in r.stdout  # --rt-only honoured
    assert r.stdout.count("| GRU | 16 | 1 |") == 1
    r = _run("stream_latency", "100", "100", "--rt-only", env={"FUSEDRNN_ISA": "bogus"})
    assert r.returncode in (1, 2) and "stream_latency:" in r.stderr and "FUSEDRNN_ISA" in r.stderr
