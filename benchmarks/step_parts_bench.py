"""What importance sampling adds to one training step, part by part, in microseconds. Prints JSON.

The per-step overhead in ``mining_bench.py`` is a difference of two noisy throughputs; this
times each part alone, on the shapes of the Fashion-MNIST race (batch 64, 10 classes, GRU
1x128, N = 60,000): the FIM factors of a batch, recording them in the sum tree, an
importance draw (against a uniform one), the noise-scale update, and the miner's whole
harvest with the factors given and computed. Beside them, on the same shapes, a plain training
step (by default a GRU 1x128 over 64 random 28-row sequences: forward, backward, clip, Adam), so the parts'
share of a step is a ratio measured in one run. The miner holds harvests and the sampler
draws ahead (8 steps each), so the per-call times are averages over those cycles. Parts and
the step alternate over ``--rounds`` rounds; each figure is the median round.

Run: python benchmarks/step_parts_bench.py [--batch 64 --classes 10 --hidden 128 --n 60000]
JapaneseVowels' race shapes: --cell lstm --batch 16 --classes 9 --hidden 64 --n 576 --steps 16 --features 12
--target 0.05
"""

import argparse
import json
import time

import numpy as np
import torch

from seqis.importance.config import MiningConfig
from seqis.importance.factors import fim_factors, harvest_fim
from seqis.importance.mining import Miner
from seqis.importance.noise import NoiseScale
from seqis.sampling.sampler import ImportanceSampler


def microseconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def training_step(cell: str, batch: int, classes: int, hidden: int, steps: int, features: int):
    """A plain recurrent classifier step on random sequences: the cost the parts are compared with."""
    gru = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](features, hidden, batch_first=True)
    head = torch.nn.Linear(hidden, classes)
    params = [*gru.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x, y = torch.randn(batch, steps, features), torch.randint(0, classes, (batch,))

    def step() -> None:
        out, _ = gru(x)
        loss = torch.nn.functional.cross_entropy(head(out[:, -1]), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--steps", type=int, default=28, help="time steps of the training step's sequences")
    parser.add_argument("--features", type=int, default=28, help="inputs per time step")
    parser.add_argument("--cell", choices=["gru", "lstm"], default="gru")
    parser.add_argument("--target", type=float, default=0.02, help="2%% F-MNIST, 5%% JapaneseVowels")
    parser.add_argument("--repeats", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=5)
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

    def first_factors(k: int):  # as the trainer harvests: a classifier's are computed at the flush
        return harvest_fim(logits, hidden, targets, mask, count=k)

    parts = {
        "fim_factors": lambda: fim_factors(logits, hidden, targets, mask),
        "record": lambda: sampler.record(index, factors, 0),
        "importance_draw": sampler.draw,
        "uniform_draw": uniform.draw,
        "noise_update": lambda: noise.observe_samples(factors.numpy(), weights.numpy()),
        "harvest_factors_given": lambda: miner.harvest(index, factors, next(step), weights, 0.5),
        "harvest_with_fim": lambda: miner.harvest(index, first_factors, next(step), weights, 0.5),
    }
    step_reps = max(10, reps // 40)
    rounds: dict[str, list[float]] = {name: [] for name in [*parts, "training_step"]}
    train = training_step(args.cell, b, args.classes, args.hidden, args.steps, args.features)
    for _ in range(args.rounds):
        for name, fn in parts.items():
            rounds[name].append(microseconds(fn, reps))
        rounds["training_step"].append(microseconds(train, step_reps))
    result = {name: round(float(np.median(times)), 1) for name, times in rounds.items()}
    added = result["harvest_with_fim"] + result["importance_draw"] - result["uniform_draw"]
    print(
        json.dumps(
            {
                "benchmark": "step_parts",
                "shapes": {
                    "batch": b,
                    "classes": args.classes,
                    "hidden": args.hidden,
                    "sequences": n,
                    "steps": args.steps,
                    "features": args.features,
                    "cell": args.cell,
                },
                "microseconds": result,
                "added_per_step_us": round(added, 1),
                "added_share_of_step": round(added / result["training_step"], 4),
                "target_share": args.target,
                "threads": torch.get_num_threads(),
                "numpy": np.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
