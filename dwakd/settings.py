"""Settings dataclasses from YAML mappings, one way for all of them: the methods' Configs, ``TrainConfig``,
``ModelSettings`` (with its ``LoraSettings``), the generation and figure settings.

``from_dict(cls, data, where)`` builds the dataclass ``cls`` from the mapping ``data`` found at the config key
``where`` (None: every default), checking in this order:

1. every key is a field: else ``<where>: unknown option(s) [...] (did you mean ...?); <cls> accepts [...]``;
2. every value has the field's declared type: else ``<where>.<key>: expected <type>, got <value>`` (an int where
   a float is declared is taken as that float; null is taken anywhere; a union of several types is left to the
   class). A field may name what it expects, ``field(metadata={"expected": "a positive integer"})``, and the
   message says that instead of the type. A field whose type is a dataclass takes a mapping (or null), built the
   same way at ``<where>.<key>``;
3. every value is one of the field's fixed choices, when it has some: else ``expected one of [...]``. The choices
   are learned from the class's own ``validate`` (the ``ChoiceError`` that ``check_choice`` raises);
4. the class's own ``validate(where)``: its ranges (``check_range``) and the rules between its fields.

Steps 1–3 are ``check_options`` on ``option_fields(cls)``; the dry run (``dwakd.config.check_methods``) runs the
same check on the registered methods' options, read without importing torch, so both report the same line.
This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from dwakd.errors import ChoiceError, ConfigError

__all__ = ["OPTION_TYPES", "check_choice", "check_options", "check_range", "from_dict", "option_fields"]

#: the types checked by name (a field of another type, or of a union of several, is left to its class)
OPTION_TYPES = {t.__name__: t for t in (bool, int, float, str, list, dict, tuple)}
#: how a type error names the expected type, where its name does not say it best
_TYPE_WORDS = {"bool": "true or false"}
_PROBE = "\x00not-a-choice"


def _declared(hint: Any) -> tuple[str | None, type | None]:
    """``(checked type name, nested dataclass)`` of a field's type annotation: ``float`` → ("float", None),
    ``list[str] | None`` → ("list", None), ``LoraSettings | None`` → (None, LoraSettings), ``str | list[str]``
    → (None, None)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [a for a in (typing.get_args(hint) if union else (hint,)) if a is not type(None)]
    if len(args) != 1:
        return None, None
    t = typing.get_origin(args[0]) or args[0]
    if dataclasses.is_dataclass(t):
        return None, t
    return (t.__name__ if OPTION_TYPES.get(getattr(t, "__name__", None)) is t else None), None


def _nested(cls: type) -> dict[str, type]:
    """Field name → the dataclass type of the fields that hold settings of their own (``ModelSettings.lora``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: sub for f in dataclasses.fields(cls) if (sub := _declared(hints[f.name])[1]) is not None}


def option_fields(cls: type) -> dict[str, dict]:
    """The options of the dataclass ``cls``: name → ``{"type": the declared type's name (None: not checked here),
    "choices": the fixed set of values its ``validate`` accepts (None: any), "expected": how a type error names
    the expected value (the field's ``metadata["expected"]``; None: the type)}``. The choices are those of the
    ``ChoiceError`` (``check_choice``) that ``validate`` raises for a string no set holds."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tname = _declared(hints[f.name])[0]
        choices = None
        if tname == "str" and hasattr(cls, "validate"):
            try:
                cls(**{f.name: _PROBE}).validate("")
            except ChoiceError as e:
                choices = list(e.choices) if e.field == f.name else None
            except Exception:  # noqa: BLE001 (not a fixed set, or not constructible with defaults alone)
                pass
        out[f.name] = {"type": tname, "choices": choices, "expected": f.metadata.get("expected")}
    return out


def check_options(where: str, overrides: dict | None, options: dict[str, dict], accepts: str) -> None:
    """``overrides`` of a settings dataclass (``options``: its ``option_fields``; ``accepts``: its name) has only
    known options, of their declared type (an int where a float is expected), within the field's choices."""
    overrides = overrides or {}
    unknown = sorted(str(k) for k in set(overrides) - set(options))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(options), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown option(s) {unknown}{hint}; {accepts} accepts {sorted(options)}")
    for k, v in overrides.items():
        opt = options[k]
        t = OPTION_TYPES.get(opt["type"])
        if t is not None and v is not None:
            if not (isinstance(v, t) or (t is float and isinstance(v, int) and not isinstance(v, bool))):
                expected = opt.get("expected") or _TYPE_WORDS.get(t.__name__, t.__name__)
                raise ConfigError(f"{where}.{k}: expected {expected}, got {v!r}")
        choices = opt["choices"]
        if choices is not None and v not in choices:
            raise ConfigError(f"{where}.{k}: expected one of {sorted(choices)}, got {v!r}")


def from_dict(cls: type, data: dict | None, where: str) -> Any:
    """The dataclass ``cls`` from the YAML mapping ``data`` at config key ``where``, checked (module docstring)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} options ({', '.join(option_fields(cls))}), "
                          f"got {data!r}")
    options = option_fields(cls)
    check_options(where, data, options, cls.__name__)
    nested = _nested(cls)
    values = {}
    for k, v in data.items():
        if k in nested and v is not None:
            v = from_dict(nested[k], v, f"{where}.{k}")
        elif options[k]["type"] == "float" and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        values[k] = v
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


# ------------------------------------------------------------------------------------ checks of ``validate``

def check_range(where: str, field: str, value: float, lo: float, hi: float | None = None,
                lo_open: bool = False) -> None:
    """``value`` in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``; no upper bound without ``hi``)."""
    bad = value <= lo if lo_open else value < lo
    if hi is not None:
        bad = bad or value > hi
    if bad:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]" if hi is not None else f"{'>' if lo_open else '>='} {lo}"
        raise ConfigError(f"{where}.{field}: expected a value {'in ' if hi is not None else ''}{rng}, got {value!r}")


def check_choice(where: str, field: str, value: str, choices) -> None:
    """``value`` one of ``choices``; the ChoiceError carries them, so that the dry run knows them too."""
    if value not in choices:
        raise ChoiceError(f"{where}.{field}: expected one of {sorted(choices)}, got {value!r}", field, choices)
