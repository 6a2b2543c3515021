"""Config values checked against their fields' types, and YAML read as its authors mean it.

A config file is typed by hand: ``cpu: "no"`` is a string (which Python reads as *true*),
``iterations: "2"`` is not a number, ``crop: 32.7`` is not an integer. :func:`check_field_types`
turns each such value into one message naming its field, before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from typing import Any

__all__ = ["check_field_types", "yaml_loader"]


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
