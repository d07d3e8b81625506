"""Mining share and per-step overhead of `fim` vs `uniform`, measured in one run. Prints JSON.

Targets (issue #3): mining <= 5% of wall time; per-step overhead of the sampler and
weighting <= 2%. Three modes: uniform; fim with the switch (on data where the switch
stays off, the overhead is the switch's harvest alone: 8 sequences every 4 steps); fim
forced on (the worst case: full harvest, tree updates, refresh). Modes alternate in short
rounds so that machine noise hits them alike; ratios are taken within the run.

Run: python benchmarks/mining_bench.py [--data stdlib,ucr:JapaneseVowels] [--hidden 256 --layers 2]
"""

import argparse
import json
import tempfile

import numpy as np
import torch

from seqis.data.registry import DataOptions, load_data
from seqis.importance.config import MiningConfig
from seqis.models.rnn import ModelConfig
from seqis.training.trainer import TrainConfig, train

MODES = {
    "uniform": MiningConfig(sampler="uniform"),
    "fim_switch": MiningConfig(sampler="fim"),
    "fim_always_on": MiningConfig(sampler="fim", always_on=True, warmup_steps=1, check_every=10),
    "prune": MiningConfig(sampler="prune", warmup_steps=1, check_every=10),
}


def steps_per_s(data, spec, mining, args, seed) -> tuple[float, float]:
    model = ModelConfig(cell=args.model, hidden_size=args.hidden, num_layers=args.layers)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            data=spec,
            steps=args.steps,
            eval_every=10**9,
            checkpoint_every=10**9,
            seed=seed,
            out=out,
            progress=False,
            tensorboard=False,
            mining=mining,
            model=model,
            batch_size=args.batch_size,
        )
        summary = train(cfg, data=data)
    return summary["steps_per_s"], summary["mining_share"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="stdlib,ucr:JapaneseVowels")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", choices=["lstm", "gru", "rnn"], default="lstm")
    parser.add_argument("--hidden", type=int, default=256, help="256 x 2 layers: the CLI default")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = []
    for spec in args.data.split(","):
        data = load_data(spec, DataOptions(max_chars=500_000))
        speed = {k: [] for k in MODES}
        share = {k: [] for k in MODES}
        for r in range(args.rounds):
            for name, mining in MODES.items():
                sps, ms = steps_per_s(data, spec, mining, args, seed=r)
                speed[name].append(sps)
                share[name].append(ms)
        uni = float(np.median(speed["uniform"]))
        entry = {
            "data": spec,
            "model": f"{args.model} {args.layers}x{args.hidden}",
            "batch": args.batch_size,
            "steps": args.steps,
            "rounds": args.rounds,
            "threads": args.threads,
            "uniform_steps_per_s": uni,
        }
        for name in ("fim_switch", "fim_always_on", "prune"):
            entry[f"{name}_steps_per_s"] = float(np.median(speed[name]))
            entry[f"{name}_overhead"] = uni / float(np.median(speed[name])) - 1.0
            entry[f"{name}_mining_share"] = float(np.median(share[name]))
        report.append(entry)
    print(
        json.dumps(
            {
                "benchmark": "mining",
                "results": report,
                "targets": {"mining_share": 0.05, "per_step_overhead": 0.02},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
