"""Find configuration.toml, merge its config.d/ drop-ins and build the typed Config."""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kata.config.schema import AgentConfig, Config, FactoryConfig, HypervisorConfig, RuntimeConfig
from kata.config.validate import build_section
from kata.errors import ConfigError

__all__ = [
    "ENV_CONFIG_FILE",
    "SYSTEM_CONFIG_PATHS",
    "LoadedConfig",
    "default_config_paths",
    "load_config",
    "resolve_config_path",
]

log = logging.getLogger(__name__)

ENV_CONFIG_FILE = "KATA_CONF_FILE"
SYSTEM_CONFIG_PATHS = (
    Path("/etc/kata-containers/configuration.toml"),
    Path("/usr/share/defaults/kata-containers/configuration.toml"),
)
HYPERVISORS = ("qemu",)
SECTIONS = ("hypervisor", "agent", "runtime", "factory")

Sources = dict[tuple[str, ...], str]


@dataclass(frozen=True)
class LoadedConfig:
    """The effective configuration and where it came from."""

    config: Config
    path: Path | None
    fragments: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = field(default=())


def default_config_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The search list after an explicit ``--config``: KATA_CONF_FILE, then the system paths."""
    env = os.environ if environ is None else environ
    paths = [Path(env[ENV_CONFIG_FILE])] if env.get(ENV_CONFIG_FILE) else []
    return paths + list(SYSTEM_CONFIG_PATHS)


def resolve_config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The configuration file to use, or None for the built-in defaults.

    Raises:
        ConfigError: when an explicitly named file (option or KATA_CONF_FILE) does not exist.
    """
    env = os.environ if environ is None else environ
    for named, origin in ((explicit, "--config"), (env.get(ENV_CONFIG_FILE), ENV_CONFIG_FILE)):
        if named:
            path = Path(named)
            if not path.is_file():
                raise ConfigError(f"configuration file named by {origin} does not exist", path=named)
            return path
    return next((p for p in SYSTEM_CONFIG_PATHS if p.is_file()), None)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from exc


def _merge(base: dict[str, Any], over: Mapping[str, Any], origin: str, sources: Sources,
           prefix: tuple[str, ...] = ()) -> None:
    """Deep-merge ``over`` into ``base`` (tables merged, later wins) recording each leaf's file."""
    for key, value in over.items():
        here = (*prefix, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, sources, here)
            continue
        base[key] = _copy(value)
        for leaf in _leaves(value, here):
            sources[leaf] = origin


def _copy(value: Any) -> Any:
    return {k: _copy(v) for k, v in value.items()} if isinstance(value, dict) else value


def _leaves(value: Any, here: tuple[str, ...]) -> list[tuple[str, ...]]:
    if not isinstance(value, dict):
        return [here]
    return [leaf for k, v in value.items() for leaf in _leaves(v, (*here, k))]


def _source_of(sources: Sources) -> Callable[[str], str | None]:
    """Lookup of the file that supplied a key, or (for a table) the last of its leaves."""
    def source(dotted: str) -> str | None:
        key = tuple(dotted.split("."))
        found = [src for leaf, src in sources.items() if leaf[:len(key)] == key]
        return sources.get(key) or (found[-1] if found else None)
    return source


def _table(data: Mapping[str, Any], key: str, source: Callable[[str], str | None]) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError("expected a table", path=source(key), key=key)
    return value


def _only_subtable(data: Mapping[str, Any], section: str, allowed: tuple[str, ...],
                   source: Callable[[str], str | None]) -> tuple[str, dict[str, Any]]:
    table = _table(data, section, source)
    for name, value in table.items():
        where = source(f"{section}.{name}")
        if name not in allowed:
            raise ConfigError(f"unsupported: choose one of {', '.join(allowed)}", path=where,
                              key=f"{section}.{name}")
        if not isinstance(value, dict):
            raise ConfigError("expected a table", path=where, key=f"{section}.{name}")
    if len(table) > 1:
        raise ConfigError(f"more than one [{section}.*] table: {', '.join(sorted(table))}")
    return next(iter(table.items()), (allowed[0], {}))


def build_config(data: Mapping[str, Any], sources: Sources, warnings: list[str]) -> Config:
    """Build a validated :class:`Config` from merged TOML data.

    Raises:
        ConfigError: for the first invalid table or value.
    """
    source = _source_of(sources)
    for key in data:
        if key not in SECTIONS:
            warnings.append(f"{source(key) or 'config'}: unknown key {key} (ignored)")
    hv_name, hv_table = _only_subtable(data, "hypervisor", HYPERVISORS, source)
    _, agent_table = _only_subtable(data, "agent", ("kata",), source)
    return Config(
        hypervisor_name=hv_name,
        hypervisor=build_section(HypervisorConfig, hv_table, prefix=f"hypervisor.{hv_name}",
                                 source=source, warn=warnings.append),
        agent=build_section(AgentConfig, agent_table, prefix="agent.kata", source=source,
                            warn=warnings.append),
        runtime=build_section(RuntimeConfig, _table(data, "runtime", source), prefix="runtime",
                              source=source, warn=warnings.append),
        factory=build_section(FactoryConfig, _table(data, "factory", source), prefix="factory",
                              source=source, warn=warnings.append),
    )


def fragments_of(path: Path) -> tuple[Path, ...]:
    """The ``config.d/*.toml`` drop-ins beside ``path``, in lexical order."""
    drop_dir = path.parent / "config.d"
    if not drop_dir.is_dir():
        return ()
    return tuple(sorted(p for p in drop_dir.glob("*.toml") if p.is_file()))


def load_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load the effective configuration per the search order of DESIGN section 4.

    Raises:
        ConfigError: naming the file, the key and the problem.
    """
    path = resolve_config_path(explicit, environ)
    if path is None:
        return LoadedConfig(config=Config(), path=None)
    merged: dict[str, Any] = {}
    sources: Sources = {}
    fragments = fragments_of(path)
    for item in (path, *fragments):
        _merge(merged, _read_toml(item), str(item), sources)
    warnings: list[str] = []
    config = build_config(merged, sources, warnings)
    for message in warnings:
        log.warning(message)
    return LoadedConfig(config=config, path=path, fragments=fragments, warnings=tuple(warnings))
