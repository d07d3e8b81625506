"""How much of the gradient's variance can importance sampling cut, and how much does the store deliver?

One training run (any ``seqis train`` flags); at the steps of ``--at`` the model is paused and a
seeded uniform sample of ``--sample`` training sequences gets its *full-model* per-sequence
gradients, one backward each. On the same model and sample it reports the variance cut of the
full gradient's estimator (trace of uniform's covariance over the importance-weighted one's)
when drawing by:

- ``fresh``: fim factors of every training sequence scored now (forward only), smoothing alpha;
- ``oracle``: the full per-sequence gradient norms themselves (the best any factor could do);
- ``store``: the factors the run's sampler holds now (stale ones and never-scored ones at the
  mean), which is what its importance draws come from (``delivered`` when importance sampling
  is on);

with the correlation of fresh fim factors with the full gradient norms, the store's coverage
and the full gradient's noise scale B = tr(Sigma) / |G|^2, and ``sweep_cost``: a sequence scored
at ``--sweep-batch`` over a trained one (the run's clock so far), what ``MiningConfig.sweep_cost``
prices. JSON on stdout.

    python benchmarks/fresh_cut.py --data fashion-mnist --model gru --hidden 128 --layers 1 \\
        --batch-size 64 --lr 0.004 --schedule cosine --warmup 0.05 --epochs 2 --sampler fim --sweep

Scoring all 60,000 Fashion-MNIST rows and 384 backward passes take ~30 s a point on one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from seqis.cli import build_parser, train_config
from seqis.distributed import DistContext
from seqis.importance.factors import FACTORS
from seqis.training.trainer import Run

AT = "0,50,150,300,500,900,1300"


def per_sequence_gradients(model, data, index) -> np.ndarray:
    """Each sequence's full-model loss gradient, flattened: ``(len(index), parameters)``."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in index.tolist():
        loss = model(data.batch(torch.tensor([i]))).loss[0]
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.flatten() for g in grads]).double().numpy())
    return np.stack(rows)


def variance_cut(grads: np.ndarray, weights: np.ndarray) -> float:
    """tr(Sigma_uniform) / tr(Sigma_weighted) of one draw, from a uniform sample's gradients and the
    importance weights w = 1/(N p) the sample's sequences would be drawn with."""
    sq = (grads**2).sum(1)
    mean = grads.mean(0)
    n = len(grads)
    uniform = sq.mean() - mean @ mean  # E_u|g|^2 - |G|^2, G estimated by the sample's mean
    weighted = (weights * sq).mean() - mean @ mean  # E_p|w g|^2 - |G|^2 = E_u[w |g|^2] - |G|^2
    return float(uniform * n / (n - 1) / max(weighted * n / (n - 1), 1e-300))


def mixed_weights(scores: np.ndarray, total: float, count: int, alpha: float) -> np.ndarray:
    """w = 1 / (N p) for p = (1 - alpha) s / total + alpha / N."""
    return 1.0 / ((1.0 - alpha) * scores * count / total + alpha)


def measure(run: Run, step: int, sample: torch.Tensor, alpha: float) -> dict:
    model, data, sampler = run.model, run.data, run.sampler
    model.eval()
    start = time.perf_counter()
    chunks = data.train_idx.split(run.config.mining.sweep_batch)  # as a sweep scores them
    with torch.no_grad():
        fresh = torch.cat([FACTORS["fim"].score(model, data.batch(chunk)) for chunk in chunks])
    fresh = fresh.double().numpy()
    scoring_per_sequence = (time.perf_counter() - start) / len(data.train_idx)
    grads = per_sequence_gradients(model, data, sample)
    model.train()
    n = len(data.train_idx)
    positions = torch.searchsorted(data.train_idx, sample).numpy()
    norms = np.sqrt((grads**2).sum(1))
    row = {
        "step": step,
        "fresh": variance_cut(grads, mixed_weights(fresh[positions], fresh.sum(), n, alpha)),
        "oracle": variance_cut(grads, mixed_weights(norms, norms.mean() * n, n, alpha)),
        "correlation": float(np.corrcoef(fresh[positions], norms)[0, 1]),
    }
    mean_sq, mean = (grads**2).sum(1).mean(), grads.mean(0)
    g2 = mean @ mean - (mean_sq - mean @ mean) / (len(grads) - 1)
    row["noise_scale"] = float((mean_sq - g2) / g2) if g2 > 0 else None
    # what MiningConfig.sweep_cost prices: a sequence scored at --sweep-batch over a trained one
    mined = run.miner.mining_time_s if run.miner is not None else 0.0
    trained = (run.state.clock - mined) / (step * run.config.batch_size) if step else None
    row["sweep_cost"] = scoring_per_sequence / trained if trained else None
    if hasattr(sampler, "scores"):  # a store of factors: what importance draws would come from
        stored = sampler.scores()
        row["store"] = variance_cut(grads, mixed_weights(stored[positions], stored.sum(), n, alpha))
        row["coverage"] = sampler.coverage
        row["importance_on"] = bool(sampler.active)
    row["seconds"] = time.perf_counter() - start
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", default=AT, help="steps at which to measure, comma-separated")
    parser.add_argument("--sample", type=int, default=384, help="sequences with full gradients")
    args, rest = parser.parse_known_args(argv)
    train_args = build_parser().parse_args(["train", "--no-progress", "--out", "runs/fresh_cut", *rest])
    config = train_config(train_args)
    torch.set_num_threads(config.threads)
    run = Run(config, None, DistContext())
    at = sorted(int(x) for x in args.at.split(","))
    g = torch.Generator().manual_seed(20_171_023)
    pick = torch.randperm(len(run.data.train_idx), generator=g)[: args.sample]
    sample = run.data.train_idx[pick].sort().values
    rows = []
    run.model.train()
    for step in range(at[-1] + 1):
        if step in at:
            rows.append(measure(run, step, sample, config.mining.smoothing))
            print(json.dumps(rows[-1]), file=sys.stderr)
        if run.plan.done(run.state.step, run.sampler.epochs_done_exact):
            break
        run.train_step()
    planned = run.plan.planned_steps
    result = {
        "command": " ".join(["python benchmarks/fresh_cut.py", *(argv or sys.argv[1:])]),
        "planned_steps": planned,
        "sampler": config.sampler_label,
        "sweeps": run.miner.sweeps.history if run.miner is not None and run.miner.sweeps else None,
        "rows": [{**r, "share_of_plan": r["step"] / planned if planned else None} for r in rows],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
