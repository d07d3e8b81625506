"""The switch, the noise scale and the miner's regimes: one rule, unbiased inputs, no flapping."""

import numpy as np
import pytest
import torch

from seqis.errors import ConfigError
from seqis.importance.config import MiningConfig
from seqis.importance.mining import Miner
from seqis.importance.noise import NoiseScale, covariance_cut
from seqis.importance.switch import (
    PoolSwitch,
    Switch,
    coverage_ahead,
    delivered_gain,
    estimated_gain,
    mining_cost,
    pool_gain,
    store_gain,
)
from seqis.options import spelled_as_flags
from seqis.plan import Plan
from seqis.sampling.sampler import ImportanceSampler, PresamplingSampler
from seqis.training.config import TrainConfig
from seqis.training.wiring import sampling_for


def _moments(rng, true_b: float, batch: int):
    """Factors with a known second moment, and the E|G_b|^2 a uniform batch of them has at noise scale B."""
    s = rng.lognormal(0.0, 0.8, 4000)
    m_u = float(np.mean(s**2))
    g2 = m_u / (1.0 + true_b)  # tr(Sigma) / |G|^2 = (m_u - |G|^2) / |G|^2 = B
    return s, g2 + (m_u - g2) / batch


@pytest.mark.parametrize("true_b", [84.0, 200.0])
def test_noise_scale_is_unbiased_while_importance_sampling_is_off(true_b):
    s, batch_sq = _moments(np.random.default_rng(0), true_b, batch=64)
    noise = NoiseScale(batch_size=64)
    noise.observe_batch(batch_sq)
    # uniform draws: weights 1, and the switch's predicted gain only shapes the predicted cut
    noise.observe_samples(s, np.ones_like(s), 1.8)
    assert noise.noise_scale == pytest.approx(true_b, rel=1e-9)
    assert noise.variance_cut > 1.8  # a second-moment cut of 1.8 cuts the covariance by more


def test_predicted_cut_of_the_off_state_decides_as_the_true_noise_scale_would():
    s, batch_sq = _moments(np.random.default_rng(1), 200.0, batch=64)
    noise = NoiseScale(batch_size=64)
    noise.observe_batch(batch_sq)
    noise.observe_samples(s, np.ones_like(s), 1.12)
    switch = Switch(MiningConfig(), batch_size=64, cost=0.0683)
    assert switch.pays(1.12, noise.noise_scale) is switch.pays(1.12, 200.0) is True


def test_a_switch_restarts_the_batch_moments():
    noise = NoiseScale(batch_size=8)
    noise.observe_batch(1.0)
    noise.observe_samples(np.array([1.0, 2.0]), np.ones(2), 1.5)
    noise.regime_changed()
    assert noise.batch_sq is None and noise.drawn_sq is None and noise.noise_scale is None
    assert noise.uniform_sq is not None  # uniform's moment is unbiased in either regime


@pytest.mark.parametrize("sampler", ["loss", "gradnorm", "prune"])
def test_no_noise_scale_where_factors_are_not_gradient_norms(sampler):
    config = MiningConfig(sampler=sampler)
    _, miner = sampling_for(
        config, torch.arange(50), 8, score_fn=lambda i: torch.ones(len(i)), plan=Plan(50, 8, steps=100)
    )
    assert miner.noise is None
    assert "the switch judges the gain" in miner.summary()["noise_scale_basis"]


def test_presampling_pays_for_its_candidates_forward_passes():
    importance, presample = MiningConfig(sampler="fim"), MiningConfig(sampler="gradnorm")
    on = importance.scheme.make_switch(importance, 64, refreshes=True)
    off = presample.scheme.make_switch(presample, 64, refreshes=False)
    assert isinstance(off, PoolSwitch) and off.cost >= 1.0  # 3 candidates at 1/3 of a step each
    assert on.cost == pytest.approx(mining_cost(importance, refreshes=True))
    assert on.pays(1.5, 300.0) and not off.pays(1.5, 300.0)


def test_cost_aware_on_and_off_decisions_judge_the_same_distribution():
    rng = np.random.default_rng(3)
    n = 2000
    lengths = rng.integers(5, 200, n).astype(float)
    s = lengths**0.5 * rng.lognormal(0, 0.3, n)  # long sequences have larger factors
    predicted = estimated_gain(s, 0.2, lengths)
    sampler = ImportanceSampler(torch.arange(n), 256, smoothing=0.2, seed=0, costs=torch.tensor(lengths))
    sampler.record(torch.arange(n), torch.tensor(s))
    sampler.active = True
    draws = [sampler.draw() for _ in range(200)]
    idx = torch.cat([d[0] for d in draws]).numpy()
    w = torch.cat([d[1] for d in draws]).double().numpy()
    delivered = delivered_gain(s[idx], w, lengths[idx])
    assert delivered == pytest.approx(predicted, rel=0.05)
    # the gain of p ~ s (what the switch used to predict) is not what these draws deliver
    assert abs(estimated_gain(s, 0.2) - delivered) > 0.05


def test_annealed_tail_trains_at_the_users_learning_rate():
    sampler = ImportanceSampler(range(100), 10)
    config = MiningConfig(always_on=True, anneal=0.25, lr_scale="sqrt")
    miner = Miner(sampler, config, plan=Plan(100, 10, steps=200))
    miner.switch.lr.value = 1.115  # scaled up while importance sampling was on
    sampler.active = True
    for step in range(140, 160):
        miner.after_step(step)
    assert not sampler.active and miner.lr_multiplier == 1.0


def test_batches_drawn_in_the_other_regime_do_not_feed_the_switch():
    sampler = ImportanceSampler(range(100), 8)
    miner = Miner(sampler, MiningConfig(switch_every=1))
    sampler.record(torch.arange(100), torch.rand(100))
    sampler.active = True
    # a batch the loader's workers drew while importance sampling was still off
    miner.harvest(torch.arange(8), torch.rand(8), step=0, batch_grad_sq=1.0, drawn_active=False)
    miner.flush()
    assert not miner._recent and miner.noise.batch_sq is None
    assert sampler.scored_step[:8].tolist() == [0] * 8  # its factors are still recorded
    miner.harvest(torch.arange(8, 16), torch.rand(8), step=1, batch_grad_sq=1.0)
    miner.flush()
    assert len(miner._recent) == 1 and miner.noise.batch_sq == 1.0


def test_switching_off_drops_the_on_state_moments():
    sampler = ImportanceSampler(range(100), 8)
    miner = Miner(sampler, MiningConfig(check_every=1, warmup_steps=1, min_gain_off=1.0))
    sampler.record(torch.arange(100), torch.rand(100))
    sampler.active = True
    miner.harvest(torch.arange(8), torch.ones(8), step=0, weights=torch.full((8,), 3.0), batch_grad_sq=2.0)
    miner.decide(0)  # equal factors, weights above 1: delivers less than 1, switches off
    assert not sampler.active
    assert miner.noise.drawn_sq is None and miner.noise.batch_sq is None and not miner._recent


def test_a_judgement_is_the_decision_the_switch_then_takes():
    """Miner.judge (what diagnose reports) and Miner.decide (what train does) agree, state for state."""
    rng = np.random.default_rng(0)
    factors = torch.from_numpy(rng.lognormal(0.0, 1.0, 600))
    for config in (
        MiningConfig(warmup_steps=10, check_every=10, switch_every=1, switch_sample=16),
        MiningConfig(sampler="presample", lr_scale="linear", warmup_steps=10, check_every=10),
        MiningConfig(cost_aware=True, warmup_steps=10, check_every=10, switch_every=1),
    ):
        sampler, miner = sampling_for(
            config,
            torch.arange(600),
            16,
            score_fn=lambda index: factors[index],
            lengths=torch.randint(5, 50, (600,)),
            plan=Plan(600, 16, steps=200),
        )
        for step in range(120):
            index, weights = sampler.draw()
            miner.harvest(index, factors[index], step, weights, batch_grad_sq=0.05)
            if miner._decides_after(step + 1):
                judged = miner.judge(step + 1)
                miner.after_step(step)
                assert judged.active == sampler.active and miner.judge(step + 1) == judged
                assert miner.switch.history[-1].step_gain == judged.step_gain
            else:
                miner.after_step(step)


def test_each_option_is_checked_once_with_one_error_type():
    with pytest.raises(ConfigError, match=r"MiningConfig.smoothing must be in \(0, 1\], got 0"):
        MiningConfig(smoothing=0)
    with pytest.raises(ConfigError, match="MiningConfig.sampler fim means MiningConfig.sampler importance"):
        MiningConfig(sampler="fim", factor="loss")
    with pytest.raises(ConfigError, match="MiningConfig.refresh_fraction applies to MiningConfig.sampler"):
        MiningConfig(sampler="prune", refresh_fraction=0.2)
    with pytest.raises(ConfigError, match="MiningConfig.cost_aware needs ModelConfig.pack"):
        TrainConfig(mining=MiningConfig(cost_aware=True))
    with pytest.raises(ConfigError, match="TrainConfig.device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(device="gpu")
    with pytest.raises(ConfigError, match="MiningConfig.harvest_cost must be >= 0"):
        MiningConfig(harvest_cost=-0.1)
    with spelled_as_flags(), pytest.raises(ConfigError, match=r"--smoothing must be in \(0, 1\]"):
        MiningConfig(smoothing=2)
    config = MiningConfig(sampler="gradnorm")
    assert (config.sampler, config.factor, config.label, config.refresh_share) == (
        "presample",
        "gradnorm",
        "gradnorm",
        0,
    )
    assert MiningConfig(sampler="prune", factor="loss").label == "prune:loss"
    assert TrainConfig().with_sampler("importance:loss").mining.label == "loss"
    # compare --factor loss --samplers uniform,importance,prune,fim: a plain scheme takes --factor
    by_loss = TrainConfig(mining=MiningConfig(factor="loss"))
    assert [by_loss.with_sampler(s).mining.label for s in ("uniform", "importance", "prune", "fim")] == [
        "uniform",
        "loss",
        "prune:loss",
        "fim",
    ]


def _store(n, coverage, stale_noise, seed=0):
    """A sampler whose store holds, for a ``coverage`` share, fresh factors blurred by staleness."""
    rng = np.random.default_rng(seed)
    fresh = rng.lognormal(0.0, 1.0, n)
    sampler = ImportanceSampler(range(n), batch_size=64, smoothing=0.2, seed=seed)
    known = torch.from_numpy(rng.permutation(n)[: int(coverage * n)])
    stale = fresh[known.numpy()] * rng.lognormal(0.0, stale_noise, len(known))
    sampler.record(known, torch.from_numpy(stale))
    return sampler, fresh


def _delivered(sampler, fresh, draws=1000):
    sampler.active = True
    batches = [sampler.draw() for _ in range(draws)]
    idx = torch.cat([d[0] for d in batches]).numpy()
    w = torch.cat([d[1] for d in batches]).double().numpy()
    return delivered_gain(fresh[idx], w), estimated_gain(fresh[idx], 0.2, weights=w)


@pytest.mark.parametrize("coverage", [1.0, 0.5, 0.2, 0.02])
def test_a_partly_scored_store_delivers_what_coverage_predicts(coverage):
    """1 / (1 - c (1 - 1/g)): the cut of a store with a share c scored, g the fresh factors' promise."""
    sampler, fresh = _store(20000, coverage, 0.0)
    delivered, promise = _delivered(sampler, fresh)
    assert promise == pytest.approx(estimated_gain(fresh, 0.2), rel=0.1)
    assert store_gain(promise, coverage, 1.0) == pytest.approx(delivered, rel=0.1)
    if coverage <= 0.02:
        assert delivered < 1.05 < 1.5 < promise  # a store of unseen sequences cannot steer


def test_the_quality_of_stale_factors_is_learnt_from_what_they_deliver():
    sampler, fresh = _store(20000, 1.0, 0.8)  # stale: each stored factor off by ~x2.2
    delivered, promise = _delivered(sampler, fresh)
    switch = Switch(MiningConfig(), batch_size=64, cost=0.07)
    for _ in range(6):
        switch.learn_quality(delivered, promise, coverage=1.0)
    assert 0.2 < switch.quality < 0.9
    assert store_gain(promise, 1.0, switch.quality) == pytest.approx(delivered, rel=0.02)
    copy = Switch(MiningConfig(), batch_size=64, cost=0.07)
    copy.load_state_dict(switch.state_dict())
    assert copy.quality == switch.quality


def test_coverage_ahead_follows_the_scoring_rate():
    assert coverage_ahead(0.0, 0.0, 1000) == 0.0
    assert coverage_ahead(1.0, 0.01, 1000) == pytest.approx(1.0)
    # names: 974,000 names, 70 scored a step, 2,950 steps left -> ~10% on average
    assert coverage_ahead(0.0, 70 / 974_000, 2950) == pytest.approx(0.10, abs=0.01)
    # Fashion-MNIST: 60,000 rows, 70 a step, 1,775 steps left -> ~58%
    assert coverage_ahead(0.0, 70 / 60_000, 1775) == pytest.approx(0.58, abs=0.02)


def _run(n, steps, sigma=1.0, noise_scale=300.0, b=64, planned=None, **mining):
    """Train-like draws, harvests and refreshes over fixed per-sequence factors, at a true B."""
    rng = np.random.default_rng(1)
    factors = rng.lognormal(0.0, sigma, n)
    sampler = ImportanceSampler(range(n), batch_size=b, smoothing=0.2, seed=0)

    def score(index):
        return torch.from_numpy(factors[index.numpy()])

    miner = Miner(sampler, MiningConfig(**mining), score_fn=score, plan=Plan(n, b, steps=planned or steps))
    second_moment = float(np.mean(factors**2))
    true_g2 = second_moment / (1.0 + noise_scale)
    batch_sq = true_g2 + (second_moment - true_g2) / b
    active = []
    for step in range(steps):
        index, weights = sampler.draw()
        miner.harvest(index, score(index), step, weights, batch_sq)
        miner.after_step(step)
        active.append(sampler.active)
    return miner, factors, active


def test_data_seen_less_than_once_keep_the_switch_off():
    """names: 1M sequences, a 3,000-step plan sees a fifth of them; fresh factors promise ~2
    (the old rule switched on at a predicted 1.06), the store never fills: it stays off."""
    miner, factors, active = _run(1_000_000, 400, planned=3000)
    assert estimated_gain(factors, 0.2) > 1.5
    assert not any(active) and all(d.gain < 1.1 for d in miner.switch.history)


def test_on_data_seen_many_times_the_switch_predicts_the_cut_it_delivers():
    """Fashion-MNIST's regime: the store fills within the plan; the cut predicted when the switch
    turned on is within 25% of what the draws delivered over the rest of the run (their harmonic
    mean: steps follow the variance, 1/g), and below the fresh factors' promise (coverage grows)."""
    miner, factors, active = _run(6000, 600, planned=600, switch_sample=64, switch_every=1)
    history = miner.switch.history
    first_on = next(i for i, d in enumerate(history) if d.active)
    delivered = [d.gain for d in history[first_on + 1 :]]
    harmonic = len(delivered) / sum(1 / g for g in delivered)
    assert active[-1] and history[first_on].step <= 100
    assert history[first_on].predicted - 1 == pytest.approx(harmonic - 1, rel=0.25)
    assert estimated_gain(factors, 0.2) > harmonic


def test_the_switch_turns_off_when_the_cut_no_longer_pays_for_mining():
    switch = Switch(MiningConfig(), batch_size=64, cost=0.07)
    assert switch.pays(gain=1.5, noise_scale=300.0)
    assert not switch.keeps_paying(1.02, noise_scale=300.0)  # names: 1.002-1.025 for 4,500 steps
    edge = 1.06  # hysteresis: a cut that would not switch on keeps it on
    assert not switch.pays(edge, 300.0) and switch.keeps_paying(edge, 300.0)
    assert switch.keeps_paying(1.02, noise_scale=None)  # B unknown: min_gain_off alone


def test_the_fresh_gain_of_an_importance_drawn_harvest_is_uniforms_cost_aware_too():
    rng = np.random.default_rng(0)
    n = 20000
    s, c = rng.lognormal(0.0, 1.0, n), rng.integers(5, 100, n).astype(float)
    p = s / s.sum()
    drawn = rng.choice(n, 40000, p=p)
    w = 1 / (n * p[drawn])
    for costs in (None, c):
        truth = estimated_gain(s, 0.2, costs)
        weighted = estimated_gain(s[drawn], 0.2, None if costs is None else costs[drawn], w)
        assert weighted == pytest.approx(truth, rel=0.1)


# -- presampling's pool ---------------------------------------------------------------------
def test_presampling_cut_counts_the_pool_own_noise():
    """b draws from fresh scores of r b uniform candidates: in covariance 1/g = 1/r + 1/g_is,
    measured on simulated one-dimensional gradients (their norms are the factors)."""
    rng = np.random.default_rng(5)
    n, b = 4000, 16
    x = 1.0 + rng.standard_normal(n) * rng.lognormal(0.0, 1.0, n)  # mean ~1, heavy-tailed noise
    noise_scale = float(x.var() / x.mean() ** 2)
    gain = estimated_gain(np.abs(x), 0.2)
    grads = torch.from_numpy(x)
    for ratio in (2, 6):
        sampler = PresamplingSampler(range(n), batch_size=b, smoothing=0.2, seed=ratio, ratio=ratio)
        sampler.score_fn = lambda index: grads[index].abs()
        sampler.active = True
        means = [float((w.double() * grads[i]).mean()) for i, w in (sampler.draw() for _ in range(6000))]
        measured = (x.var() / b) / np.var(means)  # uniform batch's variance over presampling's
        predicted = covariance_cut(noise_scale, pool_gain(gain, ratio, noise_scale))
        assert measured == pytest.approx(predicted, rel=0.15)
        assert measured < 0.8 * covariance_cut(noise_scale, gain)  # the pool's noise is not negligible


def test_presampling_never_pays_for_its_pool_at_a_kept_learning_rate():
    """2 - 1/G < 2 fewer steps cannot repay r >= 2 forward passes of 1/3 of a step per sequence."""
    config = MiningConfig(sampler="presample")
    switch = PoolSwitch(config, 64, mining_cost(config, refreshes=False))
    for fresh in (1.5, 3.0, 10.0, 100.0):
        for noise_scale in (10.0, 300.0, 1e5):
            ratio, cut = switch.size_pool(fresh, noise_scale)
            assert 1.0 <= cut < min(ratio, fresh) or cut < 1.0
            assert not switch.pays(cut, noise_scale)


def test_presampling_pool_grows_with_the_gain_when_the_learning_rate_follows_the_cut():
    config = MiningConfig(sampler="presample", lr_scale="linear")
    switch = PoolSwitch(config, 64, mining_cost(config, refreshes=False))
    sized = {fresh: switch.size_pool(fresh, 1e5) for fresh in (2.0, 10.0, 100.0)}
    ratios = [ratio for ratio, _ in sized.values()]
    assert ratios == sorted(ratios) and ratios[0] < ratios[-1]
    assert not switch.pays(sized[2.0][1], 1e5)  # small pools cut little, large ones cost too much
    ratio, cut = sized[10.0]
    assert switch.pays(cut, 1e5, cost=switch.pool_cost(ratio))


def test_the_miner_draws_from_the_pool_its_switch_sized_and_resumes_it():
    n, b = 3000, 32
    factors = torch.from_numpy(np.random.default_rng(2).lognormal(0.0, 1.0, n))
    config = MiningConfig(sampler="presample", check_every=20, warmup_steps=20)

    def presampling() -> tuple[PresamplingSampler, Miner]:
        sampler = PresamplingSampler(range(n), batch_size=b, smoothing=0.2, seed=0, ratio=3)
        sampler.score_fn = lambda index: factors[index]
        return sampler, Miner(sampler, config, score_fn=sampler.score_fn)

    sampler, miner = presampling()
    second_moment = float((factors**2).mean())
    batch_sq = second_moment / 301.0 + (second_moment - second_moment / 301.0) / b  # B = 300
    for step in range(100):
        index, weights = sampler.draw()
        miner.harvest(index, factors[index], step, weights, batch_sq)
        miner.after_step(step)
    assert miner.noise.noise_scale is not None and not sampler.active  # a kept lr: it cannot pay
    # the pool was sized once B was known: the cheapest, 2 b (3 b until then)
    assert sampler.ratio == miner.switch.pool_ratio == 2
    assert miner.switch.cost == pytest.approx(miner.switch.pool_cost(2))
    sampler.active = True
    before = sampler.candidates_not_trained
    index, _ = sampler.draw()
    assert len(index) == b and sampler.candidates_not_trained - before == (2 - 1) * b
    copy_sampler, copy = presampling()
    copy.load_state_dict(miner.state_dict())
    copy_sampler.load_state_dict(sampler.state_dict())
    assert copy_sampler.ratio == 2 and copy.switch.pool_ratio == 2 and copy.switch.cost == miner.switch.cost


def test_noise_scale_stays_unbiased_while_presampling_draws():
    """A presampled batch carries its pool mean's noise as well: without r, B reads ~6x too low here."""
    b, r, true_b, m_u, m_p = 32, 3, 500.0, 2.0, 1.2
    g2 = m_u / (1.0 + true_b)
    batch_sq = g2 + (m_u - g2) / (r * b) + (m_p - g2) / b
    noise = NoiseScale(batch_size=b, pool_ratio=r)
    noise.observe_batch(batch_sq)
    noise.observe_moments(m_u, m_p)
    assert noise.noise_scale == pytest.approx(true_b, rel=1e-9)
    within_pool = (m_u - g2) / (m_p - g2)
    assert noise.variance_cut == pytest.approx(1.0 / (1.0 / r + 1.0 / within_pool), rel=1e-9)
    noise.pool_ratio = None
    assert noise.noise_scale < true_b / 5


def test_lr_scale_auto_is_linear_under_a_decay_and_none_at_a_constant_rate():
    from seqis.training.config import TrainConfig

    assert TrainConfig(steps=100, schedule="cosine").mining.lr_scale == "linear"
    assert TrainConfig(steps=100, schedule="linear").mining.lr_scale == "linear"
    assert TrainConfig(steps=100, warmup=10).mining.lr_scale == "none"  # a warm-up to a constant rate
    kept = TrainConfig(steps=100, schedule="cosine", mining=MiningConfig(lr_scale="none"))
    assert kept.mining.lr_scale == "none"
    assert TrainConfig.from_dict(kept.to_dict()).mining.lr_scale == "none"  # resumes as it ran


def test_unresolved_auto_scales_nothing_as_none_does():
    """Outside the trainer (a user's own Miner) nothing knows the schedule: auto is none."""
    auto, none = (Switch(MiningConfig(lr_scale=rule), 64, cost=0.05) for rule in ("auto", "none"))
    for switch in (auto, none):
        switch.update_lr_multiplier(4.0, active=True)
    assert auto.lr_multiplier == none.lr_multiplier == 1.0
    assert auto.predicted_step_gain(2.0, 200.0) == none.predicted_step_gain(2.0, 200.0)


# -- sweeps: the whole store fresh while importance sampling can pay ------------------------------------
def _sweeping(n=6000, b=64, steps=400, drift=0.0, rate_at=None, **mining):
    """Train-like draws over factors that drift by ``drift`` a step (log-normal), at B = 300."""
    rng = np.random.default_rng(4)
    base = rng.lognormal(0.0, 1.0, n)
    state = {"step": 0}

    def score(index):
        noise = np.exp(drift * state["step"] * rng.standard_normal(len(index)))
        return torch.from_numpy(base[index.numpy()] * noise)

    sampler = ImportanceSampler(range(n), batch_size=b, smoothing=0.2, seed=0)
    config = MiningConfig(sweep=True, sweep_batch=2000, **mining)
    miner = Miner(sampler, config, score_fn=score, plan=Plan(n, b, steps=3000))
    miner.rate_at = rate_at
    batch_sq = float(np.mean(base**2)) / 301.0 * (1 + 300 / b)
    coverage = []
    for step in range(steps):
        state["step"] = step
        index, weights = sampler.draw()
        miner.harvest(index, score(index), step, weights, batch_sq)
        miner.after_step(step)
        coverage.append(sampler.coverage)
    return miner, sampler, coverage


def test_a_sweep_scores_the_whole_store_once_fresh_factors_promise_a_cut_that_pays():
    miner, sampler, coverage = _sweeping(switch_sample=64, switch_every=1)
    first = miner.sweeps.history[0]
    assert coverage[first["step"] - 1] == 1.0 > coverage[first["step"] - 2]  # all scored at a decision
    assert sampler.active and miner.switch.history[-1].predicted > 1.5  # the covered store's cut
    assert miner.switch.cost == pytest.approx(miner._base_cost + miner.sweeps.share())
    assert miner.summary()["sweeps"][0]["correlation"] is None  # nothing to compare at the first
    copy = Miner(ImportanceSampler(range(6000), batch_size=64, smoothing=0.2, seed=0), miner.config,
                 score_fn=lambda i: torch.ones(len(i)), plan=Plan(6000, 64, steps=3000))  # fmt: skip
    copy.load_state_dict(miner.state_dict())
    restored, saved = copy.sweeps.state_dict(), miner.sweeps.state_dict()
    assert np.array_equal(restored.pop("swept"), saved.pop("swept")) and restored == saved
    assert copy.switch.cost == miner.switch.cost


def test_the_sweep_cadence_follows_how_fast_factors_decorrelate():
    # cheap sweeps, so that a re-sweep pays: the cadence is then the only thing that differs
    steady, _, _ = _sweeping(steps=700, switch_sample=64, switch_every=1, sweep_cost=0.05)
    drifting, _, _ = _sweeping(steps=700, drift=0.004, switch_sample=64, switch_every=1, sweep_cost=0.05)
    steady_corr = [h["correlation"] for h in steady.sweeps.history if h["correlation"] is not None]
    drift_corr = [h["correlation"] for h in drifting.sweeps.history if h["correlation"] is not None]
    assert steady_corr and drift_corr and min(steady_corr) > 0.95 > 0.85 > max(drift_corr)
    assert drifting.sweeps.every < steady.sweeps.every  # aging factors: sweeps come sooner
    costly, _, _ = _sweeping(steps=700, switch_sample=64, switch_every=1, sweep_cost=0.3)
    assert len(costly.sweeps.history) == 1  # a re-sweep must pay for itself too: at 0.3, B ~ 80, it does not


def test_a_sweep_is_priced_by_the_rate_left_to_use_it_and_never_while_b_is_unread():
    """fashion-mnist-budget-sweep swept 60,000 rows 75 steps before the end, where B read None and
    the price fell back to min_gain; and a cut bought under a decayed rate buys little."""
    flat, _, _ = _sweeping(steps=700, switch_sample=64, switch_every=1, sweep_cost=0.05)
    decayed, _, _ = _sweeping(
        steps=700, switch_sample=64, switch_every=1, sweep_cost=0.05, rate_at=lambda t: max(0.0, 1 - t / 450)
    )
    assert 1 <= len(decayed.sweeps.history) < len(flat.sweeps.history)
    weighted = decayed.rate_weighted_horizon(350)
    decayed.rate_at = None  # the same steps ahead, each counted in full
    assert 1 <= weighted < decayed.rate_weighted_horizon(350) <= decayed.sweeps.every
    first = _sweeping(switch_sample=64, switch_every=1)[0].sweeps.history[0]["step"]
    before, _, _ = _sweeping(steps=first - 1, switch_sample=64, switch_every=1)  # the gain is known
    before.flush()
    before._maybe_sweep(first - 1, None)
    assert before.sweeps.last is None  # B unread: nothing to price by
    before._maybe_sweep(first - 1, 300.0)
    assert before.sweeps.last == first  # the same moment with B read does sweep


def test_factors_without_a_noise_scale_sweep_where_the_cut_itself_pays_for_it():
    # loss factors have no B: the cut bounds the step gain, and a sweep must still beat its price
    miner, sampler, coverage = _sweeping(factor="loss", switch_sample=64, switch_every=1)
    assert miner.noise is None and miner.sweeps.history and max(coverage) == 1.0
    kwargs = {"factor": "loss", "steps": 700, "switch_sample": 64, "switch_every": 1, "sweep_cost": 0.05}
    flat, _, _ = _sweeping(**kwargs)
    decayed, _, _ = _sweeping(rate_at=lambda t: max(0.0, 1 - t / 450), **kwargs)
    assert len(flat.sweeps.history) > 1  # cheap re-sweeps pay at a kept rate
    assert all(h["step"] < 450 for h in decayed.sweeps.history)  # none once the rate is spent
    assert len(decayed.sweeps.history) < len(flat.sweeps.history)


def test_no_sweep_where_fresh_factors_cannot_pay_or_no_store_is_drawn_from():
    rng = np.random.default_rng(0)
    flat = torch.from_numpy(1.0 + 0.01 * rng.random(2000))  # factors alike: no cut to buy
    sampler = ImportanceSampler(range(2000), batch_size=32, seed=0)
    miner = Miner(sampler, MiningConfig(sweep=True, switch_every=1), score_fn=lambda i: flat[i])
    for step in range(300):
        index, weights = sampler.draw()
        miner.harvest(index, flat[index], step, weights, 0.01)
        miner.after_step(step)
    assert miner.sweeps.last is None and sampler.coverage < 1
    with pytest.raises(ConfigError, match="MiningConfig.sweep scores a store of factors; prune draws"):
        MiningConfig(sampler="prune", sweep=True)
    with pytest.raises(ConfigError, match="MiningConfig.sweep scores every sequence: it needs a scorer"):
        sampling_for(MiningConfig(sweep=True), torch.arange(100), 10)
