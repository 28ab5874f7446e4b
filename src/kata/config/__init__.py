"""Configuration: schema, loader (TOML + config.d drop-ins) and OCI annotation overrides."""

from __future__ import annotations

from kata.config.annotations import ANNOTATION_PREFIX, apply_annotations
from kata.config.loader import (
    ENV_CONFIG_FILE,
    LoadedConfig,
    default_config_paths,
    load_config,
    resolve_config_path,
)
from kata.config.schema import AgentConfig, Config, FactoryConfig, HypervisorConfig, RuntimeConfig

__all__ = [
    "ANNOTATION_PREFIX",
    "ENV_CONFIG_FILE",
    "AgentConfig",
    "Config",
    "FactoryConfig",
    "HypervisorConfig",
    "LoadedConfig",
    "RuntimeConfig",
    "apply_annotations",
    "default_config_paths",
    "load_config",
    "resolve_config_path",
]
