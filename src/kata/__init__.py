"""pykata: Kata Containers in Python, every container in its own lightweight VM."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
