"""Throughput of 1 vs 2 processes (1 thread each) and the per-step factor-exchange cost.

Both runs train `fim` (importance sampling forced on) for the same number of steps with the
same per-process batch, so 2 processes process twice the sequences per step. Prints JSON.
Run: python benchmarks/ddp_bench.py [--data digits] [--steps 300]
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(nproc: int, data: str, steps: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "seqis.cli",
        "train",
        "--data",
        data,
        "--sampler",
        "fim",
        "--always-on",
        "--steps",
        str(steps),
        "--threads",
        "1",
        "--no-progress",
        "--eval-every",
        str(steps),
        "--hidden",
        "128",
        "--layers",
        "1",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    return json.loads((out / "summary.json").read_text())


def exchange_worker(batch: int, repeats: int) -> None:
    """Under torchrun: time the all_gather of (index, factor) pairs that harvest does."""
    import torch

    from seqis.distributed import DistContext

    torch.set_num_threads(1)
    ctx = DistContext.from_env("cpu", timeout_s=60)
    index, factors = torch.arange(batch), torch.rand(batch)
    for _ in range(10):
        ctx.gather(index), ctx.gather(factors)
    start = time.perf_counter()
    for _ in range(repeats):
        ctx.gather(index), ctx.gather(factors)
    per_step = (time.perf_counter() - start) / repeats
    if ctx.is_main:
        print(json.dumps({"exchange_ms_per_step": 1e3 * per_step}))
    ctx.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="digits")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        exchange_worker(args.batch, 500)
        return
    with tempfile.TemporaryDirectory() as tmp:
        one = train(1, args.data, args.steps, Path(tmp) / "one")
        two = train(2, args.data, args.steps, Path(tmp) / "two")
    exchange = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            __file__,
            "--worker",
            "--batch",
            str(args.batch),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    exchange_ms = json.loads(exchange.stdout.strip().splitlines()[-1])["exchange_ms_per_step"]
    seq_per_s_1 = one["steps_per_s"] * 64
    seq_per_s_2 = min(two["rank_steps_per_s"]) * 64 * 2
    print(
        json.dumps(
            {
                "benchmark": "ddp",
                "data": args.data,
                "steps": args.steps,
                "threads_per_process": 1,
                "one_process_steps_per_s": one["steps_per_s"],
                "two_process_rank_steps_per_s": two["rank_steps_per_s"],
                "sequences_per_s": {"1": seq_per_s_1, "2": seq_per_s_2},
                "scaling_2_vs_1": seq_per_s_2 / seq_per_s_1,
                "factor_exchange_ms_per_step": exchange_ms,
                "factor_exchange_share_of_step": exchange_ms / 1e3 * min(two["rank_steps_per_s"]),
                "ranks_identical": len(set(two["rank_params_sha256"])) == 1,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
