"""Turn raw TOML or annotation values into typed schema sections, naming the key on error."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kata.config.schema import option_spec
from kata.errors import ConfigError

__all__ = ["build_section", "check_value", "field_types"]

T = TypeVar("T")


def field_types(cls: type[Any]) -> dict[str, Any]:
    """Resolved type of each field of a schema dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    if tp == list[str]:
        return "a list of strings"
    return {bool: "a boolean", int: "an integer", str: "a string"}.get(tp, str(tp))


def _is_type(value: object, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp == list[str]:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    raise TypeError(f"unsupported schema type {tp!r}")


def check_value(cls: type[Any], name: str, value: object, *, path: str | None, key: str) -> object:
    """Return ``value`` if it fits field ``name`` of ``cls``.

    Raises:
        ConfigError: naming ``path`` and ``key`` when the type, choice or bound is wrong.
    """
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    tp = field_types(cls)[name]
    if not _is_type(value, tp):
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", path=path, key=key)
    spec = option_spec(f)
    if spec.choices and value not in spec.choices:
        allowed = ", ".join(spec.choices)
        raise ConfigError(f"{value!r} is not one of: {allowed}", path=path, key=key)
    if spec.minimum is not None and isinstance(value, int) and value < spec.minimum:
        raise ConfigError(f"{value} is below the minimum {spec.minimum}", path=path, key=key)
    return value


def build_section(
    cls: Callable[..., T],
    table: Mapping[str, object],
    *,
    prefix: str,
    source: Callable[[str], str | None],
    warn: Callable[[str], None],
) -> T:
    """Build section ``cls`` from ``table``; unknown keys are reported through ``warn``.

    ``source(dotted_key)`` names the file that supplied a key, for error messages.

    Raises:
        ConfigError: for the first invalid value.
    """
    assert isinstance(cls, type)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if name not in names:
            warn(f"{source(key) or 'config'}: unknown key {key} (ignored)")
            continue
        values[name] = check_value(cls, name, value, path=source(key), key=key)
    section: T = cls(**values)
    return section
