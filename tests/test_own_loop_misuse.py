"""ImportanceLoader in a user's own loop: misuse is refused, or said once; gradient accumulation
is a first-class pattern."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, IterableDataset, WeightedRandomSampler

import seqis
from seqis.errors import ConfigError
from tests.test_own_loop import LastStep, pad_collate, per_sequence_loss, variable_length_items

ON = seqis.MiningConfig(always_on=True, warmup_steps=2, check_every=2, switch_every=1)


def _loader(model, config=ON, batch_size=8, **kwargs):
    data = DataLoader(variable_length_items(), batch_size=batch_size, shuffle=True, collate_fn=pad_collate)
    return seqis.ImportanceLoader(data, model.head, config, **kwargs)


def _train(loader, model, steps, accumulate=1, weigh=True, call_step=True):
    """``steps`` optimizer steps of ``accumulate`` micro-batches each; factors and noise inputs seen."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batches, reads = iter(loader), []
    for _ in range(steps):
        optimizer.zero_grad()
        for _ in range(accumulate):
            batch = next(batches)
            losses = per_sequence_loss(model, batch)
            loss = loader.weigh(losses) if weigh else losses.mean()
            (loss / accumulate).backward()
            reads.append(loader._mean_loss_grad_sq(loader.coefficients.value))
            if call_step:
                loader.step()
        optimizer.step()
    return reads


def test_gradient_accumulation_records_every_micro_batch_and_reads_only_fresh_gradients():
    """As the README showed it (step() after optimizer.step()), half the micro-batches went
    unscored; step() after every backward scores them all, the noise scale reads a micro-batch's
    gradient only where .grad held nothing else, and the 1/k scaling changes no factor."""
    torch.manual_seed(0)
    model = LastStep()
    loader = _loader(model)
    reads = _train(loader, model, steps=4, accumulate=2)
    assert loader.steps == 8  # every micro-batch recorded
    fresh, mixed = reads[0::2], reads[1::2]
    assert all(torch.isfinite(r) for r in fresh) and all(torch.isnan(r) for r in mixed)
    # the first micro-batch's reading is the mean loss's own gradient, 1/k undone
    torch.manual_seed(0)
    plain_model = LastStep()
    plain = _loader(plain_model)
    assert torch.allclose(_train(plain, plain_model, steps=1)[0], reads[0], rtol=1e-5)
    loader.miner.flush()
    plain.miner.flush()
    first = loader.sampler.factors[~torch.isnan(torch.from_numpy(loader.sampler.factors)).numpy()]
    assert (first > 0).all()


def test_factors_under_accumulation_equal_those_of_the_same_batch_alone():
    torch.manual_seed(1)
    model = LastStep()
    loader = _loader(model)
    batch = next(iter(loader))
    losses = per_sequence_loss(model, batch)
    (loader.weigh(losses) / 4).backward()  # a quarter: one of four micro-batches
    scaled = loader.norms.compute(loader.weight, coefficients=loader.coefficients.value)
    model.zero_grad()
    loader.norms.reset()
    losses = per_sequence_loss(model, batch)
    loader.weigh(losses).backward()
    alone = loader.norms.compute(loader.weight, coefficients=loader.coefficients.value)
    assert torch.allclose(scaled, alone, rtol=1e-5)


def test_forgetting_step_or_weigh_is_said_once():
    model = LastStep()
    loader = _loader(model)
    with pytest.warns(RuntimeWarning, match="without loader.step") as caught:
        _train(loader, model, steps=3, call_step=False)
    assert len([w for w in caught if "loader.step" in str(w.message)]) == 1
    loader = _loader(model)
    loader.sampler.active = True  # importance draws from the first batch on
    with pytest.warns(RuntimeWarning, match="was not weighed: its gradient is biased") as caught:
        _train(loader, model, steps=3, weigh=False)
    assert len([w for w in caught if "weighed" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # used as documented: nothing to say
        _train(_loader(model), model, steps=3)


def test_a_users_sampler_is_refused_and_a_fixed_order_is_said_to_be_replaced():
    items, head = variable_length_items(), nn.Linear(8, 4)
    sampler = WeightedRandomSampler(torch.ones(len(items)), num_samples=len(items))
    with pytest.raises(ValueError, match="your WeightedRandomSampler would be replaced"):
        seqis.ImportanceLoader(DataLoader(items, batch_size=8, sampler=sampler, collate_fn=pad_collate), head)
    with pytest.warns(RuntimeWarning, match=r"shuffle=False\) is replaced by seqis's own draws"):
        seqis.ImportanceLoader(DataLoader(items, batch_size=8, collate_fn=pad_collate), head)


def test_an_iterable_dataset_or_one_smaller_than_a_batch_is_refused_in_one_line():
    class Stream(IterableDataset):
        def __iter__(self):
            yield from variable_length_items()

    head = nn.Linear(8, 4)
    with pytest.raises(TypeError, match="needs a map-style dataset .* Stream is iterable only"):
        seqis.ImportanceLoader(DataLoader(Stream(), batch_size=8), head)
    few = variable_length_items()[:5]
    with pytest.raises(ConfigError, match="5 training sequences are fewer than a batch of 32"):
        seqis.ImportanceLoader(DataLoader(few, batch_size=32, shuffle=True, collate_fn=pad_collate), head)


class PackedHead(nn.Module):
    """A head applied per token to PackedSequence.data: rows are (sequence, step) pairs, length-sorted."""

    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(3, 8, batch_first=True), nn.Linear(8, 4)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return self.head(self.rnn(packed)[0].data)


def test_a_head_whose_rows_are_not_the_batch_is_refused():
    model = PackedHead()
    loader = _loader(model)
    x, lengths, y = next(iter(loader))
    logits = model(x, lengths)
    losses = F.cross_entropy(logits[: len(y)], y, reduction="none")  # the first b packed rows
    loader.weigh(losses).backward()
    with pytest.raises(ValueError, match=r"saw \d+ rows for a batch of 8 sequences.*PackedSequence.data"):
        loader.step()
        loader.miner.flush()


class WithInput(LastStep):
    def __init__(self):
        super().__init__(channels=5)
        self.input = nn.Linear(3, 5)

    def forward(self, x, lengths):
        return super().forward(self.input(x), lengths)


def test_hooking_a_layer_the_loss_does_not_read_is_refused():
    model = WithInput()
    data = DataLoader(variable_length_items(), batch_size=8, shuffle=True, collate_fn=pad_collate)
    loader = seqis.ImportanceLoader(data, model.input, ON)  # the input layer, not the output one
    batch = next(iter(loader))
    with pytest.raises(ValueError, match="the loss does not read the layer ImportanceLoader hooks"):
        loader.weigh(per_sequence_loss(model, batch))


def test_the_example_accumulates_gradients_as_the_readme_says(monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    monkeypatch.setattr(sys, "argv", ["own_loop.py"])
    example = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "own_loop.py"))
    result = example["main"](30, accumulate=2)
    assert result["recorded"] == 60 and result["val_loss"] < result["chance_loss"]
