"""JSON values <-> model dataclasses, driven by type hints; the one place that knows JSON key names."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kata.oci.ints import IntRange

__all__ = ["FieldError", "Path", "decode", "encode", "json_key", "render_path"]

T = TypeVar("T")

# A location in a JSON document: keys and "[index]" / '["map key"]' segments.
Path = tuple[str, ...]

# Python field names whose JSON key is not their lowerCamelCase spelling (Go spells initialisms in
# capitals). Every other key is derived by _camel(): oci_version -> ociVersion.
_KEY_EXCEPTIONS = {
    "block_io": "blockIO",
    "class_id": "classID",
    "clos_id": "closID",
    "container_id": "containerID",
    "disable_oom_killer": "disableOOMKiller",
    "enable_cmt": "enableCMT",
    "enable_mbm": "enableMBM",
    "host_id": "hostID",
    "kernel_tcp": "kernelTCP",
    "throttle_read_iops_device": "throttleReadIOPSDevice",
    "throttle_write_iops_device": "throttleWriteIOPSDevice",
}

_GOT_LIMIT = 40


class FieldError(Exception):
    """A value at a path of a document is wrong; the caller renders it as one line."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message

    def render(self, source: str) -> str:
        """``source: path: message`` (without the path when the document itself is wrong)."""
        where = render_path(self.path)
        return f"{source}: {where}: {self.message}" if where else f"{source}: {self.message}"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def json_key(name: str) -> str:
    """The JSON key of a model field name."""
    return _KEY_EXCEPTIONS.get(name) or _camel(name)


def render_path(path: Path) -> str:
    """``process.args[0]`` from its segments."""
    out = ""
    for segment in path:
        out += segment if segment.startswith("[") or not out else "." + segment
    return out


@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    hint: Any
    required: bool
    optional: bool


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _fields(cls: type) -> tuple[_Field, ...]:
    cached = _FIELDS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        cached = tuple(
            _Field(
                name=f.name,
                key=json_key(f.name),
                hint=hints[f.name],
                required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                optional=_is_union(hints[f.name]),
            )
            for f in dataclasses.fields(cls)
        )
        _FIELDS[cls] = cached
    return cached


def _got(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= _GOT_LIMIT else text[: _GOT_LIMIT - 3] + "..."


def _expected(what: str, value: object) -> str:
    return f"expected {what}, got {_got(value)}"


def decode(cls: type[T], data: object, path: Path = ()) -> T:
    """Build a model dataclass from a parsed JSON object; unknown keys are ignored.

    Raises:
        FieldError: a value has the wrong JSON type or range, or a required key is missing or null.
    """
    if not isinstance(data, dict):
        raise FieldError(path, _expected("an object", data))
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        value = data.get(f.key)
        if value is None:  # Go reads null like a missing key
            if f.required:
                raise FieldError((*path, f.key), "required")
            continue
        kwargs[f.name] = _decode_value(f.hint, value, (*path, f.key))
    return cls(**kwargs)


def _decode_value(hint: Any, value: object, path: Path) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        kind = hint.__metadata__[0]
        assert isinstance(kind, IntRange)
        if value not in kind:
            raise FieldError(path, _expected(kind.name, value))
        return value
    if _is_union(hint):
        (inner,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        return _decode_value(inner, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise FieldError(path, _expected("an array", value))
        item = typing.get_args(hint)[0]
        return tuple(_decode_value(item, v, (*path, f"[{i}]")) for i, v in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, dict):
            raise FieldError(path, _expected("an object", value))
        item = typing.get_args(hint)[1]
        return {k: _decode_value(item, v, (*path, f"[{json.dumps(k)}]")) for k, v in value.items()}
    if hint is str:
        if not isinstance(value, str):
            raise FieldError(path, _expected("a string", value))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise FieldError(path, _expected("a boolean", value))
        return value
    assert isinstance(hint, type) and dataclasses.is_dataclass(hint), hint
    return decode(hint, value, path)


def encode(obj: object) -> dict[str, Any]:
    """The JSON object of a model dataclass, leaving out unset and empty optional fields (Go omitempty)."""
    out: dict[str, Any] = {}
    for f in _fields(type(obj)):
        value = getattr(obj, f.name)
        if not f.required and (value is None or (not f.optional and not value)):
            continue
        out[f.key] = _encode_value(value)
    return out


def _encode_value(value: object) -> Any:
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _encode_value(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return encode(value)
    return value
