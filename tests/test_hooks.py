"""Hook-based factors equal autograd's per-sequence output-layer gradient norms, for several losses."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqis.importance.hooks import OutputLayerNorms


class TinyLM(nn.Module):
    def __init__(self, vocab=30, hidden=12):
        super().__init__()
        self.embed, self.rnn = nn.Embedding(vocab, 8), nn.GRU(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        return self.head(self.rnn(self.embed(x))[0])


class TinyClassifier(nn.Module):
    def __init__(self, channels=3, hidden=10, classes=5):
        super().__init__()
        self.rnn, self.head = nn.LSTM(channels, hidden, batch_first=True), nn.Linear(hidden, classes)

    def forward(self, x, lengths):
        states = self.rnn(x)[0]
        return self.head(states[torch.arange(len(x)), lengths - 1])


class StepDecoder(nn.Module):
    """Calls its head once per ``chunk`` time steps, as a step-by-step decoder does."""

    def __init__(self, vocab=30, hidden=12, chunk=1):
        super().__init__()
        self.embed, self.cell = nn.Embedding(vocab, 8), nn.GRUCell(8, hidden)
        self.head, self.chunk = nn.Linear(hidden, vocab), chunk

    def forward(self, x):
        h = torch.zeros(len(x), self.cell.hidden_size, dtype=self.head.weight.dtype)
        states = []
        for t in range(x.shape[1]):
            h = self.cell(self.embed(x[:, t]), h)
            states.append(h)
        if self.chunk == 1:  # (B, H) per call
            return torch.stack([self.head(h) for h in states], 1)
        chunks = [torch.stack(states[t : t + self.chunk], 1) for t in range(0, len(states), self.chunk)]
        return torch.cat([self.head(c) for c in chunks], 1)  # (B, chunk, H) per call, the last shorter


def _lm_batch(b=6, t=9, vocab=30):
    torch.manual_seed(1)
    lengths = torch.tensor([9, 3, 7, 1, 5, 9])[:b]
    mask = torch.arange(t)[None] < lengths[:, None]
    return torch.randint(0, vocab, (b, t)), torch.randint(0, vocab, (b, t)), mask


def lm_sequence_mean_smoothed(logits, y, mask):
    """Per-sequence mean over real tokens of label-smoothed cross-entropy: (B,) own losses."""
    ce = F.cross_entropy(logits.transpose(1, 2), y, reduction="none", label_smoothing=0.1)
    return (ce * mask).sum(1) / mask.sum(1)


def lm_token_normalised(logits, y, mask):
    """Each sequence's share of a token-level mean over the whole batch, times B."""
    ce = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
    return (ce * mask).sum(1) / mask.sum() * len(y)


def _reference(own_losses, layer):
    norms = []
    for loss in own_losses:
        grads = torch.autograd.grad(loss, [layer.weight, layer.bias], retain_graph=True)
        norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return torch.stack(norms)


@pytest.mark.parametrize("loss_fn", [lm_sequence_mean_smoothed, lm_token_normalised])
@pytest.mark.parametrize("hidden", [12, 64])  # 64: the Gram form for T = 9, K = 30
def test_language_model_losses_with_padding(loss_fn, hidden):
    torch.manual_seed(0)
    model = TinyLM(hidden=hidden).double()
    x, y, mask = _lm_batch()
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0, 3.0], dtype=torch.float64)
    with OutputLayerNorms(model.head) as norms:
        own = loss_fn(model(x), y, mask)
        (weights * own).mean().backward()
        with torch.no_grad():
            model(x)  # an evaluation pass in between changes nothing
        factors = norms.compute(weights)
    assert torch.allclose(factors, _reference(loss_fn(model(x), y, mask), model.head), rtol=1e-8)


def test_classification_with_class_weights_and_sum_reduction():
    torch.manual_seed(0)
    model = TinyClassifier().double()
    lengths = torch.tensor([4, 2, 6, 6, 1, 3, 5])
    x = torch.randn(7, 6, 3, dtype=torch.float64) * (torch.arange(6)[None, :, None] < lengths[:, None, None])
    y = torch.randint(0, 5, (7,))
    class_weights = torch.tensor([1.0, 3.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    weights = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    norms = OutputLayerNorms(model.head)
    own = F.cross_entropy(model(x, lengths), y, weight=class_weights, reduction="none")
    (weights * own).sum().backward()
    factors = norms.compute(weights, reduction="sum")
    norms.remove()
    own = F.cross_entropy(model(x, lengths), y, weight=class_weights, reduction="none")
    assert torch.allclose(factors, _reference(own, model.head), rtol=1e-8)
    assert not model.head._forward_hooks and not model.head._backward_hooks


@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("hidden", [12, 64])
def test_a_head_called_once_per_step_gives_per_sequence_norms(chunk, hidden):
    torch.manual_seed(0)
    model = StepDecoder(hidden=hidden, chunk=chunk).double()
    x, y, mask = _lm_batch()
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0, 3.0], dtype=torch.float64)
    with OutputLayerNorms(model.head) as norms:
        lm_sequence_mean_smoothed(model(x.flip(1)), y, mask).mean().backward()  # a previous step
        model.zero_grad()
        own = lm_sequence_mean_smoothed(model(x), y, mask)  # its forward starts a new record
        (weights * own).mean().backward()
        factors = norms.compute(weights)
    assert torch.allclose(factors, _reference(lm_sequence_mean_smoothed(model(x), y, mask), model.head))


@pytest.mark.parametrize("chunk", [1, 2])
def test_the_refresh_scorer_counts_every_call_of_a_step_by_step_head(chunk):
    from seqis.importance.scoring import output_layer_scorer

    torch.manual_seed(0)
    model = StepDecoder(chunk=chunk).double()
    x, y, mask = _lm_batch()

    def per_sequence(m, i):
        return lm_sequence_mean_smoothed(m(x[i]), y[i], mask[i])

    score = output_layer_scorer(model, model.head, per_sequence, lambda i: i)
    factors = score(torch.arange(len(x)))
    assert torch.allclose(factors, _reference(lm_sequence_mean_smoothed(model(x), y, mask), model.head))


def test_calls_that_do_not_pair_up_are_refused():
    torch.manual_seed(0)
    model = StepDecoder().double()
    x, y, mask = _lm_batch()
    norms = OutputLayerNorms(model.head)
    lm_sequence_mean_smoothed(model(x), y, mask).mean().backward()
    model(x)  # a second grad-enabled forward before compute(): the record is no longer this step's
    with pytest.raises(RuntimeError, match="9 grad-enabled forward call.* but 0 backward"):
        norms.compute()
    norms.reset()
    h = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    model.head(h)  # an output that never reaches the loss: no backward call for it
    model.head(h).sum().backward()
    with pytest.raises(RuntimeError, match="2 grad-enabled forward call.* but 1 backward"):
        norms.compute()
    norms.reset()
    (model.head(h).sum() + model.head(h[:4]).sum()).backward()
    with pytest.raises(RuntimeError, match="different batch sizes"):
        norms.compute()
    norms.reset()
    with pytest.raises(RuntimeError, match="no forward and backward pass"):
        norms.compute()


def test_misuse_is_explained():
    with pytest.raises(TypeError, match="nn.Linear"):
        OutputLayerNorms(nn.GRU(2, 2))
    norms = OutputLayerNorms(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="no forward and backward pass"):
        norms.compute()


def test_public_api_and_weighted_collate_with_a_custom_collate():
    from torch.nn.utils.rnn import pad_sequence
    from torch.utils.data import DataLoader

    import seqis

    assert all(getattr(seqis, name) is not None for name in seqis.__all__)
    sequences = [torch.arange(1 + i % 5) for i in range(40)]  # variable lengths: a custom collate

    def pad_collate(items):
        return pad_sequence(items, batch_first=True), torch.tensor([len(s) for s in items])

    sampler = seqis.ImportanceSampler(range(40), batch_size=8, smoothing=0.2, seed=0)
    sampler.record(torch.arange(40), torch.linspace(0.1, 4.0, 40))
    sampler.active = True
    loader = DataLoader(
        seqis.WeightedDataset(sequences),
        batch_sampler=sampler,
        collate_fn=seqis.weighted_collate(pad_collate),
    )
    (padded, lengths), index, weight = next(iter(loader))
    assert padded.shape[0] == 8 and lengths.tolist() == [1 + i % 5 for i in index.tolist()]
    probabilities = sampler.probabilities()
    assert torch.allclose(
        weight.double(), torch.from_numpy(1 / (40 * probabilities[index.numpy()])), rtol=1e-6
    )
