"""Learning-rate schedules over a planned budget, as practitioners train.

The factor multiplying the peak learning rate depends only on how much of the plan is done
(``progress``, a share of the planned steps or epochs, at the start of the step), so a
resumed run follows the same schedule as a straight one: the progress is restored with
the step count and the sampler, and nothing else needs saving.

- ``constant``: 1 after the warm-up;
- ``linear``: from 1 down to ``floor`` at the end of the plan;
- ``cosine``: half a cosine from 1 down to ``floor``;
- ``onecycle``: Smith's one cycle as ``torch.optim.lr_scheduler.OneCycleLR`` shapes it: a cosine
  rise from 1/25 over the warm-up, then a cosine fall to ``floor`` (needs a warm-up).

Warm-ups other than one-cycle's rise linearly from one step's share of the warm-up to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seqis.plan import Plan

SCHEDULES = ("constant", "cosine", "linear", "onecycle")
ONECYCLE_START = 1 / 25  # OneCycleLR's default div_factor


@dataclass(frozen=True)
class Schedule:
    """``factor(progress)``: the share of the peak learning rate at a point of the plan.

    Example:
        >>> schedule = Schedule("cosine", warmup=0.05, floor=0.0, step_share=1 / 1000)
        >>> round(schedule.factor(0.525), 3)      # half-way through the decay
        0.5
    """

    kind: str
    warmup: float  # share of the plan
    floor: float  # final share of the peak
    step_share: float  # one step's share of the plan

    @classmethod
    def over(cls, plan: Plan, kind: str, warmup: float = 0.0, floor: float = 0.0) -> Schedule:
        """The schedule over ``plan``'s length (steps, or its epochs in steps of a full epoch);
        ``warmup`` is a share of the plan (< 1) or a number of steps. Without a plan: no decay."""
        length = plan.length
        return cls(kind, warmup_share(warmup, length), floor, 1.0 / length)

    def factor(self, progress: float) -> float:
        if progress < self.warmup:
            rise = min(1.0, (progress + self.step_share) / self.warmup)
            if self.kind == "onecycle":
                return ONECYCLE_START + (1 - ONECYCLE_START) * 0.5 * (1 - math.cos(math.pi * rise))
            return rise
        if self.kind == "constant":
            return 1.0
        done = min(1.0, (progress - self.warmup) / max(1e-12, 1.0 - self.warmup))
        if self.kind == "linear":
            return self.floor + (1.0 - self.floor) * (1.0 - done)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * done))


def warmup_share(warmup: float, planned_steps: float) -> float:
    """``--warmup`` as a share of the plan: below 1 it is one already, else a number of steps."""
    return warmup if warmup < 1 else min(1.0, warmup / planned_steps)
