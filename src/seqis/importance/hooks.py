"""Importance factors from hooks on the user's own output layer, for any loss.

As Opacus computes per-sample gradients from hooks on the user's layers, this records a
``nn.Linear``'s inputs a (forward hook) and the loss gradients g w.r.t. its outputs (full
backward hook) during the backward pass training already runs. The gradient of the loss
w.r.t. the layer is then sum_i sum_t g_it a_it^T + sum_i sum_t g_it (bias), one term per
sequence i, so each sequence's exact output-layer gradient norm follows with no extra pass,
whatever the loss: label smoothing, class weights, token- or sequence-level normalisation.
Padded steps contribute nothing as long as the loss masks them (their g is zero).

A sequence's term carries the coefficient the loss gave it (its sampling weight, a 1/B from
a mean); dividing by that coefficient makes the factor the norm of the sequence's own loss
gradient, which is what importance sampling needs.

A layer called several times before one backward (a step-by-step decoder calls its head once
per time step) gets one term per call: each call's inputs and output gradients are kept, and
the calls are laid side by side as extra time steps, so the sums above run over calls too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from seqis.importance.factors import output_layer_norms


class OutputLayerNorms:
    """Per-sequence output-layer gradient norms, from hooks on ``layer``.

    ``norms`` turns the recorded output gradients and inputs into factors: the exact
    output-layer gradient norm (``fim``) by default, or another factor's ``from_hooks``.

    The record holds every grad-enabled forward call since it started and every backward
    call's output gradients; it starts afresh at :meth:`reset` or at the first forward after
    a backward, so a loop that calls :meth:`compute` between backward and the next forward
    needs no reset, and one that does something else in between calls :meth:`reset` per step.

    Example:
        >>> norms = OutputLayerNorms(model.head)            # the model's output nn.Linear
        >>> loss = (weights * per_sequence_loss(model(x), y)).mean()
        >>> loss.backward()
        >>> factors = norms.compute(weights)                  # (B,): one factor per sequence
        >>> sampler.record(index, factors)
    """

    def __init__(self, layer: nn.Linear, norms: Callable[[Tensor, Tensor], Tensor] = output_layer_norms):
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"OutputLayerNorms needs an nn.Linear output layer, got {type(layer).__name__}")
        self.layer = layer
        self._norms = norms  # (grads (B, T, K), inputs (B, T, H)) -> (B,): a factor's from_hooks
        self._inputs: list[Tensor] = []  # one per grad-enabled forward call, in call order
        self._grads: list[Tensor] = []  # one per backward call, in the order the hooks fired
        self._paused = False
        self._handles = [
            layer.register_forward_hook(self._save_inputs),
            layer.register_full_backward_hook(self._save_grads),
        ]

    def _save_inputs(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not torch.is_grad_enabled() or self._paused:  # evaluation leaves the training record alone
            return
        if self._grads:  # the recorded step is over: this forward belongs to the next one
            self.reset()
        self._inputs.append(inputs[0].detach())

    def _save_grads(self, module: nn.Module, grad_input, grad_output: tuple[Tensor, ...]) -> None:
        if not self._paused:
            self._grads.append(grad_output[0].detach())

    def reset(self) -> None:
        """Forget the recorded calls; a training loop calls it once per step, before the forward."""
        self._inputs, self._grads = [], []

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Passes inside (a forward-only refresh, say) leave the training batch's record alone."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _recorded(self) -> tuple[Tensor, Tensor]:
        """The recorded inputs ``(B, T, H)`` and output gradients ``(B, T, K)``, calls as time steps."""
        if not self._inputs and not self._grads:
            raise RuntimeError("no forward and backward pass through the layer since the hooks were set")
        if len(self._inputs) != len(self._grads):
            raise RuntimeError(
                f"{len(self._inputs)} grad-enabled forward call(s) through the layer but {len(self._grads)} "
                "backward call(s): every call's output must reach the loss, and compute() comes before "
                "the next forward"
            )
        # Autograd runs the calls' backward in reverse order of their forward calls.
        pairs = list(zip(self._inputs, reversed(self._grads), strict=True))
        inputs, grads = [], []
        for a, g in pairs:
            if a.dim() == 2:  # (B, H): one output per sequence (classification), or one decoder step
                a, g = a.unsqueeze(1), g.unsqueeze(1)
            if a.dim() != 3 or g.shape[:2] != a.shape[:2]:
                raise ValueError(f"expected the layer's inputs as (B, T, H) or (B, H), got {tuple(a.shape)}")
            inputs.append(a)
            grads.append(g)
        if len({len(a) for a in inputs}) > 1:
            raise RuntimeError(f"the layer's calls saw different batch sizes: {[len(a) for a in inputs]}")
        if len(pairs) == 1:  # the common case: no copy
            return inputs[0], grads[0]
        return torch.cat(inputs, dim=1), torch.cat(grads, dim=1)

    @torch.no_grad()
    def compute(
        self, weights: Tensor | None = None, reduction: str = "mean", count: int | None = None
    ) -> Tensor:
        """Factors ``(B,)`` of the recorded forward and backward calls through the layer.

        ``weights`` are the per-sequence weights multiplied into the loss (default: none);
        ``reduction`` is how the loss combined sequences: ``"mean"`` (divided by B) or ``"sum"``;
        ``count`` computes only the first ``count`` sequences' factors (the switch's sample).
        Raises ``RuntimeError`` when the forward and backward calls do not pair up.
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        inputs, grads = self._recorded()
        batch = len(inputs)
        inputs, grads = inputs[:count], grads[:count]
        dtype = torch.promote_types(grads.dtype, torch.float32)
        norms = self._norms(grads.to(dtype), inputs.to(dtype))
        coefficient = torch.ones_like(norms) if weights is None else weights.detach()[: len(norms)].to(norms)
        if reduction == "mean":
            coefficient = coefficient / batch
        return norms / coefficient.clamp_min(1e-12)

    def remove(self) -> None:
        """Take the hooks off the layer."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> OutputLayerNorms:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
