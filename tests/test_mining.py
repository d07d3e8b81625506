"""The switch and the reported ceiling read fresh, weight-corrected factors, never the stale store."""

import copy

import numpy as np
import pytest
import torch

from seqis.data.registry import load_data
from seqis.distributed import DistContext
from seqis.importance import factors
from seqis.importance.config import MiningConfig
from seqis.importance.mining import Miner
from seqis.importance.switch import delivered_gain, estimated_gain, weighted_ceiling
from seqis.plan import Plan
from seqis.sampling.sampler import ImportanceSampler, PruningSampler


@pytest.fixture
def miner():
    data = load_data("digits")
    sampler = ImportanceSampler(data.train_idx, batch_size=64, smoothing=0.2, seed=0)
    config = MiningConfig(factor="loss", refresh_fraction=0.0, check_every=50, warmup_steps=50)
    return Miner(sampler, config, lengths=data.lengths)


def _train(miner, steps, fresh, start=0):
    """Draw, harvest ``fresh(index, step)`` with the draw's weights, let the miner decide."""
    for step in range(start, start + steps):
        index, weights = miner.sampler.draw()
        miner.harvest(index, fresh(index, step), step, weights)
        miner.after_step(step)


def test_on_state_reads_the_fresh_harvest_not_the_store(miner):
    rng = np.random.default_rng(0)
    spread = torch.from_numpy(rng.uniform(0.95, 1.05, 2000)).float()  # true gain ~1.001

    def fresh(index, step):  # sequences hardly differ, but every factor falls as the model learns
        return spread[index] * float(np.exp(-step / 15))

    miner.sampler.record(miner.sampler.indices, fresh(miner.sampler.indices, 0), 0)
    miner.sampler.active = True
    _train(miner, 49, fresh)
    stored = miner.sampler.factors.copy()
    assert estimated_gain(stored, 0.2) > 1.2  # the store reads the fall of the loss as spread
    _train(miner, 1, fresh, start=49)  # the first decision
    decision = miner.switch.history[-1]
    step, gain, active = decision.step, decision.gain, decision.active
    assert step == 50 and gain < 1.05 and not active
    assert miner.summary()["factor_ceiling"] is None  # no fresh sample right after a switch
    _train(miner, 8, fresh, start=50)
    summary = miner.summary()
    assert summary["factor_ceiling"] < 1.01 < 1.2 < estimated_gain(stored, 0.0)
    assert summary["factor_ceiling_sample"] == {"sequences": 16, "first_step": 52, "last_step": 56}


def test_switch_clears_the_harvest_sample_and_skips_o_n_work_while_off(miner, monkeypatch):
    calls = []
    monkeypatch.setattr(miner.sampler, "rebuild", lambda: calls.append("rebuild"))
    heavy = torch.linspace(0.01, 10.0, 2000) ** 3  # a heavy tail: IS pays

    _train(miner, 50, lambda index, step: heavy[index])
    assert miner.sampler.active and miner.switch.history[-1].gain > 1.2
    assert len(miner._harvest_sample()) == 0  # the uniform sample is gone after the switch
    _train(miner, 20, lambda index, step: heavy[index], start=50)
    miner.flush()
    sample = miner._harvest_sample()
    steps, w = sample.steps, sample.weights
    assert steps.min() >= 50 and (w != 1).any()  # only importance-drawn harvests, with weights

    off = ImportanceSampler(miner.sampler.indices, batch_size=64, smoothing=0.2, seed=0)
    monkeypatch.setattr(off, "rebuild", lambda: calls.append("rebuild"))
    calls.clear()
    flat = Miner(off, MiningConfig(factor="loss", refresh_fraction=0.0))
    _train(flat, 400, lambda index, step: torch.ones(len(index)))
    assert not off.active and len(flat.switch.history) == 8 and calls == []  # no O(N) rebuilds


def test_delivered_gain_and_weighted_ceiling_are_unbiased():
    rng = np.random.default_rng(1)
    s = rng.lognormal(0.0, 1.0, 5000)
    sampler = ImportanceSampler(range(len(s)), batch_size=4096, smoothing=0.2, seed=2)
    sampler.record(torch.arange(len(s)), torch.from_numpy(s))
    sampler.active = True
    draws = [sampler.draw() for _ in range(25)]
    idx = torch.cat([d[0] for d in draws]).numpy()
    w = torch.cat([d[1] for d in draws]).double().numpy()
    # with fresh factors, the cut the distribution delivers is the gain the switch predicts
    assert delivered_gain(s[idx], w) == pytest.approx(estimated_gain(s, 0.2), rel=0.03)
    assert weighted_ceiling(s[idx], w) == pytest.approx(estimated_gain(s, 0.0), rel=0.05)


@pytest.mark.parametrize(
    "noise_scale, sigma, expect_on",
    [
        (0.01, 0.8, False),  # a large variance cut, but gradient noise does not limit progress
        (300.0, 0.35, True),  # a cut below min_gain, but noise dominates: it pays
    ],
)
def test_switch_weighs_predicted_step_gain_against_mining_cost(noise_scale, sigma, expect_on):
    from seqis.importance.noise import predicted_step_gain
    from seqis.importance.switch import estimated_gain

    n, b = 2000, 64
    rng = np.random.default_rng(0)
    factors = rng.lognormal(0.0, sigma, n)
    gain = estimated_gain(factors, 0.2)
    assert (gain >= 1.2) != expect_on  # the old rule alone would decide the other way
    sampler = ImportanceSampler(range(n), batch_size=b, smoothing=0.2, seed=0)
    miner = Miner(sampler, MiningConfig())
    second_moment = float(np.mean(factors**2))
    true_g2 = second_moment / (1.0 + noise_scale)  # |G|^2 for this noise scale
    batch_sq = true_g2 + (second_moment - true_g2) / b  # E|G_b|^2
    for step in range(300):
        index = torch.from_numpy(rng.integers(0, n, b))
        miner.harvest(index, torch.from_numpy(factors[index.numpy()]), step, None, batch_sq)
        miner.after_step(step)
    assert miner.noise.noise_scale == pytest.approx(noise_scale, rel=0.6, abs=0.05)  # a noisy estimate
    predicted = predicted_step_gain(miner.noise.noise_scale, gain, b)
    assert (predicted >= 1 + miner.switch.cost) == expect_on
    assert sampler.active == expect_on


def test_anneal_draws_the_last_share_of_planned_steps_uniformly():
    sampler = ImportanceSampler(range(500), batch_size=16, smoothing=0.2, seed=0)
    miner = Miner(sampler, MiningConfig(always_on=True, anneal=0.25), plan=Plan(500, 16, steps=200))
    active = []
    for step in range(200):
        index = torch.randint(0, 500, (16,))
        miner.harvest(index, torch.rand(16) + 0.1, step)
        miner.after_step(step)
        active.append(sampler.active)
    assert miner.uniform_from == 150
    assert all(active[49:149]) and not any(active[149:]) and not any(active[:49])


def test_held_harvests_reach_sampler_switch_and_noise_as_step_by_step_ones():
    heavy = torch.linspace(0.01, 10.0, 2000) ** 3
    config = MiningConfig(factor="fim", refresh_fraction=0.0, check_every=20, warmup_steps=20)
    miners = [
        Miner(ImportanceSampler(range(2000), batch_size=64, smoothing=0.2, seed=0), config, record_every=k)
        for k in (1, 8)
    ]
    for miner in miners:
        rng = np.random.default_rng(3)
        for step in range(63):  # the switch turns on at step 20; 63 leaves harvests held
            index = torch.from_numpy(rng.integers(0, 2000, 64))  # the same batches for both
            weights = torch.from_numpy(rng.uniform(0.5, 2.0, 64)) if miner.sampler.active else None
            grad_sq = torch.tensor(float(rng.uniform(1.0, 2.0)))
            miner.harvest(index, heavy[index] * (1 + step / 100), step, weights, grad_sq)
            miner.after_step(step)
    one, held = miners
    assert held._pending and not one._pending
    held.flush()
    assert one.sampler.active and held.sampler.active
    np.testing.assert_array_equal(one.sampler.factors, held.sampler.factors)
    np.testing.assert_array_equal(one.sampler.scored_step, held.sampler.scored_step)
    np.testing.assert_array_equal(one._harvest_sample().factors, held._harvest_sample().factors)
    assert one.noise_figures() == held.noise_figures() and one.noise.batch_sq == held.noise.batch_sq


def test_pending_classifier_factors_reach_the_sampler_and_a_checkpoint_as_computed_ones():
    """Factors held as outputs (computed at the flush) land as eager ones do, and a checkpoint
    taken between flushes holds factors, so a resumed run goes on identically."""
    n, b, classes, hidden = 300, 16, 5, 8
    rng = torch.Generator().manual_seed(0)
    logits, states = torch.randn(n, 1, classes, generator=rng), torch.randn(n, 1, hidden, generator=rng)
    targets = torch.randint(0, classes, (n, 1), generator=rng)
    config = MiningConfig(factor="fim", refresh_fraction=0.0, always_on=True)

    def run(miner: Miner, steps: range, pending: bool) -> None:
        for step in steps:
            index = torch.arange(step * b, (step + 1) * b) % n
            parts = logits[index], states[index], targets[index]
            given = factors.harvest_fim(*parts) if pending else factors.fim_factors(*parts)
            miner.harvest(index, given, step, torch.ones(b), torch.tensor(1.5))
            miner.after_step(step)

    def fresh() -> Miner:
        sampler = ImportanceSampler(range(n), batch_size=b, smoothing=0.2, seed=0)
        sampler.active = True
        return Miner(sampler, config)

    eager, held = fresh(), fresh()
    run(eager, range(13), pending=False)
    run(held, range(5), pending=True)
    assert any(isinstance(h.factors, factors.PendingFactors) for h in held._pending)
    state = copy.deepcopy({"miner": held.state_dict(), "sampler": held.sampler.state_dict()})
    assert all(isinstance(row["factors"], torch.Tensor) for row in state["miner"]["pending"])
    resumed = fresh()
    resumed.load_state_dict(state["miner"])
    resumed.sampler.load_state_dict(state["sampler"])
    run(resumed, range(5, 13), pending=True)
    for miner in (eager, resumed):
        miner.flush()
    np.testing.assert_array_equal(eager.sampler.factors, resumed.sampler.factors)
    np.testing.assert_array_equal(eager._harvest_sample().factors, resumed._harvest_sample().factors)
    assert eager.noise_figures() == resumed.noise_figures()


def test_a_refresh_is_not_overwritten_by_older_held_harvests():
    sampler = ImportanceSampler(range(100), batch_size=8, smoothing=0.2, seed=0)
    sampler.record(torch.arange(100), torch.ones(100))
    sampler.active = True
    config = MiningConfig(always_on=True, refresh_fraction=1.0, refresh_batch=16)
    miner = Miner(sampler, config, score_fn=lambda index: torch.full((len(index),), 5.0))
    miner.harvest(torch.arange(8), torch.full((8,), 2.0), 0)  # held
    miner.after_step(0)  # credit 8 < 16: no refresh yet
    miner.harvest(torch.arange(8), torch.full((8,), 3.0), 1)
    miner.after_step(1)  # refresh of sequences 0..15 at step 1, after the held harvests
    assert sampler.factors[:16].tolist() == [5.0] * 16


def test_pruning_decides_each_epoch_from_every_factor_of_the_last():
    """Held harvests would leave the last batches of an epoch unscored when the next one is pruned."""
    n, b = 80, 8
    sampler = PruningSampler(range(n), b, ratio=0.5, seed=0)
    miner = Miner(sampler, MiningConfig(sampler="prune"))  # no decision within the epoch
    assert miner.record_every == 1
    sampler.active = True  # past the warm-up: every batch is harvested
    for step in range(n // b):  # epoch 0, whole
        index, weights = sampler.draw()
        miner.harvest(index, index.double() + 1.0, step, weights)
        miner.after_step(step)
    assert not np.isnan(sampler.factors).any()  # all in before epoch 1's pruning is decided
    sampler.draw()
    assert len(sampler._order) < n


class _PartnerTwiceAsNoisy(DistContext):
    """Rank 0 of two, whose partner's every value is twice this rank's (no process group)."""

    def __init__(self):
        super().__init__(rank=0, world=2)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, tensor])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * 3.0


def test_every_rank_feeds_the_noise_scale_the_ranks_mean_gradient_norm():
    """In a user's own DDP loop each rank's hooks see its own gradient; averaged, every rank's
    noise scale, and so its switch, is the same (it used to be each rank's own)."""
    config = MiningConfig(refresh_fraction=0.0, check_every=1000, warmup_steps=1000)
    rng = np.random.default_rng(0)
    grad_sq = rng.uniform(0.5, 1.5, 40)

    def noise_after(ctx: DistContext | None, scale: float) -> float:
        sampler = ImportanceSampler(range(200), batch_size=16, smoothing=0.2, seed=0)
        miner = Miner(sampler, config, ctx=ctx)
        for step, value in enumerate(grad_sq):
            index = torch.arange(16) + step % 10
            miner.harvest(index, torch.rand(16) + 0.1, step, None, torch.tensor(value * scale))
            miner.after_step(step)
        miner.flush()
        return miner.noise.batch_sq

    assert noise_after(_PartnerTwiceAsNoisy(), 1.0) == pytest.approx(noise_after(None, 1.5), rel=1e-12)


def test_a_held_harvest_saves_its_own_factors_not_the_outputs_they_come_from():
    from seqis.importance.mining import PendingHarvest

    logits, hidden, targets = torch.randn(6, 1, 4), torch.randn(6, 1, 3), torch.randint(0, 4, (6, 1))
    pending = factors.harvest_fim(logits, hidden, targets, count=4)
    held = PendingHarvest(7, True, 1.5, torch.arange(4), pending, torch.ones(4)).to_host()
    state = held.state_dict()
    assert torch.equal(state["factors"], factors.fim_factors(logits[:4], hidden[:4], targets[:4]))
    assert state["factors"].untyped_storage().size() == 4 * state["factors"].element_size()
