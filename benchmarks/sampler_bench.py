"""Sampler cost: one draw of b indices and one factor update, over N factors. Prints JSON.

Target (issue #3): a draw of b = 256 from N = 10^7 factors in <= 1 ms.
Run: python benchmarks/sampler_bench.py [--sizes 1000,100000,10000000]
"""

import argparse
import json
import time

import numpy as np
import torch

from seqis.sampling.sampler import ImportanceSampler


def best_of(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls (the machine is shared and noisy)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,100000,10000000")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        sampler = ImportanceSampler(torch.arange(n), args.batch, seed=0)
        factors = torch.rand(n, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        sampler.record(torch.arange(n), factors)
        sampler.active = True  # one O(N) rebuild
        rebuild_s = time.perf_counter() - start
        idx = torch.randint(0, n, (args.batch,))
        new = torch.rand(args.batch)
        uniform = ImportanceSampler(torch.arange(n), args.batch, seed=0)
        results.append(
            {
                "n": n,
                "batch": args.batch,
                "draw_ms": 1e3 * best_of(sampler.draw, args.repeats),
                "update_ms": 1e3 * best_of(lambda s=sampler, i=idx, f=new: s.record(i, f), args.repeats),
                "uniform_draw_ms": 1e3 * best_of(uniform.draw, args.repeats),
                "record_factors_and_rebuild_s": rebuild_s,
            }
        )
    target = next((r for r in results if r["n"] == 10_000_000), None)
    print(
        json.dumps(
            {
                "benchmark": "sampler",
                "results": results,
                "target_draw_ms_at_1e7": 1.0,
                "meets_target": None if target is None else target["draw_ms"] <= 1.0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
