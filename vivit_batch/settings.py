"""How a configuration key is declared: once, as a field of a frozen dataclass section, with its
type (the annotation), default, help text, and the values it accepts.

    @dataclass(frozen=True)
    class DecodeConfig(Section, name="decode"):
        timeout_s: float | None = setting(
            300, "a video taking longer is a timeout row", unit=SECONDS, above=0
        )

A section validates itself when it is made (`__post_init__`): every field's rule, then the
section's own combinations (`combination_problems`). Every problem is a `ConfigError` that names
the user-facing key (`decode.timeout_s`), never a class. Sizes and durations also accept units
(`4GiB`, `6h`, `300s`) and are shown with them.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from vivit_batch.errors import ConfigError

BYTES, SECONDS = "bytes", "seconds"
TEXTS = tuple[str, ...]
"""The type of a list-valued key: a YAML list, or comma-separated text (`--set k=a,b`)."""
_SIZES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZES |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_DURATIONS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Rule:
    help: str
    choices: tuple = ()
    minimum: float | None = None
    above: float | None = None
    """an exclusive minimum"""
    maximum: float | None = None
    unit: str | None = None
    pattern: str | None = None
    """a regular expression text values must match in full"""
    pattern_help: str = ""
    """what `pattern` accepts, in words"""


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple = (),
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    unit: str | None = None,
    pattern: str | None = None,
    pattern_help: str = "",
) -> Any:
    """A configuration key: its default, what it means, and what it accepts."""
    rule = Rule(help, tuple(choices), minimum, above, maximum, unit, pattern, pattern_help)
    return dataclasses.field(default=default, metadata={"rule": rule})


class Section:
    """A frozen dataclass of `setting`s under one name (`decode`, `sampling`, ...)."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, name: str = "", **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name

    def __post_init__(self) -> None:
        problems = [
            problem
            for key, (item, kind) in self.keys().items()
            if (problem := check(key, kind, rule_of(item), getattr(self, item.name)))
        ]
        problems += [] if problems else self.combination_problems()
        if problems:
            raise ConfigError.of(problems)

    def combination_problems(self) -> list[str]:
        """Problems of values that are fine alone but not together (a section overrides)."""
        return []

    @classmethod
    def keys(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
        """`section.name` -> (field, type) for every key of the section."""
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # sections are dataclasses
        return {f"{cls.name}.{f.name}": (f, hints[f.name]) for f in fields}


def rule_of(item: dataclasses.Field) -> Rule:
    return item.metadata.get("rule") or Rule("")


def check(key: str, kind: Any, rule: Rule, value: Any) -> str | None:
    """What is wrong with `value` for `key` (None: nothing)."""
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        return None if type(None) in allowed else f"{key} must be set"
    base = next(t for t in allowed if t is not type(None))
    if base == TEXTS:
        texts = isinstance(value, tuple) and all(isinstance(item, str) for item in value)
        return None if texts else f"{key} must be {_kind_name(base, rule)}, got {brief(value)}"
    numeric = base in (int, float) and not isinstance(value, bool)
    if not (isinstance(value, base) or (base is float and numeric and isinstance(value, int))):
        return f"{key} must be {_kind_name(base, rule)}, got {brief(value)}"
    if rule.choices and value not in rule.choices:
        return f"{key} must be one of {', '.join(map(str, rule.choices))}, got {brief(value)}"
    if rule.pattern and not re.fullmatch(rule.pattern, str(value)):
        return f"{key} must be {rule.pattern_help}, got {brief(value)}"
    shown = show(value, rule.unit)
    if rule.minimum is not None and value < rule.minimum:
        return f"{key} must be at least {show(rule.minimum, rule.unit)}, got {shown}"
    if rule.above is not None and value <= rule.above:
        return f"{key} must be more than {show(rule.above, rule.unit)}, got {shown}"
    if rule.maximum is not None and value > rule.maximum:
        return f"{key} must be at most {show(rule.maximum, rule.unit)}, got {shown}"
    return None


def coerce(key: str, kind: Any, rule: Rule, value: Any) -> Any:
    """A value from YAML or `--set` as the key's type: units parsed, ints made floats where a
    float is wanted. Values it cannot read are left for `check` to name."""
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    base = next((t for t in allowed if t is not type(None)), str)
    if base == TEXTS:
        return _texts(value)
    if isinstance(value, str) and rule.unit and base in (int, float):
        parsed = parse(value, rule.unit)
        if parsed is None:
            raise ConfigError(f"{key} must be {_kind_name(base, rule)}, got {brief(value)}")
        value = base(parsed)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _texts(value: Any) -> Any:
    """'a, b' -> ('a', 'b'); a YAML list -> a tuple (its items left for `check`)."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return tuple(value) if isinstance(value, list) else value


def parse(text: str, unit: str) -> float | None:
    """'4GiB' -> 4294967296, '6h' -> 21600.0, '300' -> 300.0; None if it is not that."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    factors = _SIZES if unit == BYTES else _DURATIONS
    if not match or match[2].lower() not in factors:
        return None
    return float(match[1]) * factors[match[2].lower()]


def show(value: Any, unit: str | None) -> str:
    """A value as people write it: 4294967296 -> '4GiB', 21600 -> '6h', 300 -> '5m'."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, tuple):
        return ",".join(value) or "[]"
    if unit is None:
        return str(value)
    scales = (
        [("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)]
        if unit == BYTES
        else [("d", 86400), ("h", 3600), ("m", 60)]
    )
    for suffix, factor in scales:
        if value >= factor and value % factor == 0:
            return f"{value // factor:g}{suffix}"
    return f"{value:g}" + ("s" if unit == SECONDS else "")


def brief(value: Any, limit: int = 100) -> str:
    """`repr(value)` cut to `limit` characters: messages stay short whatever was written."""
    return cut(repr(value), limit)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _kind_name(base: Any, rule: Rule) -> str:
    if base == TEXTS:
        return "a list of text (a YAML list, or comma-separated)"
    if rule.unit == BYTES:
        return "a size in bytes (e.g. 4GiB, 500MB, 1048576)"
    if rule.unit == SECONDS:
        return "a duration in seconds (e.g. 300, 300s, 5m, 6h)"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(
        base, base.__name__
    )


def describe(kind: Any, rule: Rule) -> str:
    """The kind of value a key takes, for `--help`: 'one of a, b', 'duration', 'integer'..."""
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    base = next((t for t in allowed if t is not type(None)), str)
    if rule.choices:
        return "one of " + ", ".join(map(str, rule.choices))
    if rule.unit:
        return {BYTES: "size", SECONDS: "duration"}[rule.unit]
    if base == TEXTS:
        return "list of text"
    return {int: "integer", float: "number", bool: "true/false", str: "text"}.get(base, "value")
