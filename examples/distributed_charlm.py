#!/usr/bin/env python
"""Data-parallel character-level language model: Embedding -> fusedrnn.torch.LSTM (or GRU) ->
Linear, trained with torch.optim.Adam under DistributedDataParallel (gloo backend, CPU).

    # one process (no launcher)
    python examples/distributed_charlm.py --steps 200
    # 2 processes on this machine
    torchrun --standalone --nproc_per_node=2 examples/distributed_charlm.py --steps 200
    # 2 machines x 4 processes: run on every machine, with the same --master_addr/--master_port
    # (an address of machine 0 that the others reach) and --node_rank 0 on machine 0, 1 on the other
    torchrun --nnodes=2 --nproc_per_node=4 --node_rank=0 --master_addr=10.0.0.1 \\
        --master_port=29500 examples/distributed_charlm.py --steps 200

Every step draws one global batch of ``--batch`` windows from the text (the same draw on every
rank, from ``--seed`` and the step number); rank r trains on rows [r*B/W, (r+1)*B/W). DDP
averages the gradients, so W processes compute the same update as one process on the whole
batch (tests/test_distributed.py checks this). ``--batch`` must be divisible by the world size.

Threads: each process runs its kernels with ``--threads`` threads (default: OMP_NUM_THREADS if
set, else cores / processes on this machine); use cores / processes so the processes do not
compete for cores. torchrun sets OMP_NUM_THREADS=1 when it starts more than one process per
machine: pass --threads (or set OMP_NUM_THREADS yourself) to use more.
The text defaults to this file; ``--text FILE`` trains on another. ``--save PATH`` writes the
final state_dict (rank 0). ``--impl torch`` uses torch.nn's modules instead, for comparison.
"""
from __future__ import annotations

import argparse
import datetime
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import fusedrnn
import fusedrnn.torch as frt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--impl", choices=["fusedrnn", "torch"], default="fusedrnn")
    p.add_argument("--text", help="training text (default: this file)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=32, help="global batch (all ranks together)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save", help="write the final state_dict here (rank 0)")
    return p.parse_args(argv)


class CharLM(torch.nn.Module):
    def __init__(self, vocab, args, dtype):
        super().__init__()
        mod = frt if args.impl == "fusedrnn" else torch.nn
        rnn_cls = mod.LSTM if args.cell == "lstm" else mod.GRU
        self.embed = torch.nn.Embedding(vocab, args.embed, dtype=dtype)
        self.rnn = rnn_cls(args.embed, args.hidden, num_layers=args.layers,
                           dropout=args.dropout if args.layers > 1 else 0.0, dtype=dtype)
        self.head = torch.nn.Linear(args.hidden, vocab, dtype=dtype)

    def forward(self, tokens):                   # tokens [T, N] (time-major: no copies)
        y, _ = self.rnn(self.embed(tokens))
        return self.head(y)                      # [T, N, V]


def setup():
    """(rank, world_size, processes on this machine, the rendezvous store, whether this process
    hosts it); joins the process group when launched with RANK/WORLD_SIZE/MASTER_* set (torchrun,
    or by hand). The store is made here, not by init_process_group, so that teardown() can use it
    after the group is gone."""
    if "RANK" not in os.environ:
        return 0, 1, 1, None, False
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # Under torchrun its agent hosts the store (TORCHELASTIC_USE_AGENT_STORE); else rank 0 does.
    hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=hosts, timeout=datetime.timedelta(seconds=300))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return rank, world, local, store, hosts


def teardown(store, rank, world, hosts):
    """Leaves the process group; the process hosting the store leaves last. Every rank announces
    on the store that its group is destroyed, and the host waits for all of them before it
    returns (and exits, closing the store): a rank still tearing down its group when the store's
    process had gone aborted at exit ("terminate called without an active exception", rank 1)."""
    dist.barrier()
    dist.destroy_process_group()
    store.add("distributed_charlm/left", 1)
    if hosts:
        deadline = time.monotonic() + 300
        while store.add("distributed_charlm/left", 0) < world:
            if time.monotonic() > deadline:
                raise TimeoutError("teardown: the other ranks did not leave within 300 s")
            time.sleep(0.005)


def train(args):
    """Trains; returns (unwrapped model, list of global mean losses)."""
    rank, world, local, store, hosts = setup()
    if args.batch % world:
        raise ValueError(f"--batch ({args.batch}) must be divisible by the world size ({world})")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or \
        max(1, (os.cpu_count() or 1) // local)
    torch.set_num_threads(threads)
    fusedrnn.set_num_threads(threads)

    with open(args.text or __file__, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(args.seed)                 # same initial weights everywhere
    model = CharLM(len(chars), args, dtype)
    torch.manual_seed(args.seed + 1 + rank)      # per-rank dropout masks
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    B, T, per = args.batch, args.seq_len, args.batch // world
    if rank == 0:
        print(f"world size {world}, {threads} thread(s) per process, {len(text)} chars, "
              f"vocab {len(chars)}, {args.impl} {args.cell}", flush=True)

    losses, t0 = [], time.perf_counter()
    for step in range(args.steps):
        starts = np.random.default_rng([args.seed, step]).integers(0, len(data) - T - 1, B)
        mine = torch.from_numpy(starts[rank * per:(rank + 1) * per])
        idx = mine[None, :] + torch.arange(T + 1)[:, None]          # [T+1, per]
        window = data[idx]
        opt.zero_grad(set_to_none=True)
        logits = net(window[:-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[1:].reshape(-1))
        loss.backward()                          # DDP all-reduces (averages) the gradients
        opt.step()
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(float(mean))
        if rank == 0 and ((step + 1) % args.log_every == 0 or step + 1 == args.steps):
            rate = (step + 1) / (time.perf_counter() - t0)
            print(f"step {step + 1:5d}  loss {losses[-1]:.4f}  {rate:.2f} steps/s", flush=True)

    if args.save and rank == 0:
        torch.save(model.state_dict(), args.save)
    if store is not None:
        teardown(store, rank, world, hosts)
    return model, losses


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
