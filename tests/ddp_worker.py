"""Run under torchrun by tests/test_distributed.py: checks that need real ranks.

Modes: ``draws`` (global draw equals a single-process draw; the all-reduced weighted
gradient equals the global batch's), ``stall`` (a stalled rank fails the others within the
timeout) and ``resume_choice`` (a rank whose own pick of the newest checkpoint would lag
still resumes from rank 0's).
"""

import gc
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from seqis.data.registry import load_data
from seqis.distributed import DistContext
from seqis.models.rnn import ModelConfig, RecurrentModel
from seqis.sampling.sampler import ImportanceSampler


def close_group() -> None:
    """Tear the gloo group down only when every rank is done with it, and nothing holds it.

    A rank whose peer had already closed its connections, or whose DDP reducer outlived the
    group until interpreter exit, aborted ("terminate called without an active exception").
    """
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def draws(out_path: str) -> None:
    ctx = DistContext.from_env("cpu", timeout_s=60)
    data = load_data("ucr:JapaneseVowels")
    pool = data.train_idx[:48]
    factors = torch.linspace(0.1, 3.0, len(pool))
    b = 4
    dist_sampler = ImportanceSampler(pool, b * ctx.world, smoothing=0.1, seed=7)
    single = ImportanceSampler(pool, b * ctx.world, smoothing=0.1, seed=7)
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

    # DDP averages the ranks' gradients of their slices; that must be exactly the gradient of
    # the weighted loss over the whole global batch, whose unbiasedness test_sampler checks.
    worst = 0.0
    for _ in range(30):
        idx, w = dist_sampler.draw()
        whole = flat_grad((w.double() * model(double(data.batch(idx))).loss).mean())
        g = flat_grad((ctx.shard(w).double() * model(double(data.batch(ctx.shard(idx)))).loss).mean())
        dist.all_reduce(g)
        worst = max(worst, ((g / ctx.world - whole).norm() / whole.norm()).item())
    if ctx.is_main:
        with open(out_path, "w") as f:
            json.dump({"world": ctx.world, "same_draws": bool(same_draws), "max_rel_diff": worst}, f)
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


def resume_choice(out_path: str) -> None:
    from seqis.training import trainer
    from seqis.training.checkpoint import list_checkpoints

    config = trainer.TrainConfig(
        data="digits:rows", steps=60, stop_at=40, batch_size=8, eval_every=20, checkpoint_every=20,
        keep_checkpoints=3, device="cpu", out=out_path, progress=False, tensorboard=False,
    ).with_sampler("fim")  # fmt: skip
    config.model.hidden_size, config.model.num_layers = 8, 1
    dist.init_process_group("gloo")  # the caller's group: train() must leave it open
    trainer.train(config)
    if int(os.environ["RANK"]) == 1:  # this rank's view lags: it would pick the older file
        oldest = list_checkpoints(out_path)[0]
        trainer.load_latest = lambda out: (trainer.load_checkpoint(oldest), oldest)
    config.stop_at = None  # the segment ends; the run goes on to its planned 60 steps
    trainer.train(config, resume=True)
    close_group()


def rank_aware(out_path: str) -> None:
    """A user's own DDP loop: RankSlice gives each rank its slice; factors are gathered, then recorded."""
    from seqis.sampling.loader import RankSlice

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = DistContext.current()
    n, b = 64, 4
    mine = ImportanceSampler(range(n), batch_size=b * world, smoothing=0.2, seed=3)  # single-replica
    whole = ImportanceSampler(range(n), batch_size=b * world, smoothing=0.2, seed=3)
    factors = torch.linspace(0.1, 5.0, n)
    slices_ok, seen = True, []
    for step, batch in zip(range(12), RankSlice(mine), strict=False):
        index = torch.tensor([i for i, _ in batch])
        global_index, _ = whole.draw()
        slices_ok &= torch.equal(index, global_index[rank * b : (rank + 1) * b])
        seen += index.tolist()
        gathered_index = ctx.gather(index)  # every rank records every rank's factors
        mine.record(gathered_index, factors[gathered_index], step)
        whole.record(global_index, factors[global_index], step)
        if step == 5:
            mine.active = whole.active = True
    gathered = [None] * world
    dist.all_gather_object(gathered, (mine.factors.tolist(), seen))
    same_factors = all(np.array_equal(np.array(f), whole.factors, equal_nan=True) for f, _ in gathered)
    first_epoch = [i for _, s in gathered for i in s[: 6 * b]]  # the uniform steps, before step 6
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(
                {
                    "world": world,
                    "replicas": RankSlice(mine).num_replicas,
                    "slices_ok": bool(slices_ok),
                    "same_factors": bool(same_factors),
                    "uniform_disjoint": len(set(first_epoch)) == len(first_epoch),
                },
                f,
            )
    close_group()


def own_loop(out_path: str) -> None:
    """examples/own_loop.py's four lines under DDP: ImportanceLoader joins the process group."""
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from torch.nn.utils.rnn import pad_sequence
    from torch.utils.data import DataLoader

    import seqis

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = load_data("ucr:JapaneseVowels")
    items = [(data.inputs[i, : data.lengths[i]], data.targets[i]) for i in data.train_idx.tolist()]

    def pad(batch):
        x, y = zip(*batch, strict=True)
        lengths = torch.tensor([len(t) for t in x])
        return pad_sequence(list(x), batch_first=True), lengths, torch.stack(list(y))

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = torch.nn.GRU(data.input_size, 16, batch_first=True), torch.nn.Linear(16, 9)

        def forward(self, x, lengths):
            return self.head(self.rnn(x)[0][torch.arange(len(x)), lengths - 1])

    torch.manual_seed(0)
    model = Classifier()

    def per_sequence_loss(module, batch):
        x, lengths, y = batch
        return F.cross_entropy(module(x, lengths), y, reduction="none", label_smoothing=0.1)

    net = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = seqis.ImportanceLoader(
        DataLoader(items, batch_size=8, collate_fn=pad),
        model.head,
        seqis.MiningConfig(always_on=True, refresh_batch=32),
        loss_fn=per_sequence_loss,
        model=model,
        seed=1,
    )
    drawn = []
    while len(drawn) < 120:  # 36 global batches an epoch
        for batch in loader:
            loss = loader.weigh(per_sequence_loss(net, batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loader.step()
            drawn.append(loader.index.tolist())
            if len(drawn) == 120:
                break
    factors = torch.from_numpy(loader.sampler.factors).nan_to_num(-1.0)
    every = [None, None]
    params = float(sum(p.sum() for p in model.parameters()))
    noise = loader.miner.noise.batch_sq  # from each rank's own pre-clip gradient, averaged over ranks
    dist.all_gather_object(every, (drawn, float(factors.sum()), params, noise))
    if rank == 0:
        (rank0, f0, p0, n0), (rank1, f1, p1, n1) = every
        warmup = zip(rank0[:49], rank1[:49], strict=True)
        result = {
            "world": loader.ctx.world,
            "active": loader.active,
            "disjoint_warmup": all(not set(a) & set(b) for a, b in warmup),
            "same_factors": f0 == f1,
            "same_parameters": p0 == p1,
            "same_noise_scale_input": n0 == n1 and n0 is not None,
            "refreshed": loader.miner.state_dict()["sweep_cursor"] > 0,
        }
        with open(out_path, "w") as f:
            json.dump(result, f)
    del net  # DDP's reducer must go before its process group
    close_group()


def validation_on_rank_zero(out_path: str) -> None:
    """A user's own DDP loop that validates on rank 0 alone: observe_validation must not be a
    collective there (gloo aborted on the mismatch), and both ranks' watches must agree after the
    next switch decision."""
    from seqis.importance.config import MiningConfig
    from seqis.importance.mining import Miner

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sampler = ImportanceSampler(range(64), batch_size=8, seed=0)
    miner = Miner(sampler, MiningConfig(warmup_steps=10, check_every=10, val_patience=1))
    for step in range(30):
        index, weights = sampler.draw()
        mine = slice(4 * rank, 4 * rank + 4)  # this rank's half of the global batch
        miner.harvest(index[mine], torch.rand(4) + 0.5, step, weights[mine])
        miner.after_step(step)
        if rank == 0 and step in (4, 14):
            miner.observe_validation(step + 1, 0.5 + step / 100, 0.4)
    watches = [None, None]
    dist.all_gather_object(watches, miner.switch.watch.state_dict())
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"same_watch": watches[0] == watches[1], "best": watches[1]["best"]}, f)
    close_group()


if __name__ == "__main__":
    modes = {
        "draws": draws,
        "stall": stall,
        "resume_choice": resume_choice,
        "rank_aware": rank_aware,
        "own_loop": own_loop,
        "validation_on_rank_zero": validation_on_rank_zero,
    }
    modes[sys.argv[1]](sys.argv[2])
