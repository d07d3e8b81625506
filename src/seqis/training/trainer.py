"""The training loop: one readable example of an importance-sampled PyTorch loop.

Per step: draw indices and weights, forward, weight the per-sequence losses, backward,
clip, step, harvest factors from the same forward pass, let the miner refresh and
switch. ``wall_time_s`` counts exactly that work (mining included) and excludes
validation and checkpoint writes, which are measurement and the same for every sampler.

A run's state lives in objects with ``state_dict``: the model, the optimizer, the sampler,
the miner, the metrics and :class:`~seqis.training.state.RunState`; a checkpoint is theirs.
"""

from __future__ import annotations

import gc
import json
import math
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from seqis.data.base import CLASSIFY, SequenceData
from seqis.data.registry import load_data
from seqis.distributed import DistContext
from seqis.errors import CheckpointError, ConfigError, SeqisError
from seqis.importance.factors import FACTORS, OUTPUT_LAYER, WHOLE_MODEL, PendingFactors
from seqis.importance.lr_scale import LrReplay
from seqis.models.rnn import ModelOutput, RecurrentModel
from seqis.options import PLAN
from seqis.options import name as option_name
from seqis.plan import Plan
from seqis.sampling.sampler import padding
from seqis.training.checkpoint import (
    checkpoint_dir,
    load_checkpoint,
    load_latest,
    params_sha256,
    save_checkpoint,
    write_json_atomic,
)
from seqis.training.config import TrainConfig
from seqis.training.metrics import MetricsLog
from seqis.training.schedule import Schedule
from seqis.training.state import RunState
from seqis.training.wiring import sampling_for

__all__ = ["TrainConfig", "train", "build", "evaluate"]

# What gloo and NCCL say when a peer is gone or stalled; any other RuntimeError (out of memory,
# a shape mismatch) is reported as itself, even when it mentions the backend.
_COLLECTIVE_FAILURE = re.compile(
    r"timed out|timeout|connection (closed|reset|refused)|closed by peer|peer .*(closed|reset)"
    r"|broken pipe|nccl.*(abort|watchdog)",
    re.I,
)


def resolve_device(name: str) -> torch.device:
    """The device a (validated) ``TrainConfig.device`` names on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        flag = option_name(TrainConfig, "device")
        raise ConfigError(f"{flag} {name} was asked for, but CUDA is not available here")
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

    Sequences are taken in length order (the order does not matter to a mean, padding does).
    Under ``torch.distributed`` each rank evaluates every ``world``-th sequence and the sums
    are all-reduced, so every rank gets the same figures (and the same stop decision).
    """
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    index = index[torch.argsort(data.lengths[index], stable=True)]
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
    factor = FACTORS[kind]

    def score_fn(index: torch.Tensor) -> torch.Tensor:
        batch = data.batch(index).to(device)
        was_training = model.training
        model.eval()
        try:
            return factor.score(model, batch)
        finally:
            model.train(was_training)

    return score_fn


def batch_factors(kind: str, model, batch, output: ModelOutput) -> Callable[[int], Tensor | PendingFactors]:
    """``k -> factors`` of the first k sequences of the batch just trained, from its forward pass
    (a classifier's fim factors on the CPU pending: the miner computes them with other steps')."""
    factor = FACTORS[kind]
    return lambda k: factor.harvest(model, batch, output, k)


def build(config: TrainConfig, data: SequenceData | None = None, ctx: DistContext | None = None):
    """Data, device, model, optimizer, sampler and miner for ``config``, seeded (sampler and miner
    over the run's plan)."""
    ctx = ctx or DistContext()
    data = data or load_data(config.data, config.data_options)
    device = resolve_device(config.device)
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
    torch.manual_seed(config.seed)  # same initial parameters for every sampler and rank
    model = RecurrentModel(data.task, data.input_size, data.num_outputs, config.model, tokens=data.tokens)
    model = model.to(device)
    if ctx.enabled:
        torch.manual_seed(config.seed * 1_000_003 + ctx.rank)  # per-rank dropout noise
    optimizer = make_optimizer(config, model)
    # The trainer draws the global batch and trains on its slice (ctx.shard); the miner gathers.
    sampler, miner = sampling_for(
        config.mining,
        data.train_idx,
        config.batch_size * ctx.world,
        seed=config.seed,
        score_fn=forward_scorer(config.mining.factor, model, data, device),
        lengths=data.lengths,
        ctx=ctx,
        plan=config.plan(len(data.train_idx), ctx.world),
    )
    return data, device, model, optimizer, sampler, miner


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params, decay = model.parameters(), config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=decay)


def train(config: TrainConfig, data: SequenceData | None = None, resume: bool = False) -> dict:
    """Train as ``config`` says; write metrics, checkpoints and ``summary.json``; return it."""
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    ctx = DistContext.from_env(config.device, config.dist_timeout)
    try:
        run = Run(config, data, ctx)
        if resume:
            run.restore()
        return run.train()
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


# Random batches padding this much over what length-sorted pools would: train and diagnose name
# --batching bucket (not a default: docs/method.md says why).
BUCKETS_PAY_AT = 1.2


def length_lever(config: TrainConfig, lengths: Tensor) -> dict[str, float]:
    """Padded over real positions of this run's batches cut at random and cut from length-sorted
    pools (:func:`~seqis.sampling.sampler.padding`); both 1 for sequences of one length."""
    if int(lengths.min()) == int(lengths.max()):
        return {"random": 1.0, "bucket": 1.0}
    return {
        "random": padding(lengths, config.batch_size, seed=config.seed),
        "bucket": padding(lengths, config.batch_size, config.mining.bucket_pool, seed=config.seed),
    }


def buckets_could_help(config: TrainConfig) -> bool:
    """Random, unpacked batches: the only ones ``--batching bucket`` could make cheaper."""
    return config.mining.batching == "random" and not config.model.pack


def buckets_pay(lever: dict[str, float]) -> bool:
    return lever["random"] >= BUCKETS_PAY_AT * lever["bucket"]


def replayed_multiplier(run_dir: Path, plan: Plan | None = None, lr: float | None = None) -> LrReplay:
    """The --lr-scale multiplier of the finished run in ``run_dir``, replayed from its decisions;
    refused when that run planned other steps than ``plan`` (its multipliers would fall elsewhere)
    or peaked at another learning rate than ``lr`` (the control replays the very same rate)."""
    flag = option_name(TrainConfig, "lr_replay")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{flag} {run_dir}: no finished run there (its summary.json)") from None
    source = TrainConfig.from_dict(summary["config"])
    world = summary.get("world_size", 1)
    source_plan = source.plan(summary["data_stats"]["train"], world)
    if plan is not None and source_plan.planned_steps != plan.planned_steps:
        raise ConfigError(
            f"{flag} {run_dir}: that run planned {source_plan.planned_steps} steps, this one plans "
            f"{plan.planned_steps}: replay a run of the same plan, budget and number of processes"
        )
    if lr is not None and source.lr != lr:
        raise ConfigError(
            f"{flag} {run_dir}: that run peaked at learning rate {source.lr:g}, this one at {lr:g}: "
            "the control replays the same rate"
        )
    tail = source_plan.tail_start(source.mining.anneal)
    tripped = (summary.get("validation_watch") or {}).get("tripped_at")
    ends = [end for end in (tail, tripped) if end is not None]
    mining = source.mining
    decisions = summary.get("noise_history", [])
    return LrReplay(mining.lr_scale, mining.lr_scale_max, decisions, min(ends) if ends else None)


class Run:
    """One training run: its parts, built and seeded from the configuration, and its loop."""

    def __init__(self, config: TrainConfig, data: SequenceData | None, ctx: DistContext):
        self.config, self.ctx, self.out = config, ctx, Path(config.out)
        if ctx.is_main:
            ensure_writable(self.out)
        self.data, self.device, self.model, self.optimizer, self.sampler, self.miner = build(
            config, data, ctx
        )
        self.net = DistributedDataParallel(self.model) if ctx.enabled else self.model
        self.state = RunState(init_sha=params_sha256(self.model))
        self.train_eval_idx = train_eval_subset(self.data, config.train_eval_size)
        self.plan: Plan = config.plan(len(self.data.train_idx), ctx.world)
        self.schedule = Schedule.over(self.plan, config.schedule, config.warmup, config.lr_floor)
        self.lr_replay: LrReplay | None = None  # --lr-replay: from a checkpoint, else read as training starts
        if self.miner is not None and self.plan.planned_steps:  # sweeps are priced by the rate ahead
            self.miner.rate_at = self._rate_at
        self.metrics_rows: list[dict] = []
        self.resumed = False
        self.stop: _StopSignal | None = None

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint: every part's ``state_dict``, and every rank's random number state."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "config": self.config.to_dict(),
            "world_size": self.ctx.world,
            "run": self.state.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "miner": self.miner.state_dict() if self.miner else None,
            "lr_replay": self.lr_replay.state_dict() if self.lr_replay else None,
            "metrics": self.metrics.rows,
            "torch_rng": self.ctx.gather_object(torch.get_rng_state()),
            "cuda_rng": self.ctx.gather_object(cuda),
        }

    def restore(self, run_dir: Path | None = None, inspect_only: bool = False) -> None:
        """Continue from the newest good checkpoint (of ``run_dir``, default this run's folder);
        every setting that trains must match, and the plan too wherever the run depends on it.
        ``inspect_only`` (``seqis diagnose``): a checkpoint of any number of processes, rank 0's
        state, for looking at, not for training on."""
        # Rank 0 chooses, every rank loads that file: a lagging or corrupted copy on one rank
        # fails loudly instead of letting the ranks diverge.
        source = Path(run_dir) if run_dir is not None else self.out
        chosen = self.ctx.broadcast_object(str(load_latest(source)[1]) if self.ctx.is_main else None)
        path = Path(chosen)
        saved = load_checkpoint(path)
        if saved.get("world_size", 1) != self.ctx.world and not inspect_only:
            raise CheckpointError(
                f"checkpoint {path} was written by {saved.get('world_size', 1)} process(es), this "
                f"run has {self.ctx.world}; resume with the same number of processes"
            )
        self._check_settings(saved["config"], path)
        try:
            self._load(saved, rank=0 if inspect_only else self.ctx.rank)
        except ValueError as e:  # a sampler of another size: another training set
            raise CheckpointError(f"checkpoint {path} does not fit this run: {e}") from None
        self.resumed = True
        if self.ctx.is_main and self.config.progress:
            print(f"resuming from {path} at step {self.state.step}")

    def _load(self, saved: dict, rank: int) -> None:
        """Every part's state from a checkpoint, with ``rank``'s random number generators."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.sampler.load_state_dict(saved["sampler"])
        if self.miner is not None:
            self.miner.load_state_dict(saved["miner"])
        if self.config.lr_replay and saved.get("lr_replay"):
            self.lr_replay = LrReplay.from_state(saved["lr_replay"])
        self.state.load_state_dict(saved["run"])
        self.metrics_rows = saved["metrics"]
        torch.set_rng_state(saved["torch_rng"][rank])
        cuda_rng = saved["cuda_rng"][rank]
        if cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_rng)

    def _check_settings(self, saved: dict, path: Path) -> None:
        """Refuse a resume whose settings would change what the saved run trains."""
        changed = self.config.changes_from(saved)
        if changed:
            raise CheckpointError(
                f"checkpoint {path} was written with other settings ({'; '.join(changed)}); resume "
                f"with the same ones, or continue the saved run with: seqis train --resume {self.out}"
            )
        replanned = self.config.changes_from(saved, rules=(PLAN,))
        reason = self.config.plan_dependence()
        if replanned and reason is not None:
            raise CheckpointError(
                f"checkpoint {path} was planned otherwise ({'; '.join(replanned)}), and {reason}: "
                "resuming would re-plan the rest of the run. Continue it to its planned end with "
                f"'seqis train --resume {self.out}' (and --stop-at K for segments), or train the new "
                "plan from the start"
            )

    def snapshot(self) -> Path:
        """Write a checkpoint of now (rank 0), with every rank in step."""
        step = self.state.step
        state = self.state_dict()
        path = (
            save_checkpoint(self.out, step, state, self.config.keep_checkpoints) if self.ctx.is_main else None
        )
        self.ctx.barrier()  # no rank runs ahead of a checkpoint it might have to resume from
        return path or checkpoint_dir(self.out) / f"step-{step:09d}.pt"

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> dict:
        """Train until the steps, the time budget, the target loss or a signal stop it."""
        cfg, ctx = self.config, self.ctx
        if cfg.lr_replay and self.lr_replay is None:  # a fresh run (or a checkpoint from before replays)
            self.lr_replay = replayed_multiplier(Path(cfg.lr_replay), self.plan, cfg.lr)
        if ctx.is_main:  # only now: a refused resume leaves the saved run's files as they were
            # A summary from an earlier segment must not look like this run's result if it fails.
            (self.out / "summary.json").unlink(missing_ok=True)
            write_json_atomic(self.out / "config.json", cfg.to_dict())
        self.metrics = MetricsLog(self.out, self.metrics_rows, tensorboard=cfg.tensorboard, write=ctx.is_main)
        if not self.resumed:  # curves start at the initial loss; evaluation draws no random numbers
            tick = time.perf_counter()
            self.log_eval()
            self._say_what_the_budget_leaves_out(time.perf_counter() - tick)
            self._say_what_padding_costs()
        bar = tqdm(
            total=cfg.planned_steps,
            initial=self.state.step,
            disable=not (cfg.progress and ctx.is_main),
            desc=f"{cfg.sampler_label} {cfg.data}",
            unit="step",
            dynamic_ncols=True,
        )
        self.model.train()
        with _StopSignal() as self.stop:
            stopped_by = self.loop(bar)
        bar.close()
        return self.finish(stopped_by)

    def _say_what_the_budget_leaves_out(self, seconds: float) -> None:
        """--time-budget counts training only: say up front what else the user will wait for."""
        cfg = self.config
        if cfg.time_budget is None or not (cfg.progress and self.ctx.is_main):
            return
        count = len(self.data.val_idx) + len(self.train_eval_idx)
        print(
            f"--time-budget {cfg.time_budget:g} s counts training only; each validation ({count} sequences, "
            f"every {cfg.eval_every} steps) took {seconds:.1f} s here and is not counted "
            "(--val-size and --train-eval-size shorten it)",
            file=sys.stderr,
        )

    def _say_what_padding_costs(self) -> None:
        """Random batches of variable-length sequences pay for their padding: say so once, with
        what ``--batching bucket`` would pay instead (the default stays random: docs/method.md)."""
        cfg = self.config
        if not (buckets_could_help(cfg) and cfg.progress and self.ctx.is_main):
            return  # nothing to say: spare the start the padding's measurement
        lever = length_lever(cfg, self.data.lengths[self.data.train_idx])
        if buckets_pay(lever):
            print(
                f"random batches of {cfg.batch_size} carry {lever['random']:.2f} padded positions per real "
                f"one here (length-sorted pools: {lever['bucket']:.2f}); --batching bucket makes a step "
                "cheaper",
                file=sys.stderr,
            )

    def loop(self, bar: tqdm) -> str:
        """Steps, validations and checkpoints; returns what stopped the run."""
        cfg, state = self.config, self.state
        budget = cfg.time_budget or math.inf
        while True:
            if self.plan.done(state.step, self.sampler.epochs_done_exact):
                return "steps" if cfg.steps is not None else "epochs"
            if cfg.stop_at is not None and state.step >= cfg.stop_at:
                return "stop_at"
            if self.ctx.any(state.clock >= budget or self.stop.received is not None):  # ranks stop together
                return "signal" if self.stop.received is not None else "time_budget"
            self.train_step()
            bar.update(1)
            if state.step % cfg.eval_every == 0:
                bar.set_postfix_str("validating", refresh=True)
                val_loss = self.log_eval()
                bar.set_postfix(val=f"{val_loss:.4f}", t=f"{state.clock:.0f}s")
                # Decided collectively: one rank leaving the loop would leave the others waiting.
                if self.ctx.any(cfg.target_loss is not None and val_loss <= cfg.target_loss):
                    state.time_to_target = (
                        state.time_to_target if state.time_to_target is not None else state.clock
                    )
                    return "target_loss"
            if state.step % cfg.checkpoint_every == 0:
                self.snapshot()

    def planned_fraction(self) -> float:
        """How much of the plan (steps or epochs) is done; 0 without a plan."""
        return self.plan.progress(self.state.step, self.sampler.epochs_done)

    def _rate_at(self, step: int) -> float:
        """The schedule's share of the peak rate at ``step`` (an epoch plan read in steps)."""
        return self.schedule.factor(min(1.0, step / self.plan.planned_steps))

    def learning_rate(self) -> float:
        """The learning rate of the next step: the schedule's share of the peak, times --lr-scale's
        (or the multiplier of the run --lr-replay names)."""
        multiplier = self.miner.lr_multiplier if self.miner is not None else 1.0  # 1 unless --lr-scale
        if self.lr_replay is not None:
            multiplier = self.lr_replay.at(self.state.step)
        return self.config.lr * self.schedule.factor(self.planned_fraction()) * multiplier

    def train_step(self) -> None:
        """Draw, forward, weigh, backward, clip, step; then harvest, refresh and switch."""
        cfg, miner = self.config, self.miner
        tick = time.perf_counter()
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        index, weights = self.sampler.draw()  # the global batch; this rank trains on its slice
        index, weights = self.ctx.shard(index), self.ctx.shard(weights)
        batch = self.data.batch(index)
        real = int(batch.lengths.sum())  # packed (--pack), the RNN runs over the real positions only
        self.state.count_positions(real, real if self.config.model.pack else batch.mask.numel())
        batch = batch.to(self.device)
        output = self.net(batch)
        loss = (weights.to(self.device) * output.loss).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        head_sq = self._head_grad_sq()  # read before clipping: the noise scale's |G_b|^2
        if cfg.clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.model.parameters() if p.grad is not None]
            )
        # Clipping a weighted gradient biases it; how often it happens is logged per sampler.
        clipped = cfg.clip > 0 and bool(grad_norm > cfg.clip)
        if self.ctx.any(not (torch.isfinite(loss) and torch.isfinite(grad_norm))):
            self._nonfinite_step()
        else:
            self.optimizer.step()
            if miner is not None:
                factors = batch_factors(miner.config.factor, self.model, batch, output)
                whole = FACTORS[miner.config.factor].gradient_of == WHOLE_MODEL
                grad_sq = float(grad_norm) ** 2 if whole else head_sq
                miner.harvest(batch.index, factors, self.state.step, weights, grad_sq)
        if miner is not None:
            miner.after_step(self.state.step)
        self.state.end_step(float(loss.detach()), clipped, time.perf_counter() - tick)

    def _head_grad_sq(self) -> torch.Tensor | None:
        """|G_b|^2 of the output layer, when the noise scale is estimated from output-layer factors
        (a 0-d tensor on the device: the miner reads it later, so the step need not wait for it)."""
        miner = self.miner
        if miner is None or miner.noise is None or FACTORS[miner.config.factor].gradient_of != OUTPUT_LAYER:
            return None
        return torch.stack([p.grad.detach().float().pow(2).sum() for p in self.model.head.parameters()]).sum()

    def _nonfinite_step(self) -> None:
        if not self.config.skip_nonfinite:
            path = self.snapshot()
            raise SeqisError(
                f"non-finite training loss at step {self.state.step}; last good state saved to "
                f"{path} (lower --lr, or pass --skip-nonfinite)"
            )
        self.state.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)

    def log_eval(self) -> float:
        """Validate, log a metrics row (with the training window since the last one); the val loss."""
        train_loss, steps, clipped = self.state.take_window()
        val, val_acc = evaluate(self.model, self.data, self.data.val_idx, self.device, ctx=self.ctx)
        train_eval, _ = evaluate(self.model, self.data, self.train_eval_idx, self.device, ctx=self.ctx)
        miner = self.miner
        self.metrics.log(
            {
                "step": self.state.step,
                "wall_time_s": round(self.state.clock, 4),
                "train_loss": train_loss,
                "val_loss": val,
                "val_acc": val_acc,
                "train_eval_loss": train_eval,
                "is_active": int(miner is not None and self.sampler.active),
                "mining_time_s": miner.mining_time_s if miner else 0.0,
                # the latest step's rate; before the first step, the rate it will use
                "lr": self.optimizer.param_groups[0]["lr"] if self.state.step else self.learning_rate(),
                "clipped_share": clipped / steps if steps else None,
                **(miner.noise_figures() if miner else {}),
            }
        )
        if miner is not None:
            miner.observe_validation(self.state.step, val, train_eval, every_rank=True)
        return val

    # -- the end -----------------------------------------------------------------------------
    def finish(self, stopped_by: str) -> dict:
        """Closing validation and checkpoint, ``summary.json``; the summary."""
        if stopped_by == "signal":  # a preemption's grace period is short: save first, no validation
            checkpoint = self.snapshot()
        elif self.metrics.rows[-1]["step"] != self.state.step:
            self.log_eval()
        self.metrics.close()
        if stopped_by != "signal":
            checkpoint = self.snapshot()
        summary = self.summary(stopped_by, checkpoint)
        if self.ctx.is_main:
            write_json_atomic(self.out / "summary.json", summary)
        # No rank may tear its process group down while another is still finishing: with gloo, a
        # peer's closed connection aborts the slower rank (seen intermittently at the end of runs).
        self.ctx.barrier()
        if stopped_by == "signal":
            summary["signal"] = self.stop.received
        return summary

    def summary(self, stopped_by: str, checkpoint: Path) -> dict:
        cfg, state, ctx, last = self.config, self.state, self.ctx, self.metrics.rows[-1]
        rank_speeds = ctx.gather_object(state.step / state.clock if state.clock > 0 else None)
        rank_shas = ctx.gather_object(params_sha256(self.model))
        summary = {
            "data": cfg.data,
            "model": cfg.model.cell,
            "sampler": cfg.sampler_label,
            "scheme": cfg.mining.sampler,
            "factor": cfg.mining.factor if self.miner else None,
            "seed": cfg.seed,
            "steps": state.step,
            "wall_time_s": state.clock,
            "final_val_loss": last["val_loss"],
            "target_loss": cfg.target_loss,
            "time_to_target_s": state.time_to_target,
            "stopped_by": stopped_by,
            "steps_per_s": rank_speeds[0],
            "device": str(self.device),
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "world_size": ctx.world,
            "rank_steps_per_s": rank_speeds,
            "rank_params_sha256": rank_shas,
            "params_sha256": rank_shas[0],
            "init_params_sha256": state.init_sha,
            "skipped_nonfinite_steps": state.skipped,
            # what a step paid for: padded positions over real ones, and sequences trained a second
            "padded_over_real": state.padded_positions / max(1, state.real_positions),
            "sequences_per_s": state.step * cfg.batch_size * ctx.world / max(state.clock, 1e-9),
            "clipped_share": state.clipped_steps / max(1, state.step),
            "final_val_acc": last["val_acc"],
            "final_train_eval_loss": last["train_eval_loss"],
            "data_stats": self.data.stats(),
            "config": cfg.to_dict(),
            "checkpoint": str(checkpoint),
        }
        if self.miner is not None:
            summary.update(self.miner.summary())
            summary["mining_share"] = self.miner.mining_time_s / state.clock if state.clock > 0 else 0.0
        else:
            summary.update(mining_time_s=0.0, mining_share=0.0, is_active_share=0.0)
        return summary
