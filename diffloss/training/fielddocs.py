"""What each :class:`TrainConfig` field means and which values it takes, for the command line.

One source: the help of every ``diffloss train`` option is read from the field's entry in
``TrainConfig``'s docstring (``name: text`` lines, several names may share one entry), and the
fixed sets of values come from the same tuples that validate the config. Nothing here is typed
twice.
"""

from __future__ import annotations

import dataclasses
import re

from .config import DATA, MIXED_PRECISION, SCHEDULES, TrainConfig
from .tasks import TASKS
from .terms import PRIOR_INPUTS, valid_losses

__all__ = ["FIELD_CHOICES", "field_docs", "plain"]

#: Fields with a fixed set of values: the command line offers exactly these.
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "task": tuple(TASKS),
    "data": DATA,
    "schedule": SCHEDULES,
    "mixed_precision": MIXED_PRECISION,
    "size_policy": ("crop", "resize"),
    "prior_input": PRIOR_INPUTS,
}
#: Fields whose values are combinations (``l1+diffloss+perceptual``): listed, checked on parse.
FIELD_EXAMPLES: dict[str, list[str]] = {"loss": valid_losses()}

_ENTRY = re.compile(r"^ {8}([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.*)$")
_ROLE = re.compile(r":(?:class|func|meth|attr|data):`~?([^`]+)`")


def plain(text: str) -> str:
    """reST markup → plain text: ``x`` → x, :class:`~a.B` → B."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return re.sub(r"\s+", " ", text.replace("``", "")).strip()


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Each dataclass field's entry in ``cls``'s docstring, as one plain-text line."""
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in (cls.__doc__ or "").splitlines():
        m = _ENTRY.match(line)
        if m:
            names = m.group(1).split(", ")
            for name in names:
                docs[name] = m.group(2)
        elif names and line.startswith(" " * 12):
            for name in names:
                docs[name] += " " + line.strip()
        else:
            names = []
    fields = {f.name for f in dataclasses.fields(cls)}
    return {name: plain(text) for name, text in docs.items() if name in fields}
