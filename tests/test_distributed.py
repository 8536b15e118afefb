"""fusedrnn.torch under DistributedDataParallel (gloo, CPU): 2 processes on 127.0.0.1 run
examples/distributed_charlm.py for a few steps; their parameters must equal those of one
process training on the concatenated (global) batch.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "distributed_charlm.py"
ARGS = ["--steps", "4", "--batch", "8", "--seq-len", "12", "--embed", "8", "--hidden", "16",
        "--layers", "2", "--lr", "1e-2", "--threads", "1", "--log-every", "1"]
TIMEOUT = 90   # seconds for the 2-process run (it takes a few on an idle machine)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_example():
    spec = importlib.util.spec_from_file_location("distributed_charlm", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("cell", ["lstm"])
def test_ddp_two_processes_equal_single_process(tmp_path, cell):
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    procs = []
    for rank in range(2):
        procs.append(subprocess.Popen(
            [sys.executable, str(EXAMPLE), *ARGS, "--cell", cell, "--save", str(out)],
            env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{log}"
    assert "world size 2" in logs[0]

    example = load_example()
    model, losses = example.main([*ARGS, "--cell", cell])     # 1 process, the global batch
    ddp_state = torch.load(out)
    single = model.state_dict()
    assert list(ddp_state) == list(single)
    for name, want in single.items():
        got = ddp_state[name]
        err = float((got - want).abs().max())
        assert err <= 1e-5 * max(1.0, float(want.abs().max())), f"{name}: max diff {err:.2e}"
    # the parameters moved (the comparison is not trivially true)
    torch.manual_seed(0)
    init = example.CharLM(model.head.out_features, example.parse_args(ARGS), torch.float32)
    moved = (init.rnn.weight_hh_l0.detach() - single["rnn.weight_hh_l0"]).abs().max()
    assert float(moved) > 1e-3
    assert isinstance(model.rnn, example.frt.LSTM)
    last = [line for line in logs[0].splitlines() if line.startswith("step")][-1]
    ddp_loss = float(last.split("loss")[1].split()[0])         # the mean loss over both ranks
    assert abs(ddp_loss - losses[-1]) < 2e-4, (last, losses[-1])
