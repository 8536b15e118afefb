"""Learning check of mixed-precision training (issue 17): ``fusedrnn train --precision bf16``
(charlm defaults: GRU 2x256) against the same run in float32 -- same seed, batches and step
count -- then both validation curves in one picture.

    python bench/bf16_charlm_check.py STEPS OUT_DIR [extra fusedrnn train flags]

Trains OUT_DIR/float32 and OUT_DIR/bfloat16 (a run whose metrics.json is already there is
reused), prints each best validation bits/char and the difference, and writes
bench/bf16_charlm_curves.png (validation bits/char against step and against training time).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(precision, steps, out, extra):
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        from fusedrnn import cli
        rc = cli.main(["train", "--task", "charlm", "--steps", str(steps), "--out", out,
                       "--threads", "1", "--seed", "0", "--precision", precision, "-q",
                       "--overwrite", *extra])
        if rc:
            sys.exit(rc)
    with open(path) as f:
        return json.load(f)


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for precision, m in runs.items():
        h = m["history"]
        label = f"{precision} (best {min(e['bpc'] for e in h):.4f})"
        a1.plot([e["step"] for e in h], [e["bpc"] for e in h], "o-", ms=3, label=label)
        a2.plot([e["time_s"] for e in h], [e["bpc"] for e in h], "o-", ms=3, label=label)
    a1.set_xlabel("step")
    a2.set_xlabel("training time (s, validation included; shared loaded machine)")
    for a in (a1, a2):
        a.set_ylabel("validation bits/char")
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle("fusedrnn train --task charlm: --precision bf16 vs float32 (same seed, steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    steps, out, extra = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    runs = {p: run(p, steps, os.path.join(out, p), extra) for p in ("float32", "bfloat16")}
    best = {p: min(e["bpc"] for e in m["history"]) for p, m in runs.items()}
    for p, m in runs.items():
        print(f"{p:9} best validation bpc {best[p]:.4f} at step {m['best_step']}, "
              f"training {m['train_time_s']:.1f} s")
    print(f"difference bf16 - fp32: {best['bfloat16'] - best['float32']:+.4f} bits/char")
    png = os.path.join(HERE, "bf16_charlm_curves.png")
    plot(runs, png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
