"""Where a run stands: what the loop changes besides the model, the optimizer and sampling."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class RunState:
    """Step, clock and the counters a summary and a resumed run need.

    ``clock`` counts seconds of training work (mining included), not validation or
    checkpoint writes; the window holds the steps since the last validation.

    Example:
        >>> state = RunState()
        >>> state.end_step(loss=0.7, clipped=True, seconds=0.01)
        >>> state.take_window()
        (0.7, 1, 1)
    """

    step: int = 0
    clock: float = 0.0
    skipped: int = 0  # steps with a non-finite loss, skipped (--skip-nonfinite)
    clipped_steps: int = 0
    time_to_target: float | None = None
    init_sha: str = ""  # the parameters every sampler of a seed starts from
    window_losses: list[float] = field(default_factory=list)
    window_clipped: int = 0
    real_positions: int = 0  # sequence steps trained (this rank's slices)
    padded_positions: int = 0  # the same with the padding their batches carried

    def count_positions(self, real: int, padded: int) -> None:
        """A batch's real positions and those it paid for (batch x longest; packed: the real ones)."""
        self.real_positions += real
        self.padded_positions += padded

    def end_step(self, loss: float, clipped: bool, seconds: float) -> None:
        """Count a finished step: its weighted loss (unbiased under importance draws), clipping, time."""
        self.clock += seconds
        self.step += 1
        self.clipped_steps += clipped
        self.window_clipped += clipped
        self.window_losses.append(loss)

    def take_window(self) -> tuple[float | None, int, int]:
        """Mean training loss, steps and clipped steps since the last call; starts a new window."""
        losses, clipped = self.window_losses, self.window_clipped
        self.window_losses, self.window_clipped = [], 0
        return (float(np.mean(losses)) if losses else None), len(losses), clipped

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
