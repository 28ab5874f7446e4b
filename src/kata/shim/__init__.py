"""containerd-shim-kata-v2: the containerd shim v2 whose daemon owns one sandbox (VM) and serves
containerd.task.v2.Task for its containers (see docs/shim.md)."""

from __future__ import annotations

__all__: list[str] = []
