"""The benchmark (bench/run.py) runs end to end: a smoke run on the batch-1 config, fusedrnn vs
torch, inference and training, whose JSON carries the timings, the ratios and the share of the
sgemm peak measured in the same run. Timings are not judged here (speed lives in bench/)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench", "run.py")


def test_bench_smoke_run_writes_its_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, RUN, "--quick", "--configs", "d", "--cells", "lstm,gru", "--threads", "1",
         "--no-onnx", "--no-memory", "--settle-ms", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "% of sgemm peak" in proc.stdout and "Eigen, built like the kernels" in proc.stdout
    res = json.loads(out.read_text())
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
