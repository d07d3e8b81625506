import pytest
import torch

from seqis.data.registry import DataOptions, load_data
from seqis.importance import factors
from seqis.importance.factors import exact_factors, fim_factors, gradnorm_factors, use_gram
from seqis.models.rnn import ModelConfig, RecurrentModel


def _model(data, cell="gru", hidden=16):
    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, hidden_size=hidden, num_layers=1, embed_size=8)
    return RecurrentModel(data.task, data.input_size, data.num_outputs, cfg).double()


def _double(batch):
    if batch.inputs.is_floating_point():
        batch.inputs = batch.inputs.double()
    return batch


@pytest.fixture(scope="module")
def lines_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "lines.txt"
    path.write_text("\n".join("x" * (1 + i % 9) + " yz" * (i % 4) for i in range(60)))
    return load_data(f"lines:{path}", DataOptions(seq_len=12))


def output_layer_grad_norms(model, batch) -> torch.Tensor:
    """Autograd reference: one backward per sequence, norm of the output layer's gradient."""
    norms = []
    for i in range(len(batch.index)):
        single = type(batch)(*(x[i : i + 1] for x in batch._fields()))
        grads = torch.autograd.grad(model(single).loss[0], [model.head.weight, model.head.bias])
        norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return torch.stack(norms)


@pytest.fixture(scope="module")
def rich_lines(tmp_path_factory):
    """Short lines over a large alphabet: K H > T (K + H), so fim takes the Gram form."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    path = tmp_path_factory.mktemp("r") / "rich.txt"
    path.write_text("\n".join(alphabet[i % 50 : i % 50 + 2 + i % 6] for i in range(80)))
    return load_data(f"lines:{path}", DataOptions(seq_len=8))


@pytest.fixture(scope="module")
def vowels():
    return load_data("ucr:JapaneseVowels")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_per_sequence_losses_average_to_batch_loss(vowels, cell):
    model = _model(vowels, cell)
    batch = _double(vowels.batch(torch.arange(20)))
    out = model(batch)
    assert out.loss.shape == (20,)
    logits = out.logits[:, 0]
    batch_loss = torch.nn.functional.cross_entropy(logits, batch.targets)
    assert torch.allclose(out.loss.mean(), batch_loss)


def test_padding_never_counts(lines_data):
    model = _model(lines_data, "lstm")
    batch = lines_data.batch(torch.arange(10))
    assert batch.lengths.min() < batch.lengths.max()
    together = model(batch).loss
    alone = torch.stack([model(lines_data.batch(torch.tensor([i]))).loss[0] for i in range(10)])
    assert torch.allclose(together, alone, atol=1e-10)
    # fixed-length LM: per-sequence means average to the token mean
    stdlib = load_data("stdlib", DataOptions(seq_len=20, max_chars=2000))
    m = _model(stdlib)
    out = m(stdlib.batch(torch.arange(6)))
    ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), out.targets.flatten())
    assert torch.allclose(out.loss.mean(), ce)


@pytest.mark.parametrize("data_name,gram", [("lines_data", False), ("rich_lines", True)])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fim_equals_autograd_lm_with_padding(request, data_name, gram, cell):
    data = request.getfixturevalue(data_name)
    model = _model(data, cell, hidden=32)
    batch = data.batch(torch.arange(12))
    assert batch.lengths.min() < batch.lengths.max()  # padded
    out = model(batch)
    assert use_gram(out.logits.shape[1], out.logits.shape[2], 32) == gram
    fim = fim_factors(out.logits, out.hidden, out.targets, out.mask)
    assert torch.allclose(fim.double(), output_layer_grad_norms(model, batch), rtol=1e-5)


def test_fim_equals_autograd_classification(vowels):
    model = _model(vowels, "gru")
    batch = _double(vowels.batch(torch.arange(0, 640, 40)))
    assert batch.lengths.min() < batch.lengths.max()
    out = model(batch)
    fim = fim_factors(out.logits[:, 0], out.hidden[:, 0], out.targets[:, 0])  # (B, K): no time axis
    assert torch.allclose(fim.double(), output_layer_grad_norms(model, batch), rtol=1e-5)
    assert torch.equal(fim_factors(out.logits, out.hidden, out.targets, out.mask), fim)  # (B, 1, K)
    mask = torch.ones(len(fim), 1, dtype=torch.bool)
    mask[3] = False  # a sequence with no real step has no gradient
    masked = fim_factors(out.logits, out.hidden, out.targets, mask)
    assert masked[3] == 0 and torch.equal(masked[4:], fim[4:])
    # the device path (torch ops) and the CPU path (NumPy) agree; bfloat16 is computed in float32
    on_device = factors._one_output_norms_torch(out.logits[:, 0], out.hidden[:, 0], out.targets[:, 0], None)
    assert torch.allclose(on_device, fim, rtol=1e-6)
    low = fim_factors(out.logits.bfloat16(), out.hidden.bfloat16(), out.targets)
    assert low.dtype == torch.float32 and torch.allclose(low.double(), fim, rtol=0.05)


def test_gradnorm_bounds_and_exact_matches_loop(vowels):
    model = _model(vowels, "rnn")
    batch = _double(vowels.batch(torch.arange(8)))
    g = gradnorm_factors(model(batch))
    assert (g > 0).all()
    exact = exact_factors(model, batch)
    loop = []
    for i in range(8):
        model.zero_grad()
        model(_double(vowels.batch(torch.tensor([i])))).loss[0].backward()
        loop.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())))
    assert torch.allclose(exact, torch.stack(loop), rtol=1e-6)


def test_pending_factors_are_those_computed_batch_by_batch(vowels):
    """Held classifier outputs, computed many steps in one call, give each batch exactly its own factors."""
    model = _model(vowels, "gru")
    outs = [model(_double(vowels.batch(torch.arange(start, start + 16)))) for start in (0, 16, 32)]
    mask = torch.ones(16, 1, dtype=torch.bool)
    mask[5] = False
    counts, masks = (16, 8, 16), (None, mask, None)
    pending = [
        factors.harvest_fim(o.logits, o.hidden, o.targets, m, count=k)
        for o, m, k in zip(outs, masks, counts, strict=True)
    ]
    assert all(isinstance(p, factors.PendingFactors) for p in pending)
    together = factors.PendingFactors.compute(pending)
    for o, m, k, got in zip(outs, masks, counts, together, strict=True):
        alone = fim_factors(o.logits[:k], o.hidden[:k], o.targets[:k], None if m is None else m[:k])
        assert torch.equal(got, alone)
    # (B, K) outputs without a time axis, and sequence outputs, which are never held
    flat = factors.harvest_fim(outs[0].logits[:, 0], outs[0].hidden[:, 0], outs[0].targets[:, 0])
    assert torch.equal(factors.PendingFactors.compute([flat])[0], together[0])
    lm = torch.randn(4, 7, 5), torch.randn(4, 7, 3), torch.randint(0, 5, (4, 7))
    assert torch.equal(factors.harvest_fim(*lm, count=2), fim_factors(*(t[:2] for t in lm)))


def test_the_loss_length_factor_is_the_summed_loss_and_draws_cost_aware(vowels, tmp_path):
    """A factor added through the registry alone: harvest, score, --factor and cost-aware draws."""
    from seqis.cli import main

    model, batch = _model(vowels), _double(vowels.batch(vowels.train_idx[:8]))
    out = model(batch)
    factor = factors.FACTORS["loss-length"]
    summed = (out.loss * batch.lengths).detach().float()
    assert torch.allclose(factor.harvest(model, batch, out, 5), summed[:5])
    assert torch.allclose(factor.score(model, batch), summed)
    assert factor.gradient_of is None and factor.from_hooks is None  # no noise scale, no own loop
    args = ["train", "--data", "ucr:JapaneseVowels", "--factor", "loss-length", "--cost-aware", "--pack"]
    args += ["--always-on", "--steps", "60", "--hidden", "8", "--layers", "1", "--no-progress"]
    assert main([*args, "--threads", "1", "--out", str(tmp_path)]) == 0
