"""Learning check of mixed-precision training on every task but charlm (issue 17): ``fusedrnn
train --task T --precision bf16`` against the same run in float32 -- same seed, batches and
step count, each task's default model -- and the margins of the bf16 inference issue:

    translate exact match >= fp32 - 1 point      tag F1 >= fp32 - 0.005
    forecast RMSE <= 1.1 x fp32                  classify accuracy >= fp32 - 0.5 points

    python bench/bf16_tasks_check.py OUT_DIR [--tasks forecast,classify,tag,translate]
                                             [--seeds 0,1] [--steps task=N,...] [--threads 1]

Runs are budgeted by steps, not seconds (a loaded machine then does the same work, only
slower): STEPS below, a fraction of each task's default 60-120 s budget on a quiet machine,
enough for the metric to be far from its baseline (override with --steps). Every run is
``python -m fusedrnn train`` in its own process, into OUT_DIR/TASK/seedS/PRECISION (a run whose
metrics.json is already there is reused). The metric compared is the checkpoint's: the
validation entry at the run's best step (for classify, whose default problem "adding" is
selected by MSE, the accuracy is that entry's share of |error| < 0.04). recognise (CTC) has
no margin in that issue; --tasks recognise adds it as information (slow: ~3 steps/s).
Prints one Markdown table row per (task, seed).
"""
import argparse
import json
import os
import subprocess
import sys

STEPS = {"forecast": 2000, "classify": 3000, "tag": 1000, "translate": 3000, "recognise": 300}
# task -> (metric compared, how: ("min_diff", d): bf16 >= fp32 - d; ("max_ratio", r): bf16 <= r fp32)
MARGIN = {"translate": ("accuracy", ("min_diff", 0.01)),
          "tag": ("f1", ("min_diff", 0.005)),
          "forecast": ("rmse", ("max_ratio", 1.1)),
          "classify": ("accuracy", ("min_diff", 0.005)),
          "recognise": ("ler", None)}


def run(task, precision, steps, seed, threads, out):
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        cmd = [sys.executable, "-m", "fusedrnn", "train", "--task", task, "--steps", str(steps),
               "--seed", str(seed), "--threads", str(threads), "--precision", precision,
               "--out", out, "--overwrite", "-q"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    with open(path) as f:
        m = json.load(f)
    best = next(e for e in m["history"] if e["step"] == m["best_step"])
    return m, best


def verdict(task, a, b):
    name, rule = MARGIN[task]
    if rule is None:
        return "(no margin)"
    kind, v = rule
    ok = b >= a - v if kind == "min_diff" else b <= v * a
    return ("ok" if ok else "MISSED") + (f" (>= {a - v:.4f})" if kind == "min_diff"
                                         else f" (<= {v * a:.4g})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tasks", default="forecast,classify,tag,translate")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", default="", help="task=N,... overriding STEPS")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    steps = dict(STEPS)
    for kv in filter(None, a.steps.split(",")):
        k, v = kv.split("=")
        steps[k] = int(v)
    print("| task | metric | steps | seed | float32 | bfloat16 | margin | "
          "train s fp32 / bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for task in a.tasks.split(","):
        name = MARGIN[task][0]
        for seed in map(int, a.seeds.split(",")):
            res = {p: run(task, p, steps[task], seed, a.threads,
                          os.path.join(a.out, task, f"seed{seed}", p))
                   for p in ("float32", "bfloat16")}
            va, vb = (res[p][1][name] for p in ("float32", "bfloat16"))
            extra = ""
            if task == "classify":
                extra = " (mse " + " / ".join(f"{res[p][1]['mse']:.3g}"
                                              for p in ("float32", "bfloat16")) + ")"
            ta, tb = (res[p][0]["train_time_s"] for p in ("float32", "bfloat16"))
            print(f"| {task} | {name}{extra} | {steps[task]} | {seed} | {va:.4f} | {vb:.4f} | "
                  f"{verdict(task, va, vb)} | {ta:.0f} / {tb:.0f} |", flush=True)


if __name__ == "__main__":
    main()
