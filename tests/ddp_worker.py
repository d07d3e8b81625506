"""Run under torchrun by tests/test_distributed.py: checks that need real ranks.

Modes: ``draws`` (global draw equals a single-process draw; the all-reduced weighted
gradient is unbiased) and ``stall`` (a stalled rank fails the others within the timeout).
"""

import json
import sys
import time

import torch
import torch.distributed as dist

from seqis.data.registry import load_data
from seqis.models.rnn import ModelConfig, RecurrentModel
from seqis.sampling.sampler import ImportanceSampler
from seqis.training.distributed import DistContext


def draws(out_path: str) -> None:
    ctx = DistContext.from_env("cpu", timeout_s=60)
    data = load_data("ucr:JapaneseVowels")
    pool = data.train_idx[:48]
    factors = torch.linspace(0.1, 3.0, len(pool))
    b = 4
    dist_sampler = ImportanceSampler(pool, b * ctx.world, smoothing=0.1, seed=7, dataset_size=len(data))
    single = ImportanceSampler(pool, b * ctx.world, smoothing=0.1, seed=7, dataset_size=len(data))
    for s in (dist_sampler, single):
        s.record(pool, factors)
        s.active = True
    same_draws = True
    for _ in range(20):
        idx, w = dist_sampler.draw()
        mine_idx, mine_w = ctx.shard(idx), ctx.shard(w)
        gathered = ctx.gather(mine_idx)
        ref_idx, ref_w = single.draw()
        same_draws &= torch.equal(gathered, ref_idx) and torch.equal(ctx.gather(mine_w), ref_w)

    torch.manual_seed(0)
    cfg = ModelConfig(cell="gru", hidden_size=8, num_layers=1, embed_size=8)
    model = RecurrentModel(data.task, data.input_size, data.num_outputs, cfg).double()
    params = list(model.parameters())

    def flat_grad(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    def double(batch):
        batch.inputs = batch.inputs.double()
        return batch

    full = flat_grad(model(double(data.batch(pool))).loss.mean())
    estimates = []
    for _ in range(300):
        idx, w = dist_sampler.draw()
        idx, w = ctx.shard(idx), ctx.shard(w)
        g = flat_grad((w.double() * model(double(data.batch(idx))).loss).mean())
        dist.all_reduce(g)  # what DDP does: average the ranks' gradients
        estimates.append(g / ctx.world)
    est = torch.stack(estimates)
    se = est.std(0) / len(est) ** 0.5
    z = ((est.mean(0) - full) / se.clamp_min(1e-12)).pow(2).mean().item()
    if ctx.is_main:
        with open(out_path, "w") as f:
            json.dump({"world": ctx.world, "same_draws": bool(same_draws), "mean_z2": z}, f)
    ctx.close()


def stall(out_path: str) -> None:
    ctx = DistContext.from_env("cpu", timeout_s=3)
    if ctx.rank == 1:
        time.sleep(20)  # a stalled rank
        return
    start = time.perf_counter()
    try:
        ctx.any(True)
        outcome = "no error"
    except Exception as e:  # the error a survivor sees
        outcome = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    with open(out_path, "w") as f:
        json.dump(
            {
                "seconds": time.perf_counter() - start,
                "outcome": outcome,
                "is_dist_error": "DistError" in outcome
                or "Timeout" in outcome
                or "timed out" in outcome.lower(),
            },
            f,
        )


if __name__ == "__main__":
    {"draws": draws, "stall": stall}[sys.argv[1]](sys.argv[2])
