"""Sweeps: the whole store scored fresh while importance sampling can pay (``--sweep``).

Draws come from a store of factors that the harvest fills only as sequences are trained, so in
the first epoch it is part-scored and stale, and the cut it delivers arrives late, when a decayed
learning rate has made gradient noise matter little. A sweep scores every sequence by
forward-only passes at a large batch (``--sweep-batch``), once fresh factors promise a cut that
pays for it, and again as the factors age: the cadence follows the measured decorrelation of each
sequence's factor between two sweeps (above 0.95 the next sweep comes later, below 0.85 sooner).
The switch charges the sweeps' share of step time as part of mining's cost; the trainer's clock
counts their time.

Example:
    >>> sweeps = StoreSweeps(sequences=60_000, batch_size=64, cost_per_sequence=0.3, floor=50)
    >>> round(sweeps.share(), 3)            # 60,000 scored every 938 steps of 64
    0.3
"""

from __future__ import annotations

import math

import numpy as np


class StoreSweeps:
    """When to sweep, what it costs, and what the last sweeps measured."""

    def __init__(self, sequences: int, batch_size: int, cost_per_sequence: float, floor: int):
        self.sequences, self.batch_size, self.cost_per_sequence = sequences, batch_size, cost_per_sequence
        self.floor = floor  # steps: at most one sweep a switch decision
        self.epoch = max(floor, math.ceil(sequences / batch_size))
        self.every = self.epoch  # steps between sweeps: an epoch until decorrelation is measured
        self.last: int | None = None  # steps done at the last sweep
        self.swept: np.ndarray | None = None  # the factors it left, to measure how they age
        self.history: list[dict] = []

    def share(self, horizon: int | None = None) -> float:
        """The sweeps' predicted share of step time: every sequence scored every ``every`` steps
        (or once over a ``horizon`` of fewer steps left to use it), each at ``cost_per_sequence``
        of a trained sequence's cost."""
        steps = self.every if horizon is None else max(1, min(self.every, horizon))
        return self.sequences * self.cost_per_sequence / (steps * self.batch_size)

    def due(self, steps_done: int) -> bool:
        return self.last is not None and steps_done - self.last >= self.every

    def learn(self, factors: np.ndarray, steps_done: int) -> None:
        """A sweep's outcome: how far the factors the last sweep left still follow the fresh ones
        (correlation of their logarithms, every sequence) sets the next sweep's distance."""
        correlation = None
        if self.swept is not None:
            known = np.isfinite(self.swept) & np.isfinite(factors) & (self.swept > 0) & (factors > 0)
            if known.sum() > 100:
                correlation = float(np.corrcoef(np.log(self.swept[known]), np.log(factors[known]))[0, 1])
        if correlation is not None and correlation > 0.95:
            self.every = min(4 * self.epoch, math.ceil(1.5 * self.every))
        elif correlation is not None and correlation < 0.85:
            self.every = max(self.floor, math.floor(self.every / 1.5))
        self.history.append({"step": steps_done, "correlation": correlation, "next_after": self.every})
        self.last, self.swept = steps_done, np.array(factors, dtype=np.float64)

    def state_dict(self) -> dict:
        swept = None if self.swept is None else self.swept.copy()
        return {"every": self.every, "last": self.last, "history": list(self.history), "swept": swept}

    def load_state_dict(self, state: dict) -> None:
        self.every, self.last, self.history = state["every"], state["last"], list(state["history"])
        swept = state.get("swept")
        self.swept = None if swept is None else np.asarray(swept, dtype=np.float64)
