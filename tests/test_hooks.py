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
