"""Apply ``io.katacontainers.config.*`` OCI annotations, only for keys allowed by enable_annotations."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from kata.config.schema import Config, option_spec
from kata.config.validate import check_value, field_types
from kata.errors import ConfigError

__all__ = ["ANNOTATION_PREFIX", "apply_annotations", "parse_annotation_value"]

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "io.katacontainers.config."
# Section of the annotation name -> attribute of Config holding that section.
SECTIONS = {"hypervisor": "hypervisor", "agent": "agent", "runtime": "runtime"}
# Keys whose values are executables or files: they must also match the listed globs.
PATH_GUARDS = {"path": "valid_hypervisor_paths", "virtio_fs_daemon": "valid_virtio_fs_daemon_paths"}
TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_annotation_value(tp: Any, raw: str, *, key: str) -> object:
    """Convert an annotation string to the field type ``tp``.

    Booleans take Go's strconv.ParseBool spellings; lists take a JSON array or ``a;b;c``.

    Raises:
        ConfigError: when ``raw`` cannot be read as ``tp``.
    """
    try:
        if tp is bool:
            if raw in TRUE or raw in FALSE:
                return raw in TRUE
            raise ValueError(raw)
        if tp is int:
            return int(raw, 10)
        if tp == list[str]:
            return json.loads(raw) if raw.lstrip().startswith("[") else [p for p in raw.split(";") if p]
    except ValueError as exc:
        raise ConfigError(f"cannot parse {raw!r}", path="annotation", key=key) from exc
    return raw


def _allowed(patterns: list[str], name: str) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in patterns)


def apply_annotations(config: Config, annotations: Mapping[str, str]) -> Config:
    """Return ``config`` with the allowed ``io.katacontainers.config.*`` overrides applied.

    Hypervisor keys are allowed when their base name fully matches a regular expression in
    ``enable_annotations`` (as Kata does); agent and runtime keys when ``agent.<key>`` or
    ``runtime.<key>`` does. Unknown keys are ignored with a warning.

    Raises:
        ConfigError: for an annotation that is not enabled, a bad value, or a path outside
        the ``valid_*_paths`` globs.
    """
    allow = config.hypervisor.enable_annotations
    changes: dict[str, dict[str, object]] = {}
    for name, raw in sorted(annotations.items()):
        if not name.startswith(ANNOTATION_PREFIX):
            continue
        section, _, key = name.removeprefix(ANNOTATION_PREFIX).partition(".")
        attr = SECTIONS.get(section)
        current = getattr(config, attr) if attr else None
        fields = {f.name: f for f in dataclasses.fields(current)} if current is not None else {}
        if attr is None or key not in fields or not option_spec(fields[key]).annotatable:
            log.warning("annotation %s is not a configurable key (ignored)", name)
            continue
        if not _allowed(allow, key if section == "hypervisor" else f"{section}.{key}"):
            raise ConfigError("not enabled by hypervisor enable_annotations", path="annotation", key=name)
        value = parse_annotation_value(field_types(type(current))[key], raw, key=name)
        check_value(type(current), key, value, path="annotation", key=name)
        guard = PATH_GUARDS.get(key) if section == "hypervisor" else None
        if guard and not any(fnmatch.fnmatchcase(str(value), g) for g in getattr(current, guard)):
            raise ConfigError(f"{value!r} does not match {guard}", path="annotation", key=name)
        changes.setdefault(attr, {})[key] = value
    updates = {attr: dataclasses.replace(getattr(config, attr), **vals) for attr, vals in changes.items()}
    return dataclasses.replace(config, **updates) if updates else config
