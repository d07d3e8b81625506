"""seqis in the user's own loop: ImportanceLoader, the forward-only scorer, the example's parity."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

import seqis
from seqis.cli import main
from seqis.importance.scoring import output_layer_scorer
from tests.test_hooks import TinyLM, _lm_batch, _reference, lm_sequence_mean_smoothed

EXAMPLES = Path(__file__).parents[1] / "examples"


def pad_collate(items):
    sequences, labels = zip(*items, strict=True)
    return (
        pad_sequence(list(sequences), batch_first=True),
        torch.tensor([len(s) for s in sequences]),
        torch.stack(list(labels)),
    )


def variable_length_items(n=64, channels=3, classes=4):
    g = torch.Generator().manual_seed(0)
    lengths = 2 + torch.arange(n) % 7
    return [
        (torch.randn(int(t), channels, generator=g), torch.tensor(i % classes)) for i, t in enumerate(lengths)
    ]


class LastStep(nn.Module):
    def __init__(self, channels=3, hidden=8, classes=4):
        super().__init__()
        self.rnn, self.head = nn.GRU(channels, hidden, batch_first=True), nn.Linear(hidden, classes)

    def forward(self, x, lengths):
        return self.head(self.rnn(x)[0][torch.arange(len(x)), lengths - 1])


def per_sequence_loss(model, batch):
    x, lengths, y = batch
    return F.cross_entropy(model(x, lengths), y, reduction="none", label_smoothing=0.1)


def test_scorer_matches_autograd_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = TinyLM(hidden=12).double()
    x, y, mask = _lm_batch()
    model.train()
    score = output_layer_scorer(
        model, model.head, lambda m, batch: lm_sequence_mean_smoothed(m(batch[0]), batch[1], batch[2]),
        lambda index: (x[index], y[index], mask[index]),
    )  # fmt: skip
    factors = score(torch.arange(len(x)))
    model.eval()
    assert torch.allclose(
        factors, _reference(lm_sequence_mean_smoothed(model(x), y, mask), model.head), rtol=1e-8
    )
    assert all(p.grad is None for p in model.parameters())  # the user's .grad untouched
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    score(torch.arange(3))
    assert model.training
    with pytest.raises(ValueError, match="one loss per sequence"):
        output_layer_scorer(model, model.head, lambda m, b: m(b).sum(), lambda i: x[i])(torch.arange(2))


def test_loader_yields_the_users_batches_and_weighs_them():
    items = variable_length_items()
    model = LastStep()
    config = seqis.MiningConfig(always_on=True, warmup_steps=4, check_every=4)
    loader = seqis.ImportanceLoader(
        DataLoader(items, batch_size=8, collate_fn=pad_collate), model.head, config
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader.sampler.lookahead = 1  # one batch a walk: the distribution it was drawn from is today's
    seen_active = False
    for _ in range(3):
        for x, lengths, y in loader:
            index = loader.index
            assert lengths.tolist() == [len(items[i][0]) for i in index.tolist()]
            assert y.tolist() == [int(items[i][1]) for i in index.tolist()]
            if loader.active:  # drawn under the distribution as it stands before this step
                seen_active = True
                probabilities = loader.sampler.probabilities()
                assert torch.allclose(
                    loader.weight.double(), torch.from_numpy(1 / (64 * probabilities[index]))
                )
            loss = loader.weigh(per_sequence_loss(model, (x, lengths, y)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loader.step()
    assert seen_active and loader.steps == 3 * len(loader) and loader.sampler.coverage > 0.5
    with pytest.raises(ValueError, match="reduction='none'"):
        loader.weigh(torch.tensor(1.0))


def test_loader_refuses_what_it_cannot_wrap():
    items, head = variable_length_items(), nn.Linear(8, 4)
    with pytest.raises(ValueError, match="batch_size"):
        seqis.ImportanceLoader(DataLoader(items, batch_size=None), head)
    with pytest.raises(TypeError, match="DataLoader"):
        seqis.ImportanceLoader(items, head)
    with pytest.raises(ValueError, match="loss_fn and model"):
        seqis.ImportanceLoader(DataLoader(items, batch_size=4), head, loss_fn=per_sequence_loss)
    with pytest.raises(RuntimeError, match="before a batch"):
        seqis.ImportanceLoader(DataLoader(items, batch_size=4), head).step()


def _indices(loader, count):
    it, out = iter(loader), []
    for _ in range(count):
        next(it)
        out.append(loader.index.tolist())
    return it, out


def test_a_checkpoint_keeps_the_batches_its_workers_had_already_drawn():
    items = variable_length_items()
    config = seqis.MiningConfig(always_on=True)

    def loader():
        wrapped = DataLoader(items, batch_size=4, collate_fn=pad_collate, num_workers=1, prefetch_factor=3)
        return seqis.ImportanceLoader(wrapped, LastStep().head, config, seed=3)

    straight = loader()
    _, expected = _indices(straight, 9)
    first = loader()
    it, before = _indices(first, 4)
    state = first.state_dict()  # the worker holds drawn batches that were not trained yet
    assert len(state["pending"][0]) > 0
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    _, after = _indices(resumed, 5)
    assert before + after == expected  # none lost, none repeated


def test_own_loop_example_matches_seqis_train(tmp_path, monkeypatch):
    """The public-API loop (wrapped DataLoader, hooks, scorer) trains as seqis train does."""
    monkeypatch.setattr(sys, "argv", ["own_loop.py"])
    own = runpy.run_path(str(EXAMPLES / "own_loop.py"))["main"](150, label_smoothing=0.0)
    assert own["val_loss"] < 0.3 * own["chance_loss"]
    flags = (
        "train --data ucr:JapaneseVowels --model gru --hidden 64 --layers 1 --embed 32 --batch-size 32 "
        "--lr 0.003 --clip 1e9 --sampler fim --seed 0 --steps 150 --eval-every 150 --no-progress --threads 1"
    ).split()
    assert main([*flags, "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert own["active_share"] == pytest.approx(cli["is_active_share"]) and own["active_share"] > 0
    assert own["val_loss"] == pytest.approx(cli["final_val_loss"], rel=1e-3)  # measured: equal to 5 digits


def test_own_loop_example_with_label_smoothing_runs():
    own = runpy.run_path(str(EXAMPLES / "own_loop.py"))["main"](100, label_smoothing=0.1)
    assert own["val_loss"] < 0.5 * own["chance_loss"]


def _one_step(reduction: str, clip: float | None):
    """One ImportanceLoader step on fixed data and parameters; the miner's reading of |G_b|^2."""
    torch.manual_seed(0)
    model = LastStep()
    loader = seqis.ImportanceLoader(
        DataLoader(variable_length_items(), batch_size=16, collate_fn=pad_collate), model.head
    )
    batch = next(iter(loader))
    loader.weigh(per_sequence_loss(model, batch), reduction=reduction).backward()
    unclipped = float(sum(p.grad.pow(2).sum() for p in model.head.parameters()))
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    loader.step()
    loader.miner.flush()  # harvests reach the noise scale a few steps at a time
    return loader.miner.noise.batch_sq, unclipped


def test_noise_scale_reads_the_gradient_before_the_users_clipping():
    read, unclipped = _one_step("mean", clip=1e-4)
    assert read == pytest.approx(unclipped, rel=1e-6)


def test_a_summed_loss_reads_as_the_mean_for_the_noise_scale():
    mean, _ = _one_step("mean", clip=None)
    summed, summed_raw = _one_step("sum", clip=None)
    assert summed_raw == pytest.approx(256 * mean, rel=1e-5)  # .grad of a sum is b^2 larger
    assert summed == pytest.approx(mean, rel=1e-5)


def test_loader_refuses_what_it_cannot_honour():
    items = variable_length_items()
    model = LastStep()
    loader = DataLoader(items, batch_size=8, collate_fn=pad_collate)
    with pytest.raises(seqis.errors.ConfigError, match="lr_scale"):
        seqis.ImportanceLoader(loader, model.head, seqis.MiningConfig(lr_scale="sqrt"))
    with pytest.raises(seqis.errors.ConfigError, match="anneal"):
        seqis.ImportanceLoader(loader, model.head, seqis.MiningConfig(anneal=0.2))
    with pytest.raises(seqis.errors.ConfigError, match="MiningConfig.cost_aware needs the sequences' len"):
        seqis.ImportanceLoader(loader, model.head, seqis.MiningConfig(cost_aware=True))
    with pytest.raises(seqis.errors.ConfigError, match="the loss factor needs seqis train"):
        seqis.ImportanceLoader(loader, model.head, seqis.MiningConfig(sampler="loss"))
    annealed = seqis.ImportanceLoader(loader, model.head, seqis.MiningConfig(anneal=0.2), total_steps=50)
    assert annealed.miner.uniform_from == 40
    lengths = torch.tensor([len(x) for x, _ in items])
    costly = seqis.ImportanceLoader(loader, model.head, seqis.MiningConfig(cost_aware=True), lengths=lengths)
    assert costly.sampler._cost_scale is not None


def test_loader_runs_every_scheme():
    items = variable_length_items()
    for name in ("uniform", "importance", "prune", "presample"):
        torch.manual_seed(0)
        model = LastStep()
        config = seqis.MiningConfig(sampler=name, warmup_steps=2, check_every=2, always_on=name != "uniform")
        if name == "presample":
            config = seqis.MiningConfig(
                sampler="presample", factor="fim", always_on=True, warmup_steps=2, check_every=2
            )
        loader = seqis.ImportanceLoader(
            DataLoader(items, batch_size=8, collate_fn=pad_collate),
            model.head,
            config,
            loss_fn=per_sequence_loss,
            model=model,
            total_steps=12,
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        batches = (batch for _ in range(2) for batch in loader)  # two epochs of 8 batches
        for _, batch in zip(range(12), batches, strict=False):
            optimizer.zero_grad()
            loader.weigh(per_sequence_loss(model, batch)).backward()
            optimizer.step()
            loader.step()
        assert loader.steps == 12
        assert loader.active == (name != "uniform"), name


def test_the_loader_buckets_by_length_and_sweeps_through_the_users_scorer():
    """Issue 27: --batching bucket and sweeps in the user's own loop, through the same wiring."""
    items = variable_length_items()
    lengths = torch.tensor([len(x) for x, _ in items])
    model = LastStep()
    config = seqis.MiningConfig(batching="bucket", bucket_pool=4, sweep=True, sweep_batch=16, always_on=True)
    loader = seqis.ImportanceLoader(
        DataLoader(items, batch_size=8, shuffle=True, collate_fn=pad_collate),
        model.head,
        config,
        loss_fn=per_sequence_loss,
        model=model,
        lengths=lengths,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    spreads = []
    for x, batch_lengths, y in loader:
        spreads.append(int(batch_lengths.max() - batch_lengths.min()))
        optimizer.zero_grad()
        loader.weigh(per_sequence_loss(model, (x, batch_lengths, y))).backward()
        optimizer.step()
        loader.step()
    # pools of 4 batches sorted by length: ~4.6 sequences a length, so a batch spans <= 3 lengths
    assert max(spreads) <= 2 and len(spreads) == 8
    loader.miner.sweep(loader.steps)  # what the switch orders once fresh factors pay
    assert loader.sampler.coverage == 1.0 and (loader.sampler.scored_step == loader.steps).all()
    with pytest.raises(seqis.errors.ConfigError, match="bucket needs the sequences' lengths"):
        seqis.ImportanceLoader(
            DataLoader(items, batch_size=8, shuffle=True, collate_fn=pad_collate), model.head, config
        )
