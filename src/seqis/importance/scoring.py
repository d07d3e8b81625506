"""Forward-only factors for any model and loss: the miner's refresh, outside seqis's own trainer.

Refresh re-scores sequences the training loop has not touched for a while. For a model
seqis does not know, the factor is the same one the hooks harvest during training: the
norm of each sequence's own loss gradient with respect to the output ``nn.Linear``. It
costs one forward pass with no graph through the body (every parameter but the output
layer's is frozen for the pass), plus a backward through the output layer alone.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from seqis.importance.factors import output_layer_norms

PerSequenceLoss = Callable[[nn.Module, Any], Tensor]


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


@contextmanager
def _only_layer_requires_grad(model: nn.Module, layer: nn.Linear):
    """No autograd graph through the body: only ``layer``'s parameters keep requires_grad."""
    keep = {id(p) for p in layer.parameters()}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def output_layer_scorer(
    model: nn.Module,
    output_layer: nn.Linear,
    loss_fn: PerSequenceLoss,
    fetch: Callable[[Tensor], Any],
    norms: Callable[[Tensor, Tensor], Tensor] = output_layer_norms,
) -> Callable[[Tensor], Tensor]:
    """A ``score_fn`` for :class:`~seqis.importance.mining.Miner`: dataset indices -> factors.

    ``fetch(index)`` returns the batch of those sequences as the training loop sees it (on
    the model's device); ``loss_fn(model, batch)`` returns one loss per sequence, the same
    function the loop trains with; ``norms`` turns the layer's output gradients and inputs into
    factors (a factor's ``from_hooks``; the exact gradient norm by default). The model runs in
    eval mode (no dropout) and the parameters' ``.grad`` are left untouched.

    Example:
        >>> score_fn = output_layer_scorer(model, model.head, per_sequence_loss,
        ...                                lambda idx: collate([dataset[i] for i in idx]))
        >>> miner = Miner(sampler, MiningConfig(), score_fn=score_fn)
    """
    if not isinstance(output_layer, nn.Linear):
        raise TypeError(f"the output layer must be an nn.Linear, got {type(output_layer).__name__}")
    module = getattr(model, "module", model)  # DistributedDataParallel: score without its hooks

    def score_fn(index: Tensor) -> Tensor:
        batch = fetch(index)
        was_training = module.training
        module.eval()
        try:
            with _LayerCalls(output_layer) as calls:
                inputs, grads = calls.gradients(lambda: loss_fn(module, batch), module, len(index))
        finally:
            module.train(was_training)
        return _norms_over_calls(inputs, grads, norms)

    return score_fn


class _LayerCalls:
    """Every call through ``layer`` while inside, with the loss gradients w.r.t. its outputs."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.calls: list[tuple[Tensor, Tensor]] = []  # (input, output) of every call

    def __enter__(self) -> _LayerCalls:
        self.handles = [
            self.layer.register_forward_pre_hook(self._detach_inputs),
            self.layer.register_forward_hook(self._capture),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.calls.clear()

    @staticmethod
    def _detach_inputs(layer: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        # A leaf that requires grad: the backward stops here, and full backward hooks on the
        # layer (OutputLayerNorms) see a gradient w.r.t. an input, as in training.
        return (inputs[0].detach().requires_grad_(), *inputs[1:])

    def _capture(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        # Every call: a step-by-step decoder calls its head once per time step.
        self.calls.append((inputs[0].detach(), output))

    def gradients(self, losses_of, module: nn.Module, count: int) -> tuple[list[Tensor], list[Tensor]]:
        """The layer's inputs and the per-sequence losses' gradients w.r.t. its outputs, per call."""
        with torch.enable_grad(), _only_layer_requires_grad(module, self.layer):
            losses = losses_of()
            if losses.dim() != 1 or len(losses) != count:
                raise ValueError(
                    f"loss_fn must return one loss per sequence ({count}), got shape {tuple(losses.shape)}"
                )
            if not self.calls:
                raise RuntimeError("loss_fn never called the output layer")
            outputs = [out for _, out in self.calls]
            grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
        # A call the loss does not use (a decoder's last step) has a zero gradient.
        grads = [torch.zeros_like(o) if g is None else g for g, o in zip(grads, outputs, strict=True)]
        return [inp for inp, _ in self.calls], grads


def _norms_over_calls(
    inputs: list[Tensor], grads: list[Tensor], norms: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Factors with the layer's calls laid side by side as time steps."""
    steps_in = [x.unsqueeze(1) if x.dim() == 2 else x for x in inputs]  # (B, H): one output a call
    steps_grad = [g.unsqueeze(1) if g.dim() == 2 else g for g in grads]
    dtype = torch.promote_types(steps_grad[0].dtype, torch.float32)
    return norms(torch.cat(steps_grad, 1).to(dtype), torch.cat(steps_in, 1).to(dtype)).detach()
