"""Learning check of mixed-precision training (issue 17): ``fusedrnn train`` (charlm defaults)
with every recurrent layer at compute="bfloat16" against the same run in float32, same seed and
step count. Usage: python bench/bf16_charlm_check.py PRECISION STEPS OUT_DIR [extra train flags]
(PRECISION float32 | bfloat16). Prints the best validation bits/char. Until ``fusedrnn train``
has a ``--precision`` flag, this sets the layers' ``compute`` after the task builds the model."""
import json
import os
import sys


def main():
    precision, steps, out = sys.argv[1], sys.argv[2], sys.argv[3]
    from fusedrnn import cli
    from fusedrnn.tasks import charlm

    build = charlm.CharLM.build_model

    def build_model(self):
        model = build(self)
        model.rnn.compute = precision
        return model

    charlm.CharLM.build_model = build_model
    rc = cli.main(["train", "--task", "charlm", "--steps", steps, "--out", out, "--threads", "1",
                   "--seed", "0", *sys.argv[4:]])
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    hist = m.get("history", [])
    best = min(e["bpc"] for e in hist if "bpc" in e) if hist else None
    print(json.dumps({"precision": precision, "steps": int(steps), "best_val_bpc": best,
                      "rc": rc, "history": [(e.get("step"), e.get("bpc"), e.get("time_s"))
                                            for e in hist]}))


if __name__ == "__main__":
    main()
