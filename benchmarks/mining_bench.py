"""Mining share and per-step overhead of `fim` vs `uniform`, measured in one run. Prints JSON.

Targets (issue #3): mining <= 5% of wall time; per-step overhead of the sampler and
weighting <= 2% (with importance sampling forced on, the worst case; with the switch off
the overhead is the harvest alone). Uniform and fim alternate in short rounds so that
machine noise hits both alike; ratios are taken within the run.

Run: python benchmarks/mining_bench.py [--data stdlib,ucr:JapaneseVowels] [--steps 60]
"""

import argparse
import json
import tempfile

import numpy as np
import torch

from seqis.data.registry import DataOptions, load_data
from seqis.importance.mining import MiningConfig
from seqis.models.rnn import ModelConfig
from seqis.training.trainer import TrainConfig, train


def run(data, spec, sampler, steps, seed, mining, model):
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            data=spec,
            sampler=sampler,
            steps=steps,
            eval_every=10**9,
            checkpoint_every=10**9,
            seed=seed,
            out=out,
            progress=False,
            tensorboard=False,
            mining=mining,
            model=model,
        )
        return train(cfg, data=data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="stdlib,ucr:JapaneseVowels")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = ModelConfig()  # the CLI defaults: LSTM, 2 layers of 256
    report = []
    for spec in args.data.split(","):
        data = load_data(spec, DataOptions(max_chars=500_000))
        modes = {
            "uniform": ("uniform", MiningConfig()),
            "fim_switch": ("fim", MiningConfig()),
            "fim_always_on": ("fim", MiningConfig(always_on=True, warmup_steps=1, check_every=10)),
        }
        speed = {k: [] for k in modes}
        share = {k: [] for k in modes}
        for r in range(args.rounds):
            for name, (sampler, mining) in modes.items():
                s = run(data, spec, sampler, args.steps, r, mining, model)
                speed[name].append(s["steps_per_s"])
                share[name].append(s["mining_share"])
        uni = float(np.median(speed["uniform"]))
        entry = {
            "data": spec,
            "steps": args.steps,
            "rounds": args.rounds,
            "threads": args.threads,
            "uniform_steps_per_s": uni,
        }
        for name in ("fim_switch", "fim_always_on"):
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
