"""The benchmark (bench/run.py) runs end to end: a smoke run on the batch-1 config, fusedrnn vs
torch, inference and training, whose JSON carries the timings, the ratios and the share of the
sgemm peak measured in the same run. Timings are not judged here (speed lives in bench/)."""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench", "run.py")


def _bench(tmp_path, *args):
    """bench/run.py with args and --json into tmp_path; asserts exit 0: (its stdout, the JSON)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, RUN, *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_bench_smoke_run_writes_its_table_and_json(tmp_path):
    stdout, res = _bench(tmp_path, "--quick", "--configs", "d", "--cells", "lstm,gru",
                         "--threads", "1", "--no-onnx", "--no-memory", "--settle-ms", "0")
    assert "% of sgemm peak" in stdout and "Eigen, built like the kernels" in stdout
    assert res["failures"] == []
    peak = res["sgemm_peak_gflops"]["1"]
    assert peak["eigen"] > 0 and peak["torch"] > 0
    seen = set()
    for row in res["results"]:
        seen.add((row["cell"], row["mode"]))
        fr, torch_ = row["contenders"]["fusedrnn"], row["contenders"]["torch"]
        assert 0 < fr["min_ms"] <= fr["median_ms"]
        assert row["ratio_peer_over_fusedrnn"]["torch"] == pytest.approx(
            torch_["median_ms"] / fr["median_ms"])
        assert fr["pct_sgemm_peak"] == pytest.approx(100 * fr["gflops"] / peak["eigen"])
        assert fr["pct_torch_sgemm_peak"] == pytest.approx(100 * fr["gflops"] / peak["torch"])
        if row["mode"] == "infer":
            assert row["contenders"]["frozen"]["median_ms"] > 0
    assert seen == {(c, m) for c in ("lstm", "gru") for m in ("infer", "train")}


def test_workload_rows_smoke_run(tmp_path):
    """--workloads ragged,subnormal,contended (bench/workloads.py) at the --quick shapes: every
    row is there with its ratios; ONNX Runtime's sequence_lens output equals fusedrnn's."""
    rows = _bench(tmp_path, "--quick", "--workloads", "ragged,subnormal,contended")[1][
        "workloads"]
    kinds = [(r["row"], r.get("cell"), r.get("mode")) for r in rows]
    for mode in ("infer", "train"):
        for cell in ("lstm", "gru", "bilstm2"):
            assert ("ragged", cell, mode) in kinds
        for cell in ("lstm", "gru", "rnn"):
            assert ("subnormal", cell, mode) in kinds
    for r in rows:
        if r["row"] == "ragged":
            assert 0.3 < r["useful"] < 1 and r["len_over_full"] > 0
            assert r["torch_packed_over_fr_len"] > 0
            if "ort_max_abs_diff" in r:
                assert r["ort_max_abs_diff"] < 1e-5
        if r["row"] == "subnormal":
            assert set(r["median_ms"]) == {"normal", "x_subnormal", "w_subnormal",
                                           "torch_x_subnormal"}
        if r["row"] == "contended" and "skipped" not in r:
            assert r["fr_2_over_1"] > 0 and r["torch_2_over_1"] > 0
            assert r["fr_2fixed_over_1"] > 0


def test_bench_precision_bfloat16_adds_the_bf16_and_int8_peers(tmp_path):
    """--precision float32,bfloat16: fusedrnn's bf16 frozen layer, torch bf16 and torch qint8
    (LSTM/GRU only: quantize_dynamic has no nn.RNN) alternate with the float32 contenders, and
    the JSON has their ratios over the bf16 layer."""
    _, res = _bench(tmp_path, "--quick", "--configs", "d", "--cells", "gru,rnn", "--modes",
                    "infer", "--threads", "1", "--no-onnx", "--no-memory", "--settle-ms", "0",
                    "--precision", "float32,bfloat16")
    assert res["failures"] == [] and res["info"]["precision"] == "float32,bfloat16"
    for row in res["results"]:
        c = row["contenders"]
        want = {"fusedrnn", "frozen", "torch", "frozen_bf16", "torch_bf16"}
        want |= {"torch_qint8"} if row["cell"] == "gru" else set()
        assert set(c) == want
        r = row["ratio_peer_over_frozen_bf16"]
        assert r["torch_bf16"] == pytest.approx(c["torch_bf16"]["median_ms"]
                                                / c["frozen_bf16"]["median_ms"])
    bad = subprocess.run([sys.executable, RUN, "--precision", "int4"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--precision: unknown ['int4']" in bad.stderr


def test_regularised_workload_rows_smoke_run(tmp_path):
    """--workloads regularised (issue 19) at the --quick shapes: LSTM and GRU rows, both modes,
    every option's ratio to the plain layer and the TorchScript twin's to layer norm."""
    rows = _bench(tmp_path, "--quick", "--workloads", "regularised")[1]["workloads"]
    assert {(r["cell"], r["mode"]) for r in rows} == {
        (c, m) for c in ("lstm", "gru") for m in ("infer", "train")}
    for r in rows:
        assert r["row"] == "regularised"
        for k in ("layer_norm", "zoneout", "dropout", "weight_drop"):
            assert r[f"{k}_over_normal"] > 0
        assert r["twin_over_fr_ln"] > 0


def test_bench_precision_int8_adds_the_int8_layer_and_its_ratios(tmp_path):
    """--precision float32,int8: fusedrnn's int8 frozen layer with torch bf16 / qint8, and the
    JSON has the ratios over the int8 layer."""
    _, res = _bench(tmp_path, "--quick", "--configs", "d", "--cells", "lstm", "--modes",
                    "infer", "--threads", "1", "--no-onnx", "--no-memory", "--settle-ms", "0",
                    "--precision", "float32,int8")
    assert res["failures"] == []
    for row in res["results"]:
        c = row["contenders"]
        assert set(c) == {"fusedrnn", "frozen", "torch", "frozen_int8", "torch_bf16",
                          "torch_qint8"}
        r = row["ratio_peer_over_frozen_int8"]
        assert r["torch_qint8"] == pytest.approx(c["torch_qint8"]["median_ms"]
                                                 / c["frozen_int8"]["median_ms"])


def test_bench_precision_int8_adds_onnxruntime_quantised_peer(tmp_path):
    """--precision float32,int8 with ONNX: ONNX Runtime on quantize_dynamic of the export runs in
    the same alternation ("ort_qint8"); for the LSTM the quantised graph has DynamicQuantizeLSTM,
    and its ratio over the int8 layer is in the JSON."""
    pytest.importorskip("onnxruntime.quantization")
    stdout, res = _bench(tmp_path, "--quick", "--configs", "d", "--cells", "lstm", "--modes",
                         "infer", "--threads", "1", "--no-memory", "--settle-ms", "0",
                         "--precision", "float32,int8")
    assert res["failures"] == []
    (row,) = res["results"]
    c = row["contenders"]
    assert {"onnxruntime", "frozen_int8", "ort_qint8"} <= set(c)
    assert "DynamicQuantizeLSTM" in row["onnx_qint8"]["ops"]
    assert row["ratio_peer_over_frozen_int8"]["ort_qint8"] == pytest.approx(
        c["ort_qint8"]["median_ms"] / c["frozen_int8"]["median_ms"])
    assert "oq8/fi8" in stdout


def test_bench_precision_bfloat16_adds_the_mixed_precision_training_peers(tmp_path):
    """--precision float32,bfloat16 in training rows (issue 17): fusedrnn's layer with
    compute="bfloat16", torch under autocast and torch module.to(bfloat16) alternate with the
    float32 contenders, the JSON has their ratios over the bf16 layer, and the peak-memory table
    measures them too."""
    _, res = _bench(tmp_path, "--quick", "--configs", "d", "--cells", "lstm,gru", "--modes",
                    "train", "--threads", "1", "--no-onnx", "--settle-ms", "0",
                    "--precision", "float32,bfloat16")
    assert res["failures"] == []
    # Where torch's oneDNN has no bf16 kernels for this CPU (an AVX2-only CPU), its autocast LSTM
    # raises and the benchmark lists it as unsupported instead; never on a CPU with bf16.
    unsupported = res["unsupported"]
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert unsupported == []
    for u in unsupported:
        assert "oneDNN has no bf16 primitive on this CPU" in u["reason"], u
    skipped = {(u["cell"], u["contender"]) for u in unsupported
               if not u["where"].startswith("memory")}
    for row in res["results"]:
        c = row["contenders"]
        off = {who for cell, who in skipped if cell == row["cell"]}
        assert off <= {"torch_autocast", "torch_bf16"}
        assert set(c) == {"fusedrnn", "torch", "fusedrnn_bf16", "torch_autocast",
                          "torch_bf16"} - off
        r = row["ratio_peer_over_fusedrnn_bf16"]
        for peer in {"fusedrnn", "torch_autocast", "torch_bf16"} - off:
            assert r[peer] == pytest.approx(c[peer]["median_ms"] / c["fusedrnn_bf16"]["median_ms"])
        for peer in off:
            assert r[peer] is None
    mem_off = {(u["cell"], u["contender"]) for u in unsupported if u["where"].startswith("memory")}
    for m in res["memory"]:
        for who in ("fusedrnn_bf16", "torch_autocast", "torch_bf16"):
            if (m["cell"], who) in mem_off:
                assert "error" in m[who]
            else:
                assert m[who]["rss_peak_mib"] > 0
        assert m["fusedrnn_bf16"]["tracemalloc_peak_mib"] > 0


def test_workloads_no_onnx_leaves_onnxruntime_out(tmp_path):
    """--workloads ragged --no-onnx: no ragged row times or even tries ONNX Runtime (run_workloads
    dropped the flag, so ORT ran in the inference rows regardless)."""
    rows = _bench(tmp_path, "--quick", "--workloads", "ragged", "--threads", "1",
                  "--no-onnx")[1]["workloads"]
    assert {(r["cell"], r["mode"]) for r in rows} == {
        (c, m) for c in ("lstm", "gru", "bilstm2") for m in ("infer", "train")}
    for r in rows:
        assert "ort" not in r["median_ms"], r
        assert not [k for k in r if k.startswith("ort")], r


@pytest.mark.parametrize("args, what", [
    (["--threads", "0"], "--threads"), (["--threads", "1", "-1"], "--threads"),
    (["--threads", "two"], "--threads")])
def test_bench_refuses_thread_counts_below_one(args, what):
    """--threads 0 / -1 are usage errors (exit 2, the option named) before anything runs, not a
    traceback from set_num_threads halfway through."""
    for extra in ([], ["--workloads", "ragged"]):
        bad = subprocess.run([sys.executable, RUN, *args, *extra], capture_output=True,
                             text=True, timeout=300)
        assert bad.returncode == 2 and what in bad.stderr, bad.stderr[-2000:]
        assert "Traceback" not in bad.stderr


CTC = os.path.join(os.path.dirname(RUN), "bench_ctc.py")


@pytest.mark.parametrize("args, what", [
    (["--reps", "0"], "--reps"), (["--K", "1"], "--K"), (["--threads", "0"], "--threads"),
    (["--N", "0"], "--N"), (["--T", "10", "--L", "40"], "--T 10 is too short")])
def test_bench_ctc_refuses_bad_sizes(args, what):
    """bench_ctc.py: 0 repetitions (StatisticsError), K = 1 (no label besides the blank: numpy's
    "high <= low"), 0 threads, and T too short for L labels are argparse errors, exit 2."""
    bad = subprocess.run([sys.executable, CTC, *args], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and what in bad.stderr, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr
