"""VM factory: where a sandbox's VM comes from (cold boot or template clone), VM templates, and KSM."""

from __future__ import annotations

from kata.factory.source import DirectSource, TemplateSource, VmRequest, VmSource, vm_source
from kata.factory.template import Template, TemplateInfo, TemplatePaths, TemplateStatus

__all__ = [
    "DirectSource",
    "Template",
    "TemplateInfo",
    "TemplatePaths",
    "TemplateSource",
    "TemplateStatus",
    "VmRequest",
    "VmSource",
    "vm_source",
]
