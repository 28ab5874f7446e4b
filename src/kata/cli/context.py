"""What every verb gets: the global options and the lazily loaded configuration."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from kata.config import LoadedConfig, load_config

__all__ = ["DEFAULT_ROOT", "CliContext"]

DEFAULT_ROOT = "/run/kata"


@dataclass(frozen=True)
class CliContext:
    """Global options of one kata-runtime invocation."""

    root: str = os.environ.get("KATA_ROOT", DEFAULT_ROOT)
    config_path: str | None = None
    debug: bool = False
    log: str | None = None
    log_format: str = "text"

    @functools.cached_property
    def loaded(self) -> LoadedConfig:
        """The effective configuration (loaded on first use).

        Raises:
            ConfigError: when the configuration is invalid.
        """
        return load_config(self.config_path)
