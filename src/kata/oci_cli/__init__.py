"""kata-runtime as an OCI runtime (runc's CLI): thin verbs over the sandbox daemon's Task service, and the
per-process host proxy whose pid engines wait on (see docs/oci-cli.md)."""

from __future__ import annotations

__all__: list[str] = []
