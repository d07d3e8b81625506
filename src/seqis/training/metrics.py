"""Metrics to ``metrics.csv`` (always) and TensorBoard (when it is installed)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

COLUMNS = [
    "step",
    "wall_time_s",
    "train_loss",
    "val_loss",
    "val_acc",
    "train_eval_loss",
    "is_active",
    "mining_time_s",
    "lr",
    "clipped_share",
    "noise_scale",
    "variance_cut",
    "predicted_step_gain",
    "predicted_step_gain_lr_retuned",
]


class MetricsLog:
    """Append-only rows, rewritten whole on resume so the file matches the checkpoint."""

    def __init__(
        self, out: Path, rows: list[dict] | None = None, tensorboard: bool = True, write: bool = True
    ):
        self.path = Path(out) / "metrics.csv"
        self.rows: list[dict] = list(rows or [])
        self.write = write  # False on non-main ranks: rows are kept, no files are written
        self._tb = None
        if not write:
            return
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out) / "tensorboard"))
            except ImportError:  # optional: CSV is the record, TensorBoard a convenience
                self._tb = None

    def log(self, row: dict) -> None:
        row = {k: row.get(k) for k in COLUMNS}
        self.rows.append(row)
        if not self.write:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)
        if self._tb is not None:
            for key in ("train_loss", "val_loss", "val_acc", "train_eval_loss", "mining_time_s"):
                value = row.get(key)
                if value is not None and math.isfinite(value):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``metrics.csv`` with numbers parsed (empty cells become None)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    return rows
