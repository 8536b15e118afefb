"""Gradient check of mixed-precision training (issue 17): the charlm task's default model
(GRU 2x256, seed 0), its first training batch, gradients with the recurrent layers at
compute="bfloat16" against float32; prints the cosine similarity and the relative max error
per parameter. Usage: python bench/bf16_grad_check.py [extra fusedrnn train flags]."""
import sys

import numpy as np


def main():
    from fusedrnn.cli import build_parser
    from fusedrnn.models import set_compute
    from fusedrnn.tasks import get_task
    from fusedrnn.tasks.trainer import resolve

    args = build_parser().parse_args(["train", "--task", "charlm", "--steps", "1",
                                      *sys.argv[1:]])
    task_cls = get_task(args.task)
    resolve(args, task_cls)
    task = task_cls(args)
    task.prepare()
    batch = next(iter(task.batches(np.random.default_rng(0))))
    grads = {}
    for precision in ("float32", "bfloat16"):
        model = task.build_model()
        set_compute(model, precision)
        model.train()
        model.zero_grad()
        loss, _ = task.train_step(model, batch)
        grads[precision] = ({n: p.grad.copy() for n, p in model.named_parameters()}, loss)
    (g32, l32), (g16, l16) = grads["float32"], grads["bfloat16"]
    print(f"loss fp32 {l32:.6f} bf16 {l16:.6f}")
    worst = 1.0
    for n in g32:
        a, b = g32[n].ravel().astype(np.float64), g16[n].ravel().astype(np.float64)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
        rel = float(np.abs(a - b).max() / (np.abs(a).max() or 1.0))
        worst = min(worst, cos)
        print(f"{n:28} cosine {cos:.6f}  max|diff|/max|g| {rel:.2e}")
    print(f"lowest cosine {worst:.6f}")


if __name__ == "__main__":
    main()
