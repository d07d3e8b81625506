"""What importance sampling adds to one training step, part by part, in microseconds. Prints JSON.

The per-step overhead in ``mining_bench.py`` is a difference of two noisy throughputs; this
times each part alone, on the shapes of the Fashion-MNIST race (batch 64, 10 classes, GRU
1x128, N = 60,000): the FIM factors of a batch, recording them in the sum tree, an
importance draw (against a uniform one), the noise-scale update, and the miner's whole
harvest with the factors given and computed.

Run: python benchmarks/step_parts_bench.py [--batch 64 --classes 10 --hidden 128 --n 60000]
"""

import argparse
import json
import time

import numpy as np
import torch

from seqis.importance.config import MiningConfig
from seqis.importance.factors import fim_factors
from seqis.importance.mining import Miner
from seqis.importance.noise import NoiseScale
from seqis.sampling.sampler import ImportanceSampler


def microseconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    b, n, reps = args.batch, args.n, args.repeats
    logits, hidden = torch.randn(b, 1, args.classes), torch.randn(b, 1, args.hidden)
    targets, mask = torch.randint(0, args.classes, (b, 1)), torch.ones(b, 1, dtype=torch.bool)

    sampler = ImportanceSampler(range(n), b, 0.2, seed=0)
    sampler.record(torch.arange(n), torch.rand(n))
    sampler.active = True
    uniform = ImportanceSampler(range(n), b, 0.2, seed=0)  # inactive: shuffled epochs
    index, factors, weights = torch.randint(0, n, (b,)), torch.rand(b), torch.rand(b) + 0.5
    noise = NoiseScale(b)
    miner = Miner(sampler, MiningConfig(refresh_fraction=0.0, always_on=True))
    step = iter(range(10**9))

    def first_factors(k: int) -> torch.Tensor:
        return fim_factors(logits[:k], hidden[:k], targets[:k], mask[:k])

    parts = {
        "fim_factors": lambda: fim_factors(logits, hidden, targets, mask),
        "record": lambda: sampler.record(index, factors, 0),
        "importance_draw": sampler.draw,
        "uniform_draw": uniform.draw,
        "noise_update": lambda: noise.observe_samples(factors.numpy(), weights.numpy()),
        "harvest_factors_given": lambda: miner.harvest(index, factors, next(step), weights, 0.5),
        "harvest_with_fim": lambda: miner.harvest(index, first_factors, next(step), weights, 0.5),
    }
    result = {name: round(microseconds(fn, reps), 1) for name, fn in parts.items()}
    added = result["harvest_with_fim"] + result["importance_draw"] - result["uniform_draw"]
    print(
        json.dumps(
            {
                "benchmark": "step_parts",
                "shapes": {"batch": b, "classes": args.classes, "hidden": args.hidden, "sequences": n},
                "microseconds": result,
                "added_per_step_us": round(added, 1),
                "threads": torch.get_num_threads(),
                "numpy": np.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
