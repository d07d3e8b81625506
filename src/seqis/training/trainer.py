"""The training loop: one readable example of an importance-sampled PyTorch loop.

Per step: draw indices and weights, forward, weight the per-sequence losses, backward,
clip, step, harvest factors from the same forward pass, let the miner refresh and
switch. ``wall_time_s`` counts exactly that work (mining included) and excludes
validation and checkpoint writes, which are measurement and the same for every sampler.
"""

from __future__ import annotations

import gc
import json
import math
import re
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from seqis.data.base import CLASSIFY, SequenceData
from seqis.data.registry import DataOptions, load_data
from seqis.distributed import DistContext
from seqis.errors import CheckpointError, ConfigError, SeqisError
from seqis.importance.factors import HARVESTERS, exact_factors, score
from seqis.importance.mining import LR_RULES, Miner, MiningConfig
from seqis.models.rnn import ModelConfig, ModelOutput, RecurrentModel
from seqis.sampling.sampler import (
    ImportanceSampler,
    PresamplingSampler,
    PruningSampler,
    UniformBatchSampler,
)
from seqis.training.checkpoint import (
    checkpoint_dir,
    load_checkpoint,
    load_latest,
    params_sha256,
    save_checkpoint,
    write_json_atomic,
)
from seqis.training.metrics import MetricsLog

SAMPLERS = ("uniform", "fim", "gradnorm", "loss", "exact", "prune")
# What gloo and NCCL say when a peer is gone or stalled; any other RuntimeError (out of memory,
# a shape mismatch) is reported as itself, even when it mentions the backend.
_COLLECTIVE_FAILURE = re.compile(
    r"timed out|timeout|connection (closed|reset|refused)|closed by peer|peer .*(closed|reset)"
    r"|broken pipe|nccl.*(abort|watchdog)",
    re.I,
)


@dataclass
class TrainConfig:
    data: str = "stdlib"
    data_options: DataOptions = field(default_factory=DataOptions)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: str = "uniform"
    mining: MiningConfig = field(default_factory=MiningConfig)
    steps: int | None = None
    time_budget: float | None = None
    target_loss: float | None = None
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 2e-3
    clip: float = 1.0
    eval_every: int = 50
    train_eval_size: int = 2000  # fixed training subset evaluated beside validation
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    out: str = "runs/train"
    skip_nonfinite: bool = False
    dist_timeout: float = 300.0  # seconds a collective waits for a dead or stalled rank
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        if self.steps is None and self.time_budget is None:
            raise ConfigError("give --steps N or --time-budget SECONDS (or both)")
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "train_eval_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("time_budget", "lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose adam or sgd")
        if self.model.hidden_size < 1 or self.model.num_layers < 1:
            raise ConfigError("--hidden and --layers must be >= 1")
        if not 0 <= self.model.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.model.dropout}")
        if self.data_options.seq_len < 1:
            raise ConfigError(f"--seq-len must be >= 1, got {self.data_options.seq_len}")
        if self.data_options.max_chars < 1:
            raise ConfigError(f"--max-chars must be >= 1, got {self.data_options.max_chars}")
        if not 0 < self.mining.smoothing <= 1:
            # At 0 a sequence whose stored factor is 0 is never drawn again, and weights are unbounded.
            raise ConfigError(f"--smoothing must be in (0, 1], got {self.mining.smoothing}")
        if self.mining.cost_aware and self.sampler in ("prune", "gradnorm"):
            raise ConfigError(f"--cost-aware shapes importance draws; --sampler {self.sampler} has none")
        if self.mining.min_gain_off > self.mining.min_gain:
            raise ConfigError("--min-gain-off must not exceed --min-gain (the switch would flap)")
        if not 0 <= self.mining.anneal <= 1:
            raise ConfigError(f"--anneal must be in [0, 1], got {self.mining.anneal}")
        if self.mining.anneal > 0 and not self.steps:
            raise ConfigError("--anneal needs --steps: it is a share of the planned steps")
        if not 0 <= self.mining.prune_ratio < 1 or not 0 <= self.mining.prune_anneal <= 1:
            raise ConfigError("--prune-ratio must be in [0, 1) and --prune-anneal in [0, 1]")
        if self.mining.lr_scale not in LR_RULES or not self.mining.lr_scale_max >= 1:
            raise ConfigError("--lr-scale must be none, sqrt or linear and --lr-scale-max >= 1")
        if self.sampler == "prune" and self.mining.factor not in ("fim", "loss", "gradnorm"):
            raise ConfigError(f"--factor must be fim, loss or gradnorm, got {self.mining.factor!r}")
        if self.mining.refresh_fraction < 0 or self.mining.refresh_batch < 1:
            raise ConfigError("--refresh-fraction must be >= 0 and --refresh-batch >= 1")

    def changes_from(self, saved: dict) -> list[str]:
        """Settings that differ from a saved configuration and would change the run.

        Stopping, output and measurement settings may change on resume; everything else
        (data, model, sampler, optimizer, learning rate, clipping, mining...) must not.
        """
        now = _flat(_jsonable(asdict(self)))
        before = _flat(saved)
        return [
            f"{key} {before.get(key)!r} -> {now.get(key)!r}"
            for key in sorted(set(now) | set(before))
            if key not in RESUME_MAY_CHANGE and now.get(key) != before.get(key)
        ]

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """The configuration a run saved (``config.json`` or a checkpoint's ``config``)."""
        nested = {
            "data_options": DataOptions(**saved["data_options"]),
            "model": ModelConfig(**saved["model"]),
            "mining": MiningConfig(**saved["mining"]),
        }
        return cls(**{**saved, **nested})


# Changing these on resume changes when a run stops, where it writes or what it measures, not
# what it trains; every other setting must match the checkpoint.
RESUME_MAY_CHANGE = {
    "steps",
    "time_budget",
    "target_loss",
    "out",
    "progress",
    "tensorboard",
    "device",
    "dist_timeout",
    "eval_every",
    "train_eval_size",
    "checkpoint_every",
    "keep_checkpoints",
    "skip_nonfinite",
    "data_options.val_size",
}


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but CUDA is not available here")
    return torch.device(name)


def ensure_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output directory {out} is not writable: {e.strerror}") from None


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    data: SequenceData,
    index: torch.Tensor,
    device: torch.device,
    batch: int = 512,
    ctx: DistContext | None = None,
) -> tuple[float, float | None]:
    """Mean per-sequence loss over sequences ``index``, and accuracy for classification.

    Under ``torch.distributed`` each rank evaluates every ``world``-th sequence and the sums
    are all-reduced, so every rank gets the same figures (and the same stop decision).
    """
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    for chunk in index[ctx.rank :: ctx.world].split(batch):
        out = model(data.batch(chunk).to(device))
        sums[0] += float(out.loss.double().sum())
        if data.task == CLASSIFY:
            sums[1] += int((out.logits[:, 0].argmax(-1) == out.targets[:, 0]).sum())
    model.train(was_training)
    total, correct = ctx.sum(sums).tolist()
    return total / len(index), (correct / len(index) if data.task == CLASSIFY else None)


def train_eval_subset(data: SequenceData, size: int) -> torch.Tensor:
    """A fixed, seeded subset of training sequences: the same for every sampler and seed."""
    pick = torch.randperm(len(data.train_idx), generator=torch.Generator().manual_seed(20_171_023))
    return data.train_idx[pick[:size]].sort().values


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum
        # The next signal gets the previous (default) handler: a stuck process can still be
        # interrupted by pressing Ctrl-C twice.
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def forward_scorer(kind: str, model: torch.nn.Module, data: SequenceData, device: torch.device):
    """Dataset indices -> factors of ``kind`` from a forward-only pass (the miner's refresh)."""

    def score_fn(index: torch.Tensor) -> torch.Tensor:
        batch = data.batch(index).to(device)
        was_training = model.training
        model.eval()
        try:
            return score(kind, model, batch)
        finally:
            model.train(was_training)

    return score_fn


def batch_factors(kind: str, model, data: SequenceData, device, batch, output: ModelOutput):
    """``k -> factors`` of the first k sequences of the batch just trained, from its forward pass."""
    if kind == "exact":  # true per-sequence gradients: a pass of their own
        return lambda k: exact_factors(model, data.batch(batch.index[:k].cpu()).to(device))
    return lambda k: HARVESTERS[kind](output.head(k))


def build(config: TrainConfig, data: SequenceData | None = None, ctx: DistContext | None = None):
    """Data, model, optimizer, sampler and miner for ``config``, seeded."""
    ctx = ctx or DistContext()
    data = data or load_data(config.data, config.data_options)
    device = resolve_device(config.device)
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
    torch.manual_seed(config.seed)  # same initial parameters for every sampler and rank
    model = RecurrentModel(data.task, data.input_size, data.num_outputs, config.model, tokens=data.tokens).to(
        device
    )
    if ctx.enabled:
        torch.manual_seed(config.seed * 1_000_003 + ctx.rank)  # per-rank dropout noise
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    # The trainer draws the global batch itself and trains on its slice (ctx.shard); the miner
    # exchanges factors. So its samplers are built as one replica of the global batch.
    global_batch = config.batch_size * ctx.world
    one = {"num_replicas": 1, "rank": 0}
    miner = None
    if config.sampler == "uniform":
        sampler = UniformBatchSampler(data.train_idx, global_batch, seed=config.seed, **one)
    elif config.sampler == "prune":
        # Pruning is decided per epoch from the latest factor of every trained sequence: no
        # refresh, no switch (on after warm-up), the full harvest on every step.
        mining = replace(config.mining, refresh_fraction=0.0, always_on=True)
        sampler = PruningSampler(
            data.train_idx,
            global_batch,
            mining.prune_ratio,
            seed=config.seed,
            total_steps=config.steps,
            anneal=mining.prune_anneal,
            **one,
        )
        miner = Miner(sampler, mining, forward_scorer(mining.factor, model, data, device), data.lengths, ctx)
    else:
        mining = MiningConfig(**{**asdict(config.mining), "factor": config.sampler})
        # K&F's gradnorm presamples fresh candidates every step, so its stored factors need
        # no refresh; the harvested ones still drive the switch.
        presample = config.sampler == "gradnorm"
        if presample:
            mining.refresh_fraction = 0.0
        kind = PresamplingSampler if presample else ImportanceSampler
        costs = data.lengths[data.train_idx] if mining.cost_aware else None
        sampler = kind(data.train_idx, global_batch, mining.smoothing, seed=config.seed, costs=costs, **one)
        scorer = forward_scorer(mining.factor, model, data, device)
        miner = Miner(sampler, mining, scorer, data.lengths, ctx, total_steps=config.steps)
        if presample:
            sampler.score_fn = miner.score
    return data, device, model, optimizer, sampler, miner


def train(config: TrainConfig, data: SequenceData | None = None, resume: bool = False) -> dict:
    """Train as ``config`` says; write metrics, checkpoints and ``summary.json``; return it."""
    config.validate()
    ctx = DistContext.from_env(config.device, config.dist_timeout)
    try:
        return _train(config, data, resume, ctx)
    except RuntimeError as e:  # gloo reports timeouts and lost peers as plain RuntimeErrors
        if not (ctx.enabled and _COLLECTIVE_FAILURE.search(str(e))):
            raise
        raise SeqisError(
            f"rank {ctx.rank}: a collective failed or timed out after {config.dist_timeout:.0f}s "
            f"(another rank died or stalled): {str(e).splitlines()[0]}"
        ) from None
    finally:
        # DistributedDataParallel sits in reference cycles: collect it while its process group
        # is alive. Left to interpreter exit, its reducer and gloo's threads were torn down after
        # the group and a rank aborted ("terminate called without an active exception").
        gc.collect()
        ctx.close()


def _train(config: TrainConfig, data: SequenceData | None, resume: bool, ctx: DistContext) -> dict:
    out = Path(config.out)
    if ctx.is_main:
        ensure_writable(out)
    data, device, model, optimizer, sampler, miner = build(config, data, ctx)
    if ctx.is_main:
        # A summary from an earlier segment must not look like this run's result if it fails.
        (out / "summary.json").unlink(missing_ok=True)
        write_json_atomic(out / "config.json", _jsonable(asdict(config)))
    net = DistributedDataParallel(model) if ctx.enabled else model
    init_sha = params_sha256(model)

    start_step, clock, rows, skipped, recent_loss, time_to_target = 0, 0.0, [], 0, [], None
    clipped_steps, recent_clipped = 0, 0
    train_eval_idx = train_eval_subset(data, config.train_eval_size)
    if resume:
        # Rank 0 chooses, every rank loads that file: a lagging or corrupted copy on one rank
        # fails loudly instead of letting the ranks diverge.
        chosen = ctx.broadcast_object(str(load_latest(out)[1]) if ctx.is_main else None)
        state, path = load_checkpoint(Path(chosen)), Path(chosen)
        if state.get("world_size", 1) != ctx.world:
            raise CheckpointError(
                f"checkpoint {path} was written by {state.get('world_size', 1)} process(es), this "
                f"run has {ctx.world}; resume with the same number of processes"
            )
        changed = config.changes_from(state["config"])
        if changed:
            raise CheckpointError(
                f"checkpoint {path} was written with other settings ({'; '.join(changed)}); "
                f"resume with the same ones, or continue the saved run with: seqis train --resume {out}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        if miner is not None:
            miner.load_state_dict(state["miner"])
        torch.set_rng_state(state["torch_rng"][ctx.rank])
        cuda_rng = state["cuda_rng"][ctx.rank]
        if cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_rng)
        start_step, clock, rows, skipped = state["step"], state["clock"], state["metrics"], state["skipped"]
        clipped_steps, recent_clipped = state["clipped_steps"], state["recent_clipped"]
        time_to_target, init_sha, recent_loss = (
            state["time_to_target"],
            state["init_sha"],
            state["recent_loss"],
        )
        if ctx.is_main:
            print(f"resuming from {path} at step {start_step}")
    metrics = MetricsLog(out, rows, tensorboard=config.tensorboard, write=ctx.is_main)

    def log_eval(step: int, train_loss: float | None, since: int, clipped: int) -> float:
        val, val_acc = evaluate(model, data, data.val_idx, device, ctx=ctx)
        train_eval, _ = evaluate(model, data, train_eval_idx, device, ctx=ctx)
        metrics.log(
            {
                "step": step,
                "wall_time_s": round(clock, 4),
                "train_loss": train_loss,
                "val_loss": val,
                "val_acc": val_acc,
                "train_eval_loss": train_eval,
                "is_active": int(getattr(sampler, "active", False)),
                "mining_time_s": miner.mining_time_s if miner else 0.0,
                "lr": optimizer.param_groups[0]["lr"],
                "clipped_share": clipped / since if since else None,
                **(miner.noise_figures() if miner else {}),
            }
        )
        return val

    def snapshot(step: int) -> Path:
        rng = ctx.gather_object(torch.get_rng_state())
        cuda_rng = ctx.gather_object(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
        state = {
            "config": _jsonable(asdict(config)),
            "cuda_rng": cuda_rng,
            "world_size": ctx.world,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(),
            "miner": miner.state_dict() if miner else None,
            "torch_rng": rng,
            "step": step,
            "clock": clock,
            "metrics": metrics.rows,
            "skipped": skipped,
            "time_to_target": time_to_target,
            "init_sha": init_sha,
            "recent_loss": recent_loss,
            "clipped_steps": clipped_steps,
            "recent_clipped": recent_clipped,
        }
        path = save_checkpoint(out, step, state, config.keep_checkpoints) if ctx.is_main else None
        ctx.barrier()  # no rank runs ahead of a checkpoint it might have to resume from
        return path or checkpoint_dir(out) / f"step-{step:09d}.pt"

    val_loss = rows[-1]["val_loss"] if rows else None
    if not resume:  # curves start at the initial loss; evaluation draws no random numbers
        val_loss = log_eval(0, None, 0, 0)
    max_steps = config.steps or math.inf
    budget = config.time_budget or math.inf
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        disable=not (config.progress and ctx.is_main),
        desc=f"{config.sampler} {config.data}",
        unit="step",
        dynamic_ncols=True,
    )
    step, stopped_by = start_step, "steps"
    model.train()
    with _StopSignal() as stop:
        while True:
            if step >= max_steps:
                stopped_by = "steps"
                break
            if ctx.any(clock >= budget or stop.received is not None):  # every rank stops together
                stopped_by = "signal" if stop.received is not None else "time_budget"
                break
            tick = time.perf_counter()
            index, weights = sampler.draw()  # the global batch; this rank trains on its slice
            index, weights = ctx.shard(index), ctx.shard(weights)
            batch = data.batch(index).to(device)
            output = net(batch)
            loss = (weights.to(device) * output.loss).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # The output layer's batch gradient before clipping: the noise scale's |G_b|^2.
            head_sq = float(sum(p.grad.pow(2).sum() for p in model.head.parameters())) if miner else None
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            # Clipping a weighted gradient biases it; how often it happens is logged per sampler.
            clipped = bool(grad_norm > config.clip)
            clipped_steps += clipped
            recent_clipped += clipped
            if ctx.any(not (torch.isfinite(loss) and torch.isfinite(grad_norm))):
                if not config.skip_nonfinite:
                    path = snapshot(step)
                    raise SeqisError(
                        f"non-finite training loss at step {step}; last good state saved to "
                        f"{path} (lower --lr, or pass --skip-nonfinite)"
                    )
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
                if miner is not None:
                    factors = batch_factors(miner.config.factor, model, data, device, batch, output)
                    miner.harvest(batch.index, factors, step, weights, head_sq)
            if miner is not None:
                miner.after_step(step)
                for group in optimizer.param_groups:  # 1 unless --lr-scale is set
                    group["lr"] = config.lr * miner.lr_multiplier
            clock += time.perf_counter() - tick
            step += 1
            recent_loss.append(float(loss.detach()))  # weighted: unbiased under importance draws
            bar.update(1)

            if step % config.eval_every == 0:
                val_loss = log_eval(step, float(np.mean(recent_loss)), len(recent_loss), recent_clipped)
                recent_loss, recent_clipped = [], 0
                bar.set_postfix(val=f"{val_loss:.4f}", t=f"{clock:.0f}s")
                # Decided collectively: one rank leaving the loop would leave the others waiting.
                if ctx.any(config.target_loss is not None and val_loss <= config.target_loss):
                    time_to_target = time_to_target if time_to_target is not None else clock
                    stopped_by = "target_loss"
                    break
            if step % config.checkpoint_every == 0:
                snapshot(step)
    bar.close()
    if stopped_by == "signal":
        # A preemption's grace period is short: save first, skip the closing validation.
        ckpt = snapshot(step)
    elif metrics.rows[-1]["step"] != step:
        val_loss = log_eval(
            step, float(np.mean(recent_loss)) if recent_loss else None, len(recent_loss), recent_clipped
        )
    metrics.close()
    if stopped_by != "signal":
        ckpt = snapshot(step)
    rank_speeds = ctx.gather_object(step / clock if clock > 0 else None)
    rank_shas = ctx.gather_object(params_sha256(model))
    summary = {
        "data": config.data,
        "model": config.model.cell,
        "sampler": config.sampler,
        "seed": config.seed,
        "steps": step,
        "wall_time_s": clock,
        "final_val_loss": val_loss,
        "target_loss": config.target_loss,
        "time_to_target_s": time_to_target,
        "stopped_by": stopped_by,
        "steps_per_s": rank_speeds[0],
        "device": str(device),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "world_size": ctx.world,
        "rank_steps_per_s": rank_speeds,
        "rank_params_sha256": rank_shas,
        "params_sha256": rank_shas[0],
        "init_params_sha256": init_sha,
        "skipped_nonfinite_steps": skipped,
        "clipped_share": clipped_steps / max(1, step),
        "final_val_acc": metrics.rows[-1]["val_acc"],
        "final_train_eval_loss": metrics.rows[-1]["train_eval_loss"],
        "data_stats": data.stats(),
        "config": _jsonable(asdict(config)),
        "checkpoint": str(ckpt),
    }
    if miner is not None:
        summary.update(miner.summary())
        summary["mining_share"] = miner.mining_time_s / clock if clock > 0 else 0.0
        summary["gain_history"] = miner.gain_history
        summary["noise_history"] = miner.noise_history
    else:
        summary.update(mining_time_s=0.0, mining_share=0.0, is_active_share=0.0)
    if ctx.is_main:
        write_json_atomic(out / "summary.json", summary)
    # No rank may tear its process group down while another is still finishing: with gloo, a
    # peer's closed connection aborts the slower rank (seen intermittently at the end of runs).
    ctx.barrier()
    if stopped_by == "signal":
        summary["signal"] = stop.received
    return summary


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
