"""What a run plans to train, built once and read by everything that depends on it.

A plan is a number of steps, or of epochs, over ``sequences`` training sequences drawn in
global batches of ``batch_size`` (or no plan at all: a run stopped by time or by a target).
The learning-rate schedule follows its ``progress``; the trainer stops when it is ``done``;
``--anneal``'s uniform tail starts at ``tail_start``; the switch predicts the store's cut over
the ``horizon``. The trainer, the sampling wiring, the miner, ``seqis diagnose`` and the
analysis that replays a run's schedule all read the same :class:`Plan`.

Example:
    >>> plan = Plan(sequences=60_000, batch_size=64, epochs=2.0)
    >>> plan.length                         # in steps: what the schedule divides
    1875.0
    >>> plan.done(step=1500, epochs_done=Fraction(8, 5)), plan.horizon(step=1499)
    (False, 375)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Plan:
    """Planned ``steps`` or ``epochs`` (already the ``--budget`` share of them), or neither."""

    sequences: int  # training sequences N
    batch_size: int  # the global batch b: every rank's slice together
    steps: int | None = None
    epochs: float | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("a plan is in steps or in epochs, not both")

    @property
    def planned(self) -> bool:
        return self.steps is not None or self.epochs is not None

    @property
    def length(self) -> float:
        """The plan in steps of a full epoch's batches (``inf`` without a plan): the schedule's unit."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * self.sequences / self.batch_size
        return math.inf

    @property
    def planned_steps(self) -> int | None:
        """The plan in whole steps (an epoch plan rounded), or None without a plan."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return round(self.epochs * self.sequences / self.batch_size)
        return None

    def progress(self, step: int, epochs_done: float) -> float:
        """The share of the plan done before ``step`` (0 without a plan): the schedule's clock.

        An epoch plan follows the sampler's epochs (a pruned epoch is shorter), a step plan the steps.
        """
        if self.steps is not None:
            return step / self.steps
        if self.epochs is not None:
            return epochs_done / self.epochs
        return 0.0

    def done(self, step: int, epochs_done: Fraction) -> bool:
        """Whether the plan is complete after ``step`` steps and ``epochs_done`` epochs.

        Epochs are compared as exact fractions of whole sequences: a float sum of epoch shares
        can fall a hair short of the plan and run one step too many.
        """
        if self.steps is not None:
            return step >= self.steps
        if self.epochs is not None:
            return epochs_done >= Fraction(round(self.epochs * self.sequences), self.sequences)
        return False

    def tail_start(self, share: float) -> int | None:
        """The first step of a final ``share`` of a step plan (``--anneal``'s uniform tail)."""
        if share <= 0 or self.steps is None:
            return None
        return math.ceil((1.0 - share) * self.steps)

    def horizon(self, step: int, tail_start: int | None = None) -> int:
        """Steps left after ``step`` before the plan (or ``tail_start``) ends; an epoch without a plan."""
        end = min(self.planned_steps or math.inf, tail_start or math.inf)
        if end == math.inf:
            return max(math.ceil(self.sequences / self.batch_size), 1)
        return max(int(end) - (step + 1), 1)
