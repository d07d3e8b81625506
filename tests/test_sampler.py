import inspect
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqis.data.registry import DataOptions, load_data
from seqis.errors import ConfigError
from seqis.importance.config import MiningConfig
from seqis.importance.factors import exact_factors
from seqis.importance.switch import ceiling, estimated_gain
from seqis.models.rnn import ModelConfig, RecurrentModel
from seqis.sampling.loader import RankSlice
from seqis.sampling.sampler import (
    ImportanceSampler,
    PresamplingSampler,
    PruningSampler,
    RandomSubsetSampler,
    UniformBatchSampler,
    padding,
)
from seqis.sampling.sumtree import SumTree


def test_sumtree_updates_match_rebuild():
    rng = np.random.default_rng(0)
    values = rng.random(1000)
    tree = SumTree(values)
    for _ in range(50):
        idx = rng.integers(0, 1000, 17)
        new = rng.random(17) * rng.choice([0, 1, 1e6], 17)
        tree.update(idx, new)
        for i, v in zip(idx, new, strict=True):
            values[i] = v
    assert np.array_equal(tree.tree, SumTree(values).tree)
    u = rng.random(500) * tree.total
    expected = np.searchsorted(np.cumsum(values), u, side="right")
    assert np.array_equal(tree.find(u), expected)


# 1000: every level recomputed whole; 20,483: the lowest levels node by node
@pytest.mark.parametrize("size", [1000, 5 * 4096 + 3])
def test_sumtree_updates_match_rebuild_at_every_width(size):
    rng = np.random.default_rng(1)
    values = rng.random(size)
    tree = SumTree(values)
    for _ in range(20):
        idx = rng.integers(0, size, 64)
        new = rng.random(64)
        tree.update(idx, new)
        values[idx] = new  # duplicates: the last wins, as in update
    assert np.array_equal(tree.tree, SumTree(values).tree)


def test_sumtree_never_returns_zero_leaf():
    tree = SumTree(np.array([0.0, 1.0, 0.0, 0.0, 2.0]))
    hits = tree.find(np.linspace(0, tree.total, 1001))
    assert set(hits.tolist()) <= {1, 4}


def test_frequencies_match_p_and_weights_are_inverse():
    n = 50
    sampler = ImportanceSampler(torch.arange(100, 100 + n), batch_size=500, smoothing=0.1, seed=3)
    factors = torch.linspace(0.01, 5.0, n) ** 2
    sampler.record(torch.arange(100, 100 + n), factors)
    sampler.active = True
    p = sampler.probabilities()
    assert p.sum() == pytest.approx(1.0)
    counts = np.zeros(n)
    for _ in range(200):
        idx, w = sampler.draw()
        pos = sampler.positions_of(idx)
        np.add.at(counts, pos, 1)
        assert np.allclose(w.numpy(), 1.0 / (n * p[pos]), rtol=1e-6)
    expected = p * counts.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 49 + 4 * np.sqrt(2 * 49)  # dof 49; ~4 sigma


def test_uniform_sampler_is_permutation_per_epoch():
    sampler = UniformBatchSampler(torch.arange(10, 30), batch_size=5, seed=1)
    seen = torch.cat([sampler.draw()[0] for _ in range(4)])
    assert sorted(seen.tolist()) == list(range(10, 30))


def test_inactive_importance_sampler_equals_uniform():
    a = ImportanceSampler(torch.arange(40), 8, seed=5)
    b = UniformBatchSampler(torch.arange(40), 8, seed=5)
    for _ in range(12):
        assert torch.equal(a.draw()[0], b.draw()[0])


def test_bad_factors_are_dropped_with_one_warning():
    sampler = ImportanceSampler(torch.arange(4), 2)
    sampler.record(torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.warns(RuntimeWarning, match="non-finite or negative"):
        sampler.record(torch.arange(4), torch.tensor([float("nan"), float("inf"), -1.0, 5.0]))
    assert sampler.repaired == 3
    assert sampler.factors.tolist() == [1.0, 2.0, 3.0, 5.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.record(torch.arange(1), torch.tensor([float("nan")]))  # warned once only
    assert sampler.repaired == 4


def test_state_round_trip_continues_identically():
    a = ImportanceSampler(torch.arange(100), 16, seed=2)
    a.record(torch.arange(100), torch.rand(100, generator=torch.Generator().manual_seed(0)))
    a.active = True
    a.draw()
    b = ImportanceSampler(torch.arange(100), 16, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        ia, wa = a.draw()
        ib, wb = b.draw()
        assert torch.equal(ia, ib) and torch.equal(wa, wb)


def test_batches_drawn_ahead_keep_the_weights_of_the_distribution_they_came_from():
    n, b = 50, 10
    sampler = ImportanceSampler(torch.arange(n), b, smoothing=0.2, seed=0, lookahead=3)
    sampler.record(torch.arange(n), torch.linspace(0.1, 5.0, n))
    sampler.active = True
    before = sampler.probabilities()
    first = [sampler.draw() for _ in range(1)]
    sampler.record(torch.arange(n), torch.linspace(5.0, 0.1, n))  # the factors turn round
    after = sampler.probabilities()
    first += [sampler.draw() for _ in range(2)]  # the rest of the first walk
    for index, weights in first:
        assert torch.allclose(weights.double(), torch.from_numpy(1 / (n * before[index.numpy()])))
    index, weights = sampler.draw()  # a new walk, over the new factors
    assert torch.allclose(weights.double(), torch.from_numpy(1 / (n * after[index.numpy()])))
    state = sampler.state_dict()
    sampler.active = False  # a regime change drops what was drawn ahead for the old one
    assert sampler.draw()[1].eq(1).all()
    resumed = ImportanceSampler(torch.arange(n), b, smoothing=0.2, seed=5, lookahead=3)
    resumed.load_state_dict(state)
    sampler.load_state_dict(state)
    for _ in range(4):  # the two walks' remains, then fresh walks, alike
        assert all(torch.equal(x, y) for x, y in zip(sampler.draw(), resumed.draw(), strict=True))
    with pytest.raises(ValueError, match="lookahead"):
        ImportanceSampler(torch.arange(n), b, lookahead=0)


def test_gain_estimates():
    assert ceiling(np.ones(100)) == pytest.approx(1.0)
    s = np.array([1.0, 3.0])
    assert ceiling(s) == pytest.approx(np.mean(s**2) / np.mean(s) ** 2)
    assert 1.0 <= estimated_gain(s, 0.5) <= ceiling(s)


factor_values = st.floats(min_value=0.0, max_value=1e30, allow_nan=False) | st.sampled_from(
    [0.0, 1e-30, 1e30, float("nan"), float("inf"), -1.0]
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(factor_values, min_size=1, max_size=40),
    st.floats(min_value=1e-6, max_value=1.0),
    st.integers(min_value=1, max_value=8),
)
def test_sampler_properties(values, smoothing, batch_size):
    n = len(values)
    sampler = ImportanceSampler(torch.arange(n), batch_size, smoothing=smoothing, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):  # repeated updates
            sampler.record(torch.arange(n), torch.tensor(values, dtype=torch.float64))
    sampler.rebuild()
    sampler.active = True
    p = sampler.probabilities()
    assert np.all(p >= 0) and p.sum() == pytest.approx(1.0)
    idx, w = sampler.draw()
    assert ((idx >= 0) & (idx < n)).all() and len(idx) == batch_size
    assert torch.isfinite(w).all() and (w > 0).all()
    assert p[idx.numpy()].min() > 0


def _flat_grad(model, loss):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def test_weighted_gradient_is_unbiased_and_less_noisy():
    data = load_data("ucr:JapaneseVowels")
    torch.manual_seed(0)
    cfg = ModelConfig(cell="gru", hidden_size=8, num_layers=1, embed_size=8)
    model = RecurrentModel(data.task, data.input_size, data.num_outputs, cfg).double()
    pool = data.train_idx[:64]
    full_batch = data.batch(pool)
    full_batch.inputs = full_batch.inputs.double()
    full = _flat_grad(model, model(full_batch).loss.mean())
    factors = exact_factors(model, full_batch)

    def estimates(sampler, draws=300):
        out = []
        for _ in range(draws):
            idx, w = sampler.draw()
            batch = data.batch(idx)
            batch.inputs = batch.inputs.double()
            out.append(_flat_grad(model, (w.double() * model(batch).loss).mean()))
        return torch.stack(out)

    is_sampler = ImportanceSampler(pool, batch_size=4, smoothing=0.1, seed=1)
    is_sampler.record(pool, factors)
    is_sampler.active = True
    g_is = estimates(is_sampler)
    # mean within 4 standard errors of the full gradient, coordinate-wise (in aggregate)
    se = g_is.std(0) / np.sqrt(len(g_is))
    z = (g_is.mean(0) - full) / se.clamp_min(1e-12)
    assert (z.abs() < 4).float().mean() > 0.99
    assert z.pow(2).mean() < 1.5  # ~1 for an unbiased estimator
    uni = ImportanceSampler(pool, batch_size=4, smoothing=1.0, seed=1)
    uni.record(pool, factors)
    uni.active = True  # smoothing 1: uniform draws with replacement
    g_uni = estimates(uni)
    var_is = (g_is - full).pow(2).sum(1).mean()
    var_uni = (g_uni - full).pow(2).sum(1).mean()
    assert var_is < var_uni


def test_rank_slices_of_uniform_draws_match_distributed_sampler_semantics():
    world, b = 2, 5
    per_rank = {}
    for r in range(world):  # every rank holds an identical single-replica sampler
        sampler = UniformBatchSampler(torch.arange(40), batch_size=b * world, seed=4)
        per_rank[r] = [i for batch in RankSlice(sampler, num_replicas=world, rank=r) for i, _ in batch]
    assert not set(per_rank[0]) & set(per_rank[1])  # no sequence trained twice in the epoch
    assert sorted(per_rank[0] + per_rank[1]) == list(range(40))  # one epoch covers every index once


def test_pruning_keeps_epoch_sum_unbiased_without_repeats():
    n, ratio = 200, 0.5
    values = torch.linspace(0.1, 3.0, n)
    sampler = PruningSampler(range(n), batch_size=10, ratio=ratio, seed=3)
    sampler.record(torch.arange(n), values)
    sampler.active = True
    sums, lengths = [], []
    for epoch in range(1, 801):
        sampler.set_epoch(epoch)
        order, weights = sampler._order, sampler._weights
        assert len(set(order.tolist())) == len(order)  # no repeats within an epoch
        below = values < values.mean()
        assert torch.equal(weights, torch.where(below, 1 / (1 - ratio), 1.0))
        assert set(order.tolist()) >= set(torch.nonzero(~below).flatten().tolist())  # above mean: kept
        sums.append(float((weights[order] * values[order]).sum()))
        lengths.append(len(order))
    # E[sum of weighted kept values over an epoch] = the full sum; ~1% standard error here
    assert np.mean(sums) == pytest.approx(float(values.sum()), rel=0.01)
    assert np.mean(lengths) == pytest.approx(n - ratio * int((values < values.mean()).sum()), rel=0.02)


def _pruning(n, **kwargs):
    sampler = PruningSampler(range(n), batch_size=10, ratio=0.5, seed=0, **kwargs)
    sampler.record(torch.arange(n), torch.arange(n).float())
    sampler.active = True
    return sampler


@pytest.mark.parametrize("stop", [12, 29, 30])  # mid-run, the draw before the annealing starts, its start
def test_pruning_anneals_to_full_epochs_and_resumes_exactly(stop):
    n = 100
    sampler = _pruning(n, total_steps=40, anneal=0.25)
    draws = [sampler.draw() for _ in range(stop)]
    assert any((w > 1).any() for _, w in draws)  # pruned epochs weight the kept low factors
    copy = PruningSampler(range(n), batch_size=10, ratio=0.5, seed=0, total_steps=40, anneal=0.25)
    copy.load_state_dict(sampler.state_dict())
    legacy = PruningSampler(range(n), batch_size=10, ratio=0.5, seed=0, total_steps=40, anneal=0.25)
    legacy.load_state_dict({k: v for k, v in sampler.state_dict().items() if k != "pruned"})  # older format
    for _ in range(45 - stop):
        a, b, c = sampler.draw(), copy.draw(), legacy.draw()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert sampler.annealing
    sampler.set_epoch(sampler.epoch + 1)  # an epoch that starts in the final share is full
    idx, w = sampler.draw()
    assert len(sampler._order) == n and (w == 1).all()


def test_annealing_starts_a_full_epoch_at_once_on_long_epochs():
    n = 2000  # a pruned epoch is ~150 batches: far longer than the 40 planned steps
    sampler = _pruning(n, total_steps=40, anneal=0.25)
    sampler.set_epoch(1)
    below = torch.arange(n) < n / 2  # factors 0..n-1: the lower half is below the mean
    for _ in range(30):
        idx, w = sampler.draw()
        assert len(sampler._order) < n and torch.equal(w, torch.where(below[idx], 2.0, 1.0))
    tail = [sampler.draw() for _ in range(10)]  # the last anneal share: 10 of 40 draws
    assert all((w == 1).all() for _, w in tail)
    drawn = torch.cat([idx for idx, _ in tail])
    assert len(sampler._order) == n and torch.equal(drawn, sampler._order[:100])  # one full permutation
    assert sampler.epoch == 2


def test_a_batch_across_epochs_keeps_each_epochs_weights():
    n, b, ratio = 53, 8, 0.5  # pruned epochs of ~40: most epoch ends fall inside a batch
    sampler = PruningSampler(range(n), batch_size=b, ratio=ratio, seed=1)
    g = torch.Generator().manual_seed(0)
    sampler.record(torch.arange(n), torch.rand(n, generator=g))
    sampler.active = True
    sampler.set_epoch(1)
    epoch_factors = sampler.factors.copy()  # what the current epoch was pruned by
    split = 0
    for _ in range(400):
        epoch, factors, left = sampler.epoch, sampler.factors.copy(), len(sampler._order) - sampler._cursor
        idx, w = sampler.draw()
        if sampler.epoch != epoch:  # the new epoch was pruned by the factors recorded so far
            split += 0 < left < b
            sources = [epoch_factors] * left + [factors] * (b - left)
            epoch_factors = factors
        else:
            sources = [epoch_factors] * b
        pairs = zip(idx.tolist(), sources, strict=True)
        assert w.tolist() == pytest.approx([1 / (1 - ratio) if f[i] < f.mean() else 1.0 for i, f in pairs])
        sampler.record(idx, torch.rand(b, generator=g))  # new factors: the next epoch prunes others
    assert split > 20


def _resumable(kind):
    if kind == "uniform":
        sampler = UniformBatchSampler(range(50), 4, seed=3)
    else:
        sampler = (PruningSampler if kind == "prune" else ImportanceSampler)(range(50), 4, seed=3)
        sampler.record(torch.arange(50), torch.linspace(0.1, 5.0, 50))
        sampler.active = kind != "importance-inactive"
    sampler.set_epoch(1)  # a pruned epoch for the pruning sampler
    return sampler


@pytest.mark.parametrize("kind", ["uniform", "importance-inactive", "importance", "prune"])
def test_set_epoch_of_the_current_epoch_keeps_a_restored_cursor(kind):
    original = _resumable(kind)
    for _ in range(3):
        original.draw()
    restored = _resumable(kind)
    restored.load_state_dict(original.state_dict())
    restored.set_epoch(original.epoch)  # what Lightning does after restoring a checkpoint
    for _ in range(20):  # across the next epoch's start, which set_epoch(epoch + 1) still makes
        a, b = original.draw(), restored.draw()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (original.epoch > 1) == (kind != "importance")  # active importance draws have no epochs


def test_zero_smoothing_is_refused_where_it_is_configured():
    # a zero factor would never be drawn again, and weights would be unbounded; the sampler
    # trusts its validated config (one home per option)
    with pytest.raises(ConfigError, match=r"MiningConfig.smoothing must be in \(0, 1\]"):
        MiningConfig(smoothing=0.0)


def test_rank_slices_are_disjoint_and_cover_each_global_batch():
    def importance(seed=2):
        sampler = ImportanceSampler(range(20), batch_size=6, smoothing=0.3, seed=seed)
        sampler.record(torch.arange(20), torch.linspace(0.1, 2.0, 20))
        sampler.active = True
        return sampler

    whole = importance()
    slices = [RankSlice(importance(), num_replicas=3, rank=r) for r in range(3)]
    assert len(slices[0]) == len(whole) == 3 and slices[0].batch_size == 2
    for parts, pairs in zip(zip(*slices, strict=True), whole, strict=True):
        assert [p for part in parts for p in part] == pairs  # rank order, contiguous, weights included
        assert all(len(part) == 2 for part in parts)
    with pytest.raises(ValueError, match="rank must be in"):
        RankSlice(importance(), num_replicas=3, rank=3)
    with pytest.raises(ValueError, match="does not split evenly over 4 replicas"):
        RankSlice(importance(), num_replicas=4, rank=0)
    assert RankSlice(importance()).num_replicas == 1  # no process group: one replica
    slices[0].set_epoch(5)  # Lightning calls it on the loader's batch sampler
    assert slices[0].batch_sampler.epoch == 5


@pytest.mark.parametrize("kind", [UniformBatchSampler, ImportanceSampler, PresamplingSampler, PruningSampler])
def test_samplers_are_single_replica(kind):
    sampler = kind(range(12), 4, seed=0)
    if hasattr(sampler, "record"):  # it stores what it is given: the caller gathers the ranks' factors
        assert list(inspect.signature(sampler.record).parameters) == ["dataset_indices", "factors", "step"]
    assert not {"num_replicas", "rank"} & set(inspect.signature(kind).parameters)
    assert [len(batch) for batch in sampler] == [4, 4, 4]  # whole global batches
    with pytest.raises(TypeError):
        kind(range(12), 4, num_replicas=2, rank=0)


def test_pruning_drops_bad_factors_like_the_importance_sampler():
    sampler = PruningSampler(range(4), batch_size=2, seed=0)
    sampler.record(torch.arange(4), torch.ones(4))
    with pytest.warns(RuntimeWarning, match="dropped"):
        sampler.record(torch.arange(4), torch.tensor([2.0, float("nan"), -1.0, 3.0]))
    assert sampler.repaired == 2 and sampler.factors.tolist() == [2.0, 1.0, 1.0, 3.0]


def test_cost_aware_draws_follow_factor_over_root_cost_and_stay_unbiased():
    n = 40
    g = torch.Generator().manual_seed(0)
    factors = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.1
    costs = torch.randint(1, 30, (n,), generator=g).double()
    values = torch.randn(n, generator=g, dtype=torch.float64)  # a per-sequence "gradient"
    sampler = ImportanceSampler(range(n), batch_size=400, smoothing=0.2, seed=5, costs=costs)
    sampler.record(torch.arange(n), factors)
    sampler.active = True
    ratio = (factors / costs.sqrt()).numpy()
    expected_p = 0.8 * ratio / ratio.sum() + 0.2 / n
    assert np.allclose(sampler.probabilities(), expected_p)
    estimates = []
    for _ in range(300):
        idx, w = sampler.draw()
        assert np.allclose(w.numpy(), 1 / (n * expected_p[idx.numpy()]), rtol=1e-6)
        estimates.append(float((w.double() * values[idx]).mean()))
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - float(values.mean())) < 4 * se  # the weighted mean is unbiased
    # a record while active updates the tree with the cost scaling too, and a resume keeps it
    sampler.record(torch.arange(5), torch.ones(5))
    resumed = ImportanceSampler(range(n), batch_size=400, smoothing=0.2, seed=5, costs=costs)
    resumed.load_state_dict(sampler.state_dict())
    assert np.allclose(resumed.probabilities(), sampler.probabilities())
    rebuilt = ImportanceSampler(range(n), batch_size=400, smoothing=0.2, seed=5, costs=costs)
    rebuilt.record(torch.arange(n), torch.from_numpy(sampler.factors))
    rebuilt.active = True
    assert np.allclose(rebuilt.probabilities(), sampler.probabilities())
    with pytest.raises(ValueError, match="positive finite"):
        ImportanceSampler(range(n), batch_size=4, costs=torch.zeros(n))


@pytest.mark.parametrize("task", ["classify", "lm"])
def test_packed_sequences_give_the_same_losses(task):
    if task == "classify":
        data = load_data("ucr:JapaneseVowels")
    else:  # one variable-length sequence per line
        data = load_data("stdlib:lines", DataOptions(max_chars=20_000))
    batch = data.batch(data.train_idx[:12])
    assert len(set(batch.lengths.tolist())) > 3
    losses = []
    for pack in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig(cell="lstm", hidden_size=8, num_layers=2, embed_size=8, pack=pack)
        model = RecurrentModel(data.task, data.input_size, data.num_outputs, cfg, tokens=data.tokens)
        losses.append(model(batch).loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)


def test_random_subset_epochs_are_fresh_fixed_size_unweighted_and_anneal_to_full():
    n, b = 200, 10
    sampler = RandomSubsetSampler(range(n), batch_size=b, fraction=0.7, seed=4, total_steps=120, anneal=0.2)
    first = torch.cat([sampler.draw()[0] for _ in range(20)])  # the first epoch is whole, as pruning's
    assert sorted(first.tolist()) == list(range(n))
    seen_per_epoch, covered = {}, set()
    for _ in range(76):  # the first 80% of the plan: subsets of 140, each a new random one
        idx, w = sampler.draw()  # 14 batches an epoch: none crosses an epoch's end
        assert (w == 1).all()
        seen_per_epoch.setdefault(sampler.epoch, []).extend(idx.tolist())
    full_epochs = [e for e, drawn in seen_per_epoch.items() if len(drawn) == 140]
    assert len(full_epochs) >= 4
    for e in full_epochs:
        drawn = seen_per_epoch[e]
        assert len(set(drawn)) == 140  # no repeats within an epoch
        covered |= set(drawn)
    assert len({frozenset(seen_per_epoch[e]) for e in full_epochs}) == len(full_epochs)  # fresh subsets
    assert len(covered) > 0.95 * n  # over epochs the subsets cover the data
    tail = [sampler.draw() for _ in range(24)]  # the last 20%: full, unweighted epochs
    assert sampler.annealing and len(sampler._order) == n and all((w == 1).all() for _, w in tail)
    copy = RandomSubsetSampler(range(n), batch_size=b, fraction=0.7, seed=4, total_steps=120, anneal=0.2)
    copy.load_state_dict(sampler.state_dict())
    assert all(torch.equal(sampler.draw()[0], copy.draw()[0]) for _ in range(30))  # resumes exactly


def test_random_subset_refuses_an_empty_fraction():
    with pytest.raises(ConfigError, match=r"MiningConfig.subset_fraction must be in \(0, 1\]"):
        MiningConfig(sampler="subset", subset_fraction=0.0)


def test_presampling_epochs_count_trained_sequences_not_candidates():
    n, b = 120, 10
    sampler = PresamplingSampler(range(n), batch_size=b, smoothing=0.2, seed=0, ratio=3)
    sampler.score_fn = lambda index: index.double() + 1.0
    sampler.active = True
    for _ in range(6):  # 60 trained sequences from 180 candidates
        sampler.draw()
    assert sampler.epochs_done == pytest.approx(0.5)
    copy = PresamplingSampler(range(n), batch_size=b, smoothing=0.2, seed=0, ratio=3)
    copy.load_state_dict(sampler.state_dict())
    assert copy.epochs_done == pytest.approx(0.5)


def test_pruning_planned_in_epochs_trains_its_full_data_tail():
    """--epochs 2 --prune-anneal 0.25: the pruned epoch ends at 1.5 epochs and the tail trains half
    a full epoch, a quarter of the plan (it used to start a whole epoch counted as 2 done: no tail)."""
    n, b = 400, 10
    sampler = PruningSampler(range(n), batch_size=b, ratio=0.5, seed=0, total_epochs=2, anneal=0.25)
    sampler.record(torch.arange(n), torch.arange(n).float())
    sampler.active = True
    steps, tail = 0, 0
    while sampler.epochs_done < 2 - 1e-9:
        _, w = sampler.draw()
        steps += 1
        tail += int(sampler.annealing and (w == 1).all() and len(sampler._order) == n and sampler.epoch >= 2)
    assert tail == pytest.approx(0.5 * n / b, abs=1)  # half an unpruned epoch
    assert 1.499 < sampler._progress_base < 1.51  # the tail's epoch began where the pruned one ended
    copy = PruningSampler(range(n), batch_size=b, ratio=0.5, seed=0, total_epochs=2, anneal=0.25)
    copy.load_state_dict(sampler.state_dict())
    assert copy.epochs_done == sampler.epochs_done


def test_presampling_weights_are_unbiased_and_cut_the_variance():
    """The weighted batch mean of any per-sequence quantity estimates the dataset's mean."""
    n, b = 300, 8
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.lognormal(0.0, 1.0, n))  # what the batch averages (a loss, a gradient entry)
    sampler = PresamplingSampler(range(n), batch_size=b, smoothing=0.2, seed=3, ratio=4)
    sampler.score_fn = lambda index: x[index] * torch.from_numpy(rng.uniform(0.8, 1.2, len(index)))
    sampler.active = True
    estimates = []
    for _ in range(6000):
        index, weights = sampler.draw()
        estimates.append(float((weights.double() * x[index]).mean()))
    estimates = np.array(estimates)
    se = estimates.std() / np.sqrt(len(estimates))
    assert abs(estimates.mean() - float(x.mean())) < 4 * se
    uniform = x[torch.from_numpy(rng.integers(0, n, (6000, b)))].mean(1).numpy()
    assert estimates.var() < uniform.var()


# -- length-aware batching -------------------------------------------------------------------------
def _padding(sampler, lengths, draws):
    """Padded over real positions of ``draws`` batches."""
    padded = real = 0
    for _ in range(draws):
        idx, _ = sampler.draw()
        padded += len(idx) * int(lengths[idx].max())
        real += int(lengths[idx].sum())
    return padded / real


def test_bucketed_epochs_are_permutations_whose_batches_pad_little_also_across_epochs():
    n, b = 1000, 64  # 15 batches and 40 an epoch: later epochs begin mid-batch
    lengths = torch.randint(1, 200, (n,), generator=torch.Generator().manual_seed(0))
    bucketed = UniformBatchSampler(range(n), batch_size=b, seed=3)
    bucketed.set_buckets(lengths, pool=10)
    random = UniformBatchSampler(range(n), batch_size=b, seed=3)
    seen = torch.cat([bucketed.draw()[0] for _ in range(3 * n // b)])
    assert sorted(seen[: 15 * b].tolist()) != list(range(15 * b))  # shuffled
    assert sorted(torch.cat([seen[:n]]).tolist()) == list(range(n))  # each epoch: every sequence once
    assert sorted(seen[n : 2 * n].tolist()) == list(range(n))
    bucketed_ratio = _padding(bucketed, lengths, 3 * n // b)  # epochs 4-6, each beginning mid-batch
    assert bucketed_ratio < 1.25 < 1.6 < _padding(random, lengths, 3 * n // b)


def test_padding_names_what_each_batching_costs_and_one_when_no_batch_is_full():
    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0))
    random, bucketed = padding(lengths, 64), padding(lengths, 64, pool=10)
    assert bucketed < 1.25 < 1.6 < random  # as the samplers' own draws pad, above
    assert padding(torch.tensor([3, 9]), 64) == padding(torch.tensor([3, 9]), 64, pool=10) == 1.0
    assert padding(torch.full((128,), 7), 64) == 1.0  # fixed length: no padding


def test_bucketed_importance_draws_keep_their_weights_and_stay_unbiased():
    """Each batch holds sequences of similar length, yet over draws the weighted mean is the
    data's mean (values that grow with length would show any length bias)."""
    n = 400
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 100, (n,), generator=g)
    values = lengths.double() + torch.randn(n, generator=g, dtype=torch.float64) * 10
    factors = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.1
    sampler = ImportanceSampler(range(n), batch_size=16, smoothing=0.2, seed=2)
    sampler.set_buckets(lengths, pool=8)
    sampler.record(torch.arange(n), factors)
    sampler.active = True
    probabilities = sampler.probabilities()
    estimates, spans = [], []
    for _ in range(4000):
        idx, w = sampler.draw()
        assert np.allclose(w.numpy(), 1 / (n * probabilities[idx.numpy()]), rtol=1e-5)
        estimates.append(float((w.double() * values[idx]).mean()))
        spans.append(int(lengths[idx].max() - lengths[idx].min()))
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - float(values.mean())) < 4 * se
    assert np.median(spans) < 25  # a random batch of 16 spans ~85 of 100 lengths


def test_bucketed_samplers_resume_exactly_mid_epoch():
    n, b = 300, 16
    lengths = torch.randint(1, 50, (n,), generator=torch.Generator().manual_seed(2))

    def fresh(kind):
        if kind == "prune":
            sampler = PruningSampler(range(n), batch_size=b, ratio=0.5, seed=4, total_steps=200, anneal=0.2)
            sampler.record(torch.arange(n), torch.rand(n, generator=torch.Generator().manual_seed(5)))
            sampler.active = True
        else:
            sampler = ImportanceSampler(range(n), batch_size=b, seed=4)
        sampler.set_buckets(lengths, pool=5)
        return sampler

    for kind in ("importance", "prune"):
        straight = fresh(kind)
        for _ in range(27):  # into the second epoch, which began mid-batch
            straight.draw()
        resumed = fresh(kind)
        resumed.load_state_dict(straight.state_dict())
        for _ in range(30):
            assert torch.equal(straight.draw()[0], resumed.draw()[0]), kind


def test_a_bucketed_batch_is_shuffled_and_a_sweeps_redraw_finishes_the_pool():
    """Review: sorted batches gave the switch's harvest sample (a batch's first sequences) and rank
    0's slice always the short end; dropping the rest of a partitioned pool on a decision its
    trained part informed would bias the run."""
    n, b = 640, 16
    lengths = torch.randperm(n, generator=torch.Generator().manual_seed(0)) + 1  # all distinct
    uniform = UniformBatchSampler(range(n), batch_size=b, seed=1)
    uniform.set_buckets(lengths, pool=10)
    importance = ImportanceSampler(range(n), batch_size=b, seed=1)
    importance.set_buckets(lengths, pool=10)
    importance.record(torch.arange(n), torch.rand(n, generator=torch.Generator().manual_seed(2)) + 0.1)
    importance.active = True
    for sampler in (uniform, importance):
        batches = [lengths[sampler.draw()[0]] for _ in range(25)]
        first_is_shortest = [int(batch[0] == batch.min()) for batch in batches]
        assert sum(first_is_shortest) < 8, type(sampler).__name__  # sorted: all 20
        assert np.median([int(batch.max() - batch.min()) for batch in batches]) < n / 10  # still a band
    left = len(importance._ahead)
    importance.redraw()
    assert len(importance._ahead) == left > 0  # the pool is trained to its end
    plain = ImportanceSampler(range(n), batch_size=b, seed=1)
    plain.active = True
    plain.draw()
    plain.redraw()
    assert not plain._ahead
