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

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from seqis.importance.factors import output_layer_norms


class _Pausable:
    """Hooks a forward-only pass (a refresh) must leave alone: inside :meth:`paused` they record nothing."""

    _paused = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._paused = True
        try:
            yield
        finally:
            self._paused = False


def _parameter_behind(node: Any, hops: int = 2) -> Tensor | None:
    """The leaf tensor an autograd node reads, directly or through up to ``hops`` single-input
    nodes (a linear layer's weight arrives transposed: ``TBackward`` before its leaf)."""
    for _ in range(hops + 1):
        variable = getattr(node, "variable", None)
        if variable is not None:
            return variable
        inputs = [n for n, _ in node.next_functions if n is not None]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


class OutputLayerNorms(_Pausable):
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
        self._outputs: list = []  # their outputs' autograd nodes (for read_by)
        self._grads: list[Tensor] = []  # one per backward call, in the order the hooks fired
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
        self._outputs.append(output.grad_fn)

    def _save_grads(self, module: nn.Module, grad_input, grad_output: tuple[Tensor, ...]) -> None:
        if not self._paused:
            self._grads.append(grad_output[0].detach())

    def reset(self) -> None:
        """Forget the recorded calls; a training loop calls it once per step, before the forward."""
        self._inputs, self._grads, self._outputs = [], [], []

    def read_by(self, loss: Tensor) -> bool:
        """Whether ``loss`` reads the layer's recorded outputs with no other trained layer in
        between (as the output layer's are read): the autograd graph is walked back from the loss,
        and an operation fed by another layer's weight matrix ends a path (scalars and vectors, a
        temperature or a bias, do not). True when nothing was recorded or the loss has no graph."""
        targets = {id(fn) for fn in self._outputs if fn is not None}
        if not targets or loss.grad_fn is None:
            return True
        own = {id(p) for p in self.layer.parameters()}
        kept, seen, queue = [], set(), [loss.grad_fn]  # kept: live nodes, so their ids stay unique
        while queue:
            fn = queue.pop()
            if id(fn) in seen:
                continue
            kept.append(fn)
            seen.add(id(fn))
            if id(fn) in targets:
                return True
            feeding = [n for n, _ in fn.next_functions if n is not None]
            weights = [_parameter_behind(n) for n in feeding]
            if any(isinstance(w, nn.Parameter) and w.dim() >= 2 and id(w) not in own for w in weights):
                continue  # another layer's operation: the loss reads that layer, not this one
            queue.extend(feeding)
        return False

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
        self,
        weights: Tensor | None = None,
        reduction: str = "mean",
        count: int | None = None,
        coefficients: Tensor | None = None,
    ) -> Tensor:
        """Factors ``(B,)`` of the recorded forward and backward calls through the layer.

        ``coefficients`` are each sequence's coefficient in the loss that was backpropagated
        (d loss / d loss_i, :class:`LossCoefficients`); without them, ``weights`` are the
        per-sequence weights multiplied into the loss (default: none) and ``reduction`` how the
        loss combined sequences: ``"mean"`` (divided by B) or ``"sum"``. ``count`` computes only
        the first ``count`` sequences' factors (the switch's sample). Raises ``RuntimeError`` when
        the forward and backward calls do not pair up, ``ValueError`` when the layer saw other
        rows than the batch's sequences.
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        inputs, grads = self._recorded()
        batch = len(inputs)
        known = coefficients if coefficients is not None else weights
        if known is not None and len(known) != batch:
            raise ValueError(
                f"the output layer saw {batch} rows for a batch of {len(known)} sequences: seqis needs "
                "it applied per sequence, to (B, H) or (B, T, H), batch first; a layer applied to "
                "PackedSequence.data, to time-major (T, B, H) or flattened (B*T, H) states mixes them"
            )
        inputs, grads = inputs[:count], grads[:count]
        dtype = torch.promote_types(grads.dtype, torch.float32)
        norms = self._norms(grads.to(dtype), inputs.to(dtype))
        if coefficients is not None:
            coefficient = coefficients.detach()[: len(norms)].to(norms).abs()
        elif weights is not None:
            coefficient = weights.detach()[: len(norms)].to(norms) / (batch if reduction == "mean" else 1)
        else:
            coefficient = torch.full_like(norms, 1.0 / batch if reduction == "mean" else 1.0)
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


class LossCoefficients:
    """Each sequence's coefficient in the loss a loop backpropagates, d loss / d loss_i, from a
    hook on the per-sequence losses: a mean's 1/B, a sum's 1, gradient accumulation's 1/k, a
    mixed-precision loss scale, whatever the loop does to them after weighing.

    Example:
        >>> coefficients = LossCoefficients()
        >>> per_seq = model_losses(batch); coefficients.watch(per_seq)
        >>> (per_seq.mean() / 4).backward()          # accumulating 4 micro-batches
        >>> coefficients.value                         # 1 / (4 B) each          # doctest: +SKIP
    """

    def __init__(self):
        self.value: Tensor | None = None

    def reset(self) -> None:
        """A new batch: no coefficients until its backward pass."""
        self.value = None

    def watch(self, per_sequence_loss: Tensor) -> None:
        """Capture the coefficients of these losses when the backward pass reaches them (a loss
        without a graph, weighed for logging, changes nothing)."""
        if per_sequence_loss.requires_grad:
            per_sequence_loss.register_hook(self._capture)

    def _capture(self, grad: Tensor) -> None:
        self.value = grad.detach()


class BatchGradient(_Pausable):
    """The squared norm of a layer's gradient from one backward pass alone, before any clipping.

    Read as the gradient lands in ``.grad`` (post-accumulate hooks). When ``.grad`` already held
    an earlier pass's gradient (gradient accumulation), the value is NaN: the pass's own gradient
    is not there to read, and the noise scale skips it. Whether ``.grad`` was empty is checked
    when the layer's output gradient arrives, before anything accumulates, without waiting on
    the device.
    """

    def __init__(self, layer: nn.Module):
        self._params = [p for p in layer.parameters() if p.requires_grad]
        self._parts: dict[int, Tensor] = {}
        self._empty: Tensor | None = None  # whether every .grad was empty before this pass
        self._watching = False
        self._handles = [p.register_post_accumulate_grad_hook(self._record) for p in self._params]
        self._handles.append(layer.register_forward_hook(self._watch_output))

    def _watch_output(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if self._watching or self._paused or not (torch.is_grad_enabled() and output.requires_grad):
            return
        self._watching = True
        output.register_hook(self._before_accumulation)

    def _before_accumulation(self, grad: Tensor) -> None:
        if self._empty is None:
            held = [p.grad.detach().any() for p in self._params if p.grad is not None]
            self._empty = ~torch.stack(held).any() if held else torch.tensor(True)

    def _record(self, param: Tensor) -> None:
        if not self._paused:
            self._parts[id(param)] = param.grad.detach().float().pow(2).sum()  # half precision is too coarse

    def reset(self) -> None:
        """A new batch: forget the last pass."""
        self._parts.clear()
        self._empty, self._watching = None, False

    def value(self) -> Tensor | None:
        """A 0-d tensor on the layer's device (read without waiting for it), NaN when the pass's
        own gradient was mixed with an earlier one; None until every parameter got its gradient."""
        if len(self._parts) < len(self._params):
            return None
        total = torch.stack(list(self._parts.values())).sum()
        if self._empty is None:
            return total
        return torch.where(self._empty.to(total.device), total, torch.full_like(total, math.nan))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
