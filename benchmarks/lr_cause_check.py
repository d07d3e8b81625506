"""Why importance sampling prefers a lower peak learning rate: clipping, or Adam's scaling? Prints JSON.

At the same learning rate and schedule, ``uniform`` and ``fim`` (forced on after the warm-up)
train the Fashion-MNIST race's GRU; from the final checkpoint, Adam's state gives the RMS of
sqrt(v_hat) (the per-parameter gradient scale Adam divides by) and of the update
m_hat / (sqrt(v_hat) + eps) (the step per unit of learning rate); ``metrics.csv`` gives the
share of steps whose gradient norm was clipped. Two hypotheses for importance sampling's lower
best learning rate (issue "Make it pay where users train", item 2): weights up to 1/alpha make
weighted gradients larger, so clipping absorbs the cut (then ``fim`` clips more); or Adam,
dividing by a second moment that shrinks with the noise, already takes larger steps at the same
learning rate (then ``fim``'s update RMS is larger).

Run: python benchmarks/lr_cause_check.py [--steps 900 --lr 0.004 --seeds 2]
"""

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from seqis.data.registry import DataOptions, load_data
from seqis.importance.config import MiningConfig
from seqis.models.rnn import ModelConfig
from seqis.training.checkpoint import load_latest
from seqis.training.trainer import TrainConfig, train

MODES = {
    "uniform": MiningConfig(sampler="uniform"),
    "fim": MiningConfig(sampler="fim", always_on=True, warmup_steps=50),
}


def adam_figures(optimizer_state: dict, betas=(0.9, 0.999), eps=1e-8) -> dict:
    """RMS over all parameters of sqrt(v_hat) and of the bias-corrected update."""
    scales, updates = [], []
    for state in optimizer_state["state"].values():
        step = float(state["step"])
        m_hat = state["exp_avg"] / (1 - betas[0] ** step)
        v_hat = state["exp_avg_sq"] / (1 - betas[1] ** step)
        scales.append(v_hat.sqrt().flatten())
        updates.append((m_hat / (v_hat.sqrt() + eps)).flatten())
    rms = lambda parts: float(torch.cat(parts).double().pow(2).mean().sqrt())  # noqa: E731
    return {"sqrt_v_rms": rms(scales), "update_rms": rms(updates)}


def run(data, mining: MiningConfig, args, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            data="fashion-mnist",
            steps=args.steps,
            lr=args.lr,
            clip=1.0,
            eval_every=args.steps // 3,
            checkpoint_every=10**9,
            seed=seed,
            out=out,
            progress=False,
            tensorboard=False,
            mining=mining,
            model=ModelConfig(cell="gru", hidden_size=128, num_layers=1),
            batch_size=64,
        )
        summary = train(cfg, data=data)
        state, _ = load_latest(Path(out))
        rows = [r for r in csv.DictReader((Path(out) / "metrics.csv").open()) if r["clipped_share"]]
    return {
        **adam_figures(state["optimizer"]),
        "clipped_share": float(np.mean([float(r["clipped_share"]) for r in rows])),
        "final_val_loss": summary["final_val_loss"],
        "is_active_share": summary["is_active_share"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--lr", type=float, default=0.004)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_data("fashion-mnist", DataOptions(val_size=2000))
    results = {
        name: [run(data, mining, args, seed) for seed in range(args.seeds)] for name, mining in MODES.items()
    }
    medians = {
        name: {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
        for name, runs in results.items()
    }
    ratio = {
        key: medians["fim"][key] / medians["uniform"][key]
        for key in ("sqrt_v_rms", "update_rms", "clipped_share")
    }
    print(
        json.dumps(
            {
                "benchmark": "lr_cause",
                "setup": {"steps": args.steps, "lr": args.lr, "clip": 1.0, "seeds": args.seeds, "batch": 64},
                "runs": results,
                "medians": medians,
                "fim_over_uniform": ratio,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
