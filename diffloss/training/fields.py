"""The fields of a :class:`~diffloss.training.config.TrainConfig`: the values each takes, its
type, its valid range and its command-line help, in one place.

- Field types. A config file is typed by hand: ``cpu: "no"`` is a string (which Python reads as
  *true*), ``iterations: "2"`` is not a number, ``crop: 32.7`` is not an integer.
  :func:`check_field_types` turns each such value into one message naming its field, before
  anything is written; :func:`yaml_loader` reads ``1e-4`` as the number it means and refuses a
  key given twice (so does :func:`json_no_duplicate_keys` for JSON).
- Ranges. :func:`check_numbers`: every number in its valid range, never a run that trains
  backwards (``grad_clip < 0``), stands still (``grad_clip = 0``) or turns into NaN (``lr = inf``).
- Documentation. The help of every ``diffloss train`` option is read from the field's entry in
  ``TrainConfig``'s docstring (``name: text`` lines, several names may share one entry,
  :func:`docs_of_fields`), and the fixed sets of values (:data:`FIELD_CHOICES`) are the same
  tuples that validate the config. Nothing is typed twice.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from ..tasks import TASKS
from .terms import PRIOR_INPUTS, valid_losses

__all__ = ["COMPILE_BACKENDS", "DATA", "FIELD_CHOICES", "FIELD_EXAMPLES", "MIXED_PRECISION", "check_choice",
           "PERCEPTUAL_NETS", "RHO_MAX", "SCHEDULES", "check_field_types", "check_numbers",
           "docs_of_fields", "json_no_duplicate_keys", "plain", "yaml_loader"]

#: ``data`` values: the offline default and the folder layouts of :class:`PairedImageDataset`.
DATA: tuple[str, ...] = ("synthetic", "dense_haze", "lol", "rain")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
MIXED_PRECISION: tuple[str, ...] = ("auto", "no", "bf16", "fp16")
#: ``compile_model`` backends (``torch.compile(backend=...)``).
COMPILE_BACKENDS: tuple[str, ...] = ("inductor", "aot_eager", "eager")


def check_choice(name: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` as one of ``valid`` (case and spaces ignored), or a ``ValueError`` listing them."""
    v = str(value).strip().lower()
    if v not in valid:
        raise ValueError(f"unknown {name} {value!r}. Valid values: {', '.join(valid)}")
    return v


#: The networks the perceptual loss can compare features of.
PERCEPTUAL_NETS = ("vgg16", "efficientnet-lite0")


# -- field types --------------------------------------------------------------------------------

def _describe(value: Any) -> str:
    """``'the string "no"'``, ``'1.5 (a float)'``: what a wrong value is, for messages."""
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{value!r} ({type(value).__name__})"


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(True, value)`` converted to ``hint`` when it has that type, else ``(False, None)``.

    Only lossless conversions: an int where a float is wanted, an integral float (``64.0``)
    where an int is wanted, a list where a tuple is wanted. Strings are never parsed (``"no"``
    is truthy, ``"2"`` is not a number): a config file must hold values of the right type.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is not type(None):
                ok, out = _convert(value, arg)
                if ok:
                    return True, out
        return False, None
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, None
        items = [_convert(v, a) for v, a in zip(value, args)]
        return (True, tuple(v for _, v in items)) if all(ok for ok, _ in items) else (False, None)
    if origin is dict:  # a JSON object with string keys (model_kwargs)
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        return ok, dict(value) if ok else None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, None
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if hint is str:  # a path (out, root, prior) may be given as a Path
        if isinstance(value, os.PathLike):
            return True, os.fspath(value)
        return isinstance(value, str), value
    return True, value


def _type_name(hint: Any) -> str:
    """``int | None`` → ``"an integer or null"``, for messages."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "null (None)"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if origin is dict:
        return "a mapping of names to values (a JSON object)"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_field_types(obj: Any) -> None:
    """Convert every field of the dataclass ``obj`` losslessly to its type hint (see
    :func:`_convert`), or raise one ``ValueError`` naming each wrong field."""
    hints = typing.get_type_hints(type(obj))
    wrong = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, converted = _convert(value, hints[f.name])
        if ok:
            setattr(obj, f.name, converted)
        else:
            wrong.append(f"{f.name} must be {_type_name(hints[f.name])}, got {_describe(value)}")
    if wrong:
        raise ValueError(f"invalid config value{'s' if len(wrong) > 1 else ''}: " + "; ".join(wrong))


def yaml_loader() -> Any:
    """PyYAML's safe loader, reading ``1e-4`` as the number it means: YAML 1.1, which PyYAML
    implements, needs a dot in a float (``1.0e-4``), so ``lr: 1e-4`` would be the *string*
    ``"1e-4"``. YAML 1.2 (and JSON) read it as a float; so does this loader."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))

    def no_duplicate_keys(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (the last would win silently)",
                    key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, no_duplicate_keys)
    return Loader


def json_no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads(..., object_pairs_hook=...)``: a key given twice is a ``ValueError`` (JSON
    itself lets the last one win silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} is given twice (the last would win silently)")
        out[key] = value
    return out


# -- ranges -------------------------------------------------------------------------------------

#: The largest target pull ρ of ``gamma="auto"`` (DiffLoss's gradient ρ times L1's at the start).
RHO_MAX = 1000.0


def check_numbers(config: Any) -> None:
    """Every number in its valid range: a bad value is one clear ``ValueError`` naming the
    field, never a run that trains backwards (``grad_clip < 0``), stands still
    (``grad_clip = 0``) or turns into NaN (``lr = inf``)."""
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"{name} must be {rule}, got {getattr(config, name)!r}")

    def finite(name: str) -> bool:
        value = getattr(config, name)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value)

    for name in ("crop", "iterations", "batch", "grad_accum", "disc_channels"):
        need(int(getattr(config, name)) >= 1, name, ">= 1")
    for name in ("eval_every", "warmup", "workers", "eval_overlap", "data_seed", "seed"):
        need(int(getattr(config, name)) >= 0, name, ">= 0")
    for name in ("max_size", "train_items", "eval_max_size", "save_every", "prior_size",
                 "eval_tile"):
        need(getattr(config, name) is None or int(getattr(config, name)) >= 1, name,
             "None or an integer >= 1")
    need(finite("lr") and config.lr > 0, "lr", "a finite number > 0")
    need(finite("min_lr") and 0 <= config.min_lr <= config.lr, "min_lr", "finite, in [0, lr]")
    need(finite("weight_decay") and config.weight_decay >= 0, "weight_decay", "finite and >= 0")
    need(finite("lambda_sem") and config.lambda_sem >= 0, "lambda_sem", "finite and >= 0")
    need(finite("nat_weight") and config.nat_weight >= 0, "nat_weight", "finite and >= 0")
    if isinstance(config.gamma, str):  # the rule: "auto", measured by the trainer
        need(config.gamma.strip().lower() == "auto", "gamma", "None, a finite number >= 0 or 'auto'")
        config.gamma = "auto"
    need(config.gamma in (None, "auto") or (finite("gamma") and config.gamma >= 0), "gamma",
         "None, a finite number >= 0 or 'auto'")
    need(config.rho is None or (finite("rho") and 0 < config.rho <= RHO_MAX), "rho",
         f"None or a number in (0, {RHO_MAX:g}] (a pull of more than {RHO_MAX:g}× L1's leaves L1 no say)")
    need(config.rho is None or config.gamma == "auto", "rho", "None unless gamma='auto' (ρ is its target)")
    need(config.auto_gamma is None or all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                        for v in config.auto_gamma.values()), "auto_gamma",
         "None or finite numbers > 0 by term")
    need(config.grad_clip is None or (finite("grad_clip") and config.grad_clip > 0), "grad_clip",
         "None (no clipping) or a finite max-norm > 0")
    need(all(math.isfinite(b) and 0 <= b < 1 for b in config.betas), "betas",
         "two numbers in [0, 1)")
    need(config.ema is None or (finite("ema") and 0.0 < config.ema < 1.0), "ema",
         "None or a decay in (0, 1)")
    need(config.val is None or int(config.val) >= 0, "val", "None or >= 0")
    need(finite("diffloss_fraction") and 0 < config.diffloss_fraction <= 1, "diffloss_fraction",
         "in (0, 1]")
    need(int(config.diffloss_every) >= 1, "diffloss_every", ">= 1")
    need(config.log_every is None or int(config.log_every) >= 1, "log_every", "None or >= 1")
    need(config.epochs is None or (finite("epochs") and config.epochs > 0), "epochs",
         "None or a finite number > 0")
    if config.stop_on_collapse and int(config.eval_every) == 0:
        raise ValueError("stop_on_collapse needs eval_every > 0: a collapse is detected at an evaluation, "
                         "and eval_every 0 never evaluates")
    if config.eval_tile is not None and config.eval_tile <= 2 * config.eval_overlap:
        raise ValueError(f"eval_tile ({config.eval_tile}) must exceed 2·eval_overlap ({config.eval_overlap})")


# -- documentation ------------------------------------------------------------------------------

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


def docs_of_fields(cls: type) -> dict[str, str]:
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
