"""One home per option: a config dataclass field carries its default, its flag and its help.

Each config dataclass (``DataOptions``, ``ModelConfig``, ``MiningConfig``, ``TrainConfig``)
validates its own fields in ``__post_init__`` and raises :class:`~seqis.errors.ConfigError`
with a one-line message; ``seqis.cli`` builds its flags from the same fields, so a default,
a range and a help text are each written once.

Example:
    >>> @dataclass
    ... class Opts:
    ...     lr: float = option(2e-3, "learning rate")
    ...     def __post_init__(self):
    ...         check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, field
from typing import Any

from seqis.errors import ConfigError


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    cli: bool = True,
    commands: tuple[str, ...] = ("train", "diagnose", "compare"),
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field with its command-line spelling; ``cli=False`` keeps it library-only.

    ``flag`` defaults to the field name with dashes; a ``bool`` field defaulting to True is
    spelled ``--no-NAME`` on the command line; ``commands`` lists the subcommands that offer it.
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "cli": cli, "commands": commands}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def flag_name(f: Field) -> str:
    """The field's command-line flag, e.g. ``--batch-size`` for ``batch_size``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def positive(value: float | int | None, name: str) -> None:
    """``value`` (when given) is a finite number > 0."""
    if value is not None:
        check(value > 0 and math.isfinite(value), f"--{name} must be a positive number, got {value}")


def at_least_one(value: int | None, name: str) -> None:
    if value is not None:
        check(value >= 1, f"--{name} must be >= 1, got {value}")


def within(value: float, low: float, high: float, name: str, closed_low: bool = True, closed_high=True):
    """``value`` in the interval, its brackets as given; the message shows the interval."""
    ok_low = value >= low if closed_low else value > low
    ok_high = value <= high if closed_high else value < high
    interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"
    check(ok_low and ok_high, f"--{name} must be in {interval}, got {value}")


def one_of(value: str, choices: tuple[str, ...] | list[str], name: str) -> None:
    check(value in choices, f"unknown --{name} {value!r}; choose from {', '.join(choices)}")
