"""Per-sequence importance factors, computed from a forward pass without autograd.

The FIM factor of sequence i is the exact Frobenius norm of the gradient of its loss
L_i = (1/n_i) sum_t m_t CE_t with respect to the output layer (weights and bias):

    dL_i/d[W b] = (1/n_i) sum_t m_t delta_t [h_t; 1]^T,   delta_t = softmax(o_t) - onehot(y_t)

so ||.||_F^2 = (1/n_i^2) sum_{t,t'} m_t m_t' (delta_t . delta_t') (h_t . h_t' + 1).
The hidden states are the "mined" feature vectors that a sequence otherwise lacks.
We evaluate either that Gram form (cost ~ T^2 (K + H) per sequence) or the outer
product directly (cost ~ T K H), whichever is cheaper for the shapes at hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from seqis.data.base import Batch
from seqis.models.rnn import ModelOutput


def _deltas(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Masked, loss-normalised output-layer error signals ``(B, T, K)``."""
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half precision is too coarse
    mask = mask.to(dtype)
    n = mask.sum(1).clamp_min(1)
    delta = torch.softmax(logits.detach().to(dtype), dim=-1)
    minus_one = torch.full(targets.shape + (1,), -1.0, dtype=dtype, device=delta.device)
    delta.scatter_add_(-1, targets.unsqueeze(-1), minus_one)
    delta = delta * (mask / n.unsqueeze(1)).unsqueeze(-1)
    return delta


def _sequence_axes(logits: Tensor, hidden: Tensor, targets: Tensor, mask: Tensor | None):
    """Classification outputs ``(B, K)`` get a time axis of one; the mask defaults to all steps."""
    if logits.dim() == 2:
        logits, hidden, targets = logits.unsqueeze(1), hidden.unsqueeze(1), targets.unsqueeze(1)
        mask = mask.unsqueeze(1) if mask is not None else None
    return logits, hidden, targets, torch.ones_like(targets, dtype=torch.bool) if mask is None else mask


def use_gram(steps: int, outputs: int, hidden: int) -> bool:
    """Whether the Gram form (~T^2 (K + H) a sequence) is cheaper than the outer product (~T K H)."""
    return steps * outputs * hidden > steps * steps * (outputs + hidden)


@torch.no_grad()
def fim_factors(logits: Tensor, hidden: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Exact per-sequence output-layer gradient norms, ``(B,)``, without autograd.

    For softmax cross-entropy averaged over each sequence's real steps: ``logits`` ``(B, T, K)``
    or ``(B, K)`` are the output layer's outputs, ``hidden`` ``(B, T, H)`` or ``(B, H)`` its
    inputs, ``targets`` the class ids, ``mask`` true at real steps (default: all). For any other
    loss, :class:`seqis.importance.hooks.OutputLayerNorms` reads the norms off the backward pass.
    """
    if logits.dim() == 2:
        return _one_output_norms(logits, hidden, targets, mask)
    if logits.shape[1] == 1:  # a classifier's single step, with a time axis
        mask = None if mask is None else mask[:, 0]
        return _one_output_norms(logits[:, 0], hidden[:, 0], targets[:, 0], mask)
    logits, hidden, targets, mask = _sequence_axes(logits, hidden, targets, mask)
    delta = _deltas(logits, targets, mask)
    return output_layer_norms(delta, hidden.detach().to(delta.dtype))


def _one_output_norms(logits: Tensor, hidden: Tensor, targets: Tensor, mask: Tensor | None) -> Tensor:
    """One output a sequence: ||delta [h; 1]^T||_F = ||delta|| sqrt(|h|^2 + 1). It runs on every
    step of a classifier, so on the CPU it runs in NumPy, whose small-array calls cost a fraction
    of torch's (half the time at batch 16); on a GPU it stays on the device."""
    if logits.device.type == "cpu":
        return _one_output_norms_numpy(logits, hidden, targets, mask)
    return _one_output_norms_torch(logits, hidden, targets, mask)


def _one_output_norms_torch(logits: Tensor, hidden: Tensor, targets: Tensor, mask: Tensor | None) -> Tensor:
    dtype = torch.promote_types(logits.dtype, torch.float32)
    delta = torch.softmax(logits.detach().to(dtype), dim=-1)
    minus_one = torch.full((len(targets), 1), -1.0, dtype=dtype, device=delta.device)
    delta.scatter_add_(-1, targets.unsqueeze(-1), minus_one)
    norms = delta.pow(2).sum(1).mul_(hidden.detach().to(dtype).pow(2).sum(1).add_(1)).sqrt_()
    return norms if mask is None else norms * mask.to(dtype)


def _one_output_norms_numpy(logits: Tensor, hidden: Tensor, targets: Tensor, mask: Tensor | None) -> Tensor:
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half precision is too coarse
    z, h = logits.detach().to(dtype).numpy(), hidden.detach().to(dtype).numpy()
    delta = np.exp(z - z.max(1, keepdims=True))
    delta /= delta.sum(1, keepdims=True)
    delta[np.arange(len(delta)), targets.numpy()] -= 1.0
    norms = np.sqrt(np.einsum("ij,ij->i", delta, delta) * (1.0 + np.einsum("ij,ij->i", h, h)))
    return torch.from_numpy(norms if mask is None else norms * mask.numpy())


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compared by identity
class PendingFactors:
    """A classifier batch's FIM factors, not yet computed: the output layer's outputs
    ``(B, [1,] K)``, inputs ``(B, [1,] H)``, targets and mask of the batch's first ``count``
    sequences, held so that the miner computes many steps' factors in one call
    (:meth:`compute`). On the CPU at classifier sizes each call's fixed cost outweighs its
    arithmetic: a JapaneseVowels batch of 16 takes ~90 µs alone, a fifth of that in eights."""

    logits: Tensor
    hidden: Tensor
    targets: Tensor
    mask: Tensor | None
    count: int

    def __len__(self) -> int:
        return self.count

    def first(self, count: int) -> PendingFactors:
        """The factors of the first ``count`` of these sequences, still pending."""
        return replace(self, count=min(count, self.count))

    @staticmethod
    @torch.no_grad()
    def compute(pending: Sequence[PendingFactors]) -> list[Tensor]:
        """Each one's factors (exactly those :func:`fim_factors` gives it alone), from one call."""
        if not pending:
            return []
        if len({p.logits.dim() for p in pending}) > 1:
            return [PendingFactors.compute([p])[0] for p in pending]

        def joined(parts: list[Tensor]) -> Tensor:
            pairs = zip(parts, pending, strict=True)
            heads = [t if t.shape[0] == p.count else t[: p.count] for t, p in pairs]
            whole = torch.cat(heads)
            return whole[:, 0] if pending[0].logits.dim() == 3 else whole  # the time axis of one

        mask = None
        if any(p.mask is not None for p in pending):
            real = torch.ones_like  # a batch without a mask: every sequence real
            mask = joined([real(p.targets, dtype=torch.bool) if p.mask is None else p.mask for p in pending])
        logits, hidden = joined([p.logits for p in pending]), joined([p.hidden for p in pending])
        norms = _one_output_norms(logits, hidden, joined([p.targets for p in pending]), mask)
        return list(torch.split(norms, [p.count for p in pending]))


def harvest_fim(
    logits: Tensor, hidden: Tensor, targets: Tensor, mask: Tensor | None = None, count: int | None = None
) -> Tensor | PendingFactors:
    """:func:`fim_factors` of the first ``count`` sequences (default: all), or, for a classifier
    batch on the CPU, :class:`PendingFactors` for the miner to compute later with other steps'
    (on a GPU nothing waits for them: they are computed at once)."""
    count = logits.shape[0] if count is None else min(count, logits.shape[0])
    if logits.device.type == "cpu" and (logits.dim() == 2 or logits.shape[1] == 1):
        return PendingFactors(logits.detach(), hidden.detach(), targets, mask, count)
    mask = None if mask is None else mask[:count]
    return fim_factors(logits[:count], hidden[:count], targets[:count], mask)


@torch.no_grad()
def output_layer_norms(grads: Tensor, inputs: Tensor) -> Tensor:
    """||sum_t g_t a_t^T||_F^2 + ||sum_t g_t||^2, square-rooted, per sequence: ``(B,)``.

    ``grads`` ``(B, T, K)`` are the loss gradients w.r.t. a linear layer's outputs (zero at
    padded steps), ``inputs`` ``(B, T, H)`` its inputs. The weight and bias gradients are taken
    apart (rather than through [a; 1], which would copy the inputs); the weight term by the
    outer product or the Gram form, whichever is cheaper for the shapes.
    """
    b, t, k = grads.shape
    h = inputs.shape[-1]
    bias_sq = grads.sum(1).pow(2).sum(1)
    if t == 1:  # classification: the outer product's norm is the product of the norms
        weight_sq = grads.pow(2).sum((1, 2)) * inputs.pow(2).sum((1, 2))
    elif not use_gram(t, k, h):
        weight_sq = torch.bmm(grads.transpose(1, 2), inputs).pow(2).sum((1, 2))
    else:  # Gram form: sum_{t,t'} (g_t . g_t') (a_t . a_t')
        grad_gram = torch.bmm(grads, grads.transpose(1, 2))
        weight_sq = (grad_gram * torch.bmm(inputs, inputs.transpose(1, 2))).sum((1, 2))
    return (weight_sq + bias_sq).clamp_min(0).sqrt()


@torch.no_grad()
def gradnorm_factors(out: ModelOutput) -> Tensor:
    """Katharopoulos & Fleuret's bound: sqrt(sum_t m_t ||delta_t||^2), loss-normalised."""
    delta = _deltas(out.logits, out.targets, out.mask)
    return delta.pow(2).sum((1, 2)).sqrt()


@torch.no_grad()
def loss_factors(out: ModelOutput) -> Tensor:
    """The per-sequence loss itself, as loss-proportional samplers use."""
    return out.loss.detach().float()


def exact_factors(model: nn.Module, batch) -> Tensor:
    """True full-parameter per-sequence gradient norms through ``torch.func`` (slow).

    It is the reference the cheap factors are judged against; use it on small models.
    """
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    fields = batch._fields()

    def one_loss(p, *row):
        single = type(batch)(*(x.unsqueeze(0) for x in row))
        return functional_call(model, p, (single,)).loss[0]

    was_training = model.training
    model.eval()
    try:
        grads = vmap(grad(one_loss), in_dims=(None,) + (0,) * len(fields))(params, *fields)
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    except RuntimeError:  # some RNN kernels (e.g. nn.RNN) have no batching rule: loop instead
        norms = _looped_grad_norms(model, batch, list(params))
    finally:
        model.train(was_training)
    return norms


def _looped_grad_norms(model: nn.Module, batch, names: list[str]) -> Tensor:
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    norms = []
    for i in range(len(batch.index)):
        single = type(batch)(*(x[i : i + 1] for x in batch._fields()))
        grads = torch.autograd.grad(model(single).loss[0], params)
        norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return torch.stack(norms)


# -- the registry -----------------------------------------------------------------------------
OUTPUT_LAYER = "output layer"  # norms of the output layer's gradient: the noise scale reads its |G_b|^2
WHOLE_MODEL = "whole gradient"  # norms of every parameter's gradient


@dataclass(frozen=True)
class Factor:
    """An importance factor: how seqis harvests, scores and judges it.

    ``harvest(model, batch, output, count)`` gives the factors of the first ``count`` sequences
    of a training step from its forward pass (or :class:`PendingFactors`, computed later in
    bulk); ``score(model, batch)`` gives a whole batch's from a forward-only pass (refresh,
    presampling, diagnose). ``gradient_of`` names the gradient the factors are per-sequence
    norms of (:data:`OUTPUT_LAYER` or :data:`WHOLE_MODEL`): the noise scale B is defined for
    such factors only, and reads the batch gradient of the same parameters. ``from_hooks(grads,
    inputs)`` computes the factors from an output layer's recorded output gradients ``(B, T, K)``
    and inputs ``(B, T, H)``, so that :class:`~seqis.training.own_loop.ImportanceLoader` can
    harvest it in a user's own loop (None: it cannot). ``own_pass``: it needs a pass of its own
    (it cannot rank sequences from the training pass alone).
    """

    name: str
    help: str
    harvest: Callable[[nn.Module, Batch, ModelOutput, int], Tensor | PendingFactors]
    score: Callable[[nn.Module, Batch], Tensor]
    gradient_of: str | None = None
    from_hooks: Callable[[Tensor, Tensor], Tensor] | None = None
    own_pass: bool = False


FACTORS: dict[str, Factor] = {}


def register_factor(factor: Factor) -> Factor:
    """Add ``factor`` to the registry: ``--factor NAME`` and ``MiningConfig(factor=NAME)`` take it.

    Example:
        >>> register_factor(Factor("ones", "every sequence alike", harvest=lambda m, b, out, k:
        ...     torch.ones(k), score=lambda m, b: torch.ones(len(b.index))))   # doctest: +SKIP
    """
    if factor.name in FACTORS:
        raise ValueError(f"a factor named {factor.name!r} is registered already")
    FACTORS[factor.name] = factor
    return factor


def factor_named(name: str) -> Factor:
    return FACTORS[name]


def _forward_score(of_output: Callable[[ModelOutput, Batch], Tensor]) -> Callable[[nn.Module, Batch], Tensor]:
    """A forward-only score from a function of a forward pass's outputs."""

    def score(model: nn.Module, batch: Batch) -> Tensor:
        with torch.inference_mode():
            return of_output(model(batch), batch)

    return score


def _fim_of(out: ModelOutput, batch: Batch) -> Tensor:
    return fim_factors(out.logits, out.hidden, out.targets, out.mask)


def _hooked_gradnorm(grads: Tensor, inputs: Tensor) -> Tensor:
    """K&F's bound from the output gradients alone: sqrt(sum_t ||g_t||^2)."""
    return grads.pow(2).sum((1, 2)).sqrt()


register_factor(
    Factor(
        "fim",
        "the exact norm of a sequence's output-layer gradient, from the training pass (default)",
        harvest=lambda model, batch, out, k: harvest_fim(out.logits, out.hidden, out.targets, out.mask, k),
        score=_forward_score(_fim_of),
        gradient_of=OUTPUT_LAYER,
        from_hooks=output_layer_norms,
    )
)
register_factor(
    Factor(
        "gradnorm",
        "Katharopoulos & Fleuret's bound, the norm of the loss gradient w.r.t. the logits",
        harvest=lambda model, batch, out, k: gradnorm_factors(out.head(k)),
        score=_forward_score(lambda out, batch: gradnorm_factors(out)),
        from_hooks=_hooked_gradnorm,
    )
)
register_factor(
    Factor(
        "loss",
        "the sequence's loss",
        harvest=lambda model, batch, out, k: loss_factors(out.head(k)),
        score=_forward_score(lambda out, batch: loss_factors(out)),
    )
)


def loss_length_factors(out: ModelOutput, lengths: Tensor) -> Tensor:
    """The loss times the sequence's length: its tokens' summed loss, as a length-summed objective
    weighs it. Under ``--cost-aware`` (cost = length) draws follow loss x sqrt(length)."""
    return out.loss.detach().float() * lengths.to(out.loss.device, torch.float32)


register_factor(
    Factor(
        "loss-length",
        "the loss times the sequence's length (its tokens' summed loss)",
        harvest=lambda model, batch, out, k: loss_length_factors(out.head(k), batch.lengths[:k]),
        score=_forward_score(lambda out, batch: loss_length_factors(out, batch.lengths)),
    )
)
register_factor(
    Factor(
        "exact",
        "the true norm of the whole model's per-sequence gradient (slow: a pass of its own)",
        harvest=lambda model, batch, out, k: exact_factors(model, batch.head(k)),
        score=exact_factors,
        gradient_of=WHOLE_MODEL,
        own_pass=True,
    )
)
