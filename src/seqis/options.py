"""One home per option: a config dataclass field carries its default, its flag, its help and
whether it may change when a run resumes.

Each config dataclass (``DataOptions``, ``ModelConfig``, ``MiningConfig``, ``TrainConfig``,
``RaceConfig``) validates its own fields in ``__post_init__`` and raises
:class:`~seqis.errors.ConfigError` with a one-line message; ``seqis.cli`` builds its flags from
the same fields, so a default, a range and a help text are each written once. A message names
an option as its reader knows it: ``MiningConfig.smoothing`` in a library call, ``--smoothing``
on the command line (the CLI validates inside :func:`spelled_as_flags`).

Example:
    >>> @dataclass
    ... class Opts:
    ...     lr: float = option(2e-3, "learning rate")
    ...     def __post_init__(self):
    ...         positive(self, "lr")
    >>> Opts(lr=-1)
    Traceback (most recent call last):
    seqis.errors.ConfigError: Opts.lr must be a positive number, got -1
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import MISSING, Field, field, fields
from typing import Any

from seqis.errors import ConfigError

# Whether a changed value is accepted when a run resumes (``TrainConfig.changes_from``):
KEEP = "keep"  # it changes what the run trains: must match the checkpoint
MAY_CHANGE = "may change"  # when the run stops, where it writes, what it measures
PLAN = "plan"  # the plan: may change only where nothing the run does depends on it

_SPELLING: ContextVar[str] = ContextVar("seqis_option_spelling", default="field")


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: Container[str] | None = None,
    cli: bool = True,
    commands: tuple[str, ...] = ("train", "diagnose", "compare", "demo"),
    command_defaults: dict[str, Any] | None = None,
    resume: str = KEEP,
    reader: type | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field with its command-line spelling; ``cli=False`` keeps it library-only.

    ``flag`` defaults to the field name with dashes; a ``bool`` field defaulting to True is
    spelled ``--no-NAME`` on the command line; ``commands`` lists the subcommands that offer it,
    ``command_defaults`` a default of its own for some of them; ``resume`` is :data:`KEEP`,
    :data:`MAY_CHANGE` or :data:`PLAN`; ``reader`` reads the flag's text when the field's type
    is not ``int``, ``float`` or ``str`` (the dataclass parses it). ``choices`` may be a live
    registry (a dict): a name registered later is accepted too.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "cli": cli,
        "commands": commands,
        "command_defaults": command_defaults or {},
        "resume": resume,
        "reader": reader,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@contextmanager
def spelled_as_flags() -> Iterator[None]:
    """Inside, messages name options by their command-line flags (``--smoothing``)."""
    token = _SPELLING.set("flag")
    try:
        yield
    finally:
        _SPELLING.reset(token)


def flag_name(f: Field) -> str:
    """The field's command-line flag, e.g. ``--batch-size`` for ``batch_size``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def name(owner: object, field_name: str) -> str:
    """How a message names ``owner``'s option: ``--flag`` on the command line, else ``Class.field``."""
    cls = owner if isinstance(owner, type) else type(owner)
    if _SPELLING.get() == "flag":
        known = {f.name: f for f in fields(cls)}
        return flag_name(known[field_name]) if field_name in known else "--" + field_name.replace("_", "-")
    return f"{cls.__name__}.{field_name}"


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def positive(owner: object, field_name: str) -> None:
    """The field (when set) is a finite number > 0."""
    value = getattr(owner, field_name)
    if value is not None:
        check(
            value > 0 and math.isfinite(value),
            f"{name(owner, field_name)} must be a positive number, got {value}",
        )


def at_least(owner: object, field_name: str, low: int = 1) -> None:
    """The field (when set) is at least ``low``."""
    value = getattr(owner, field_name)
    if value is not None:
        check(value >= low, f"{name(owner, field_name)} must be >= {low}, got {value}")


def within(
    owner: object,
    field_name: str,
    low: float,
    high: float,
    closed_low: bool = True,
    closed_high: bool = True,
) -> None:
    """The field lies in the interval, its brackets as given; the message shows the interval."""
    value = getattr(owner, field_name)
    ok_low = value >= low if closed_low else value > low
    ok_high = value <= high if closed_high else value < high
    interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"
    check(ok_low and ok_high, f"{name(owner, field_name)} must be in {interval}, got {value}")


def one_of(owner: object, field_name: str, choices: Container[str]) -> None:
    """The field is one of ``choices`` (a tuple, or a live registry)."""
    value = getattr(owner, field_name)
    check(
        value in choices,
        f"unknown {name(owner, field_name)} {value!r}; choose from {', '.join(choices)}",  # type: ignore[arg-type]
    )


def resume_rule(f: Field) -> str:
    """Whether ``f`` may change on resume: :data:`KEEP`, :data:`MAY_CHANGE` or :data:`PLAN`."""
    return f.metadata.get("resume", KEEP)
