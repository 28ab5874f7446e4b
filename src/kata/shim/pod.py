"""Which sandbox a container belongs to, from the CRI annotations of its config.json (pure)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CONTAINER_TYPE",
    "CRIO_CONTAINER_TYPE",
    "CRIO_SANDBOX_ID",
    "SANDBOX_ID",
    "Membership",
    "membership",
    "read_annotations",
]

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
CRIO_CONTAINER_TYPE = "io.kubernetes.cri-o.ContainerType"
CRIO_SANDBOX_ID = "io.kubernetes.cri-o.SandboxID"


@dataclass(frozen=True)
class Membership:
    """``sandbox_id`` is the sandbox the container runs in; ``joins`` when that sandbox is another
    container's (a pod's later container), else the container makes its own sandbox of its id."""

    sandbox_id: str
    joins: bool


def membership(container_id: str, annotations: Mapping[str, str]) -> Membership:
    """The sandbox of ``container_id``: a CRI ``container`` joins ``sandbox-id``; a pod sandbox or a
    plain container (ctr, no annotations) owns a sandbox of its own id."""
    for kind_key, sandbox_key in ((CONTAINER_TYPE, SANDBOX_ID), (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID)):
        if annotations.get(kind_key) == "container" and annotations.get(sandbox_key):
            return Membership(annotations[sandbox_key], joins=annotations[sandbox_key] != container_id)
    return Membership(container_id, joins=False)


def read_annotations(bundle: str) -> dict[str, str]:
    """The annotations of ``bundle``/config.json ({} when it has none or cannot be read: a plain
    container is the safe reading)."""
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as fh:
            spec = json.load(fh)
    except (OSError, ValueError):
        return {}
    found = spec.get("annotations") if isinstance(spec, dict) else None
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v) for k, v in found.items()}
