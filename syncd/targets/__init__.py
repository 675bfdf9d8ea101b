"""The explicit registry of targets: platform name -> adapter class (imported lazily)."""

from __future__ import annotations

import importlib

from syncd.errors import ConfigError
from syncd.targets.base import Receipt, Target, TargetSettings, Upload

REGISTRY: dict[str, str] = {
    "local": "syncd.targets.local:LocalTarget",
    "nucleus": "syncd.targets.nucleus.target:NucleusTarget",
    "edgeimpulse": "syncd.targets.edgeimpulse.target:EdgeImpulseTarget",
    "edgeimpulse-org": "syncd.targets.edgeimpulse.org:EdgeImpulseOrgTarget",
    "dataloop": "syncd.targets.dataloop.target:DataloopTarget",
    "redbrick": "syncd.targets.redbrick.target:RedBrickTarget",
}


def target_class(platform: str) -> type[Target]:
    """The adapter class for ``platform``; ConfigError lists the known platforms."""
    spec = REGISTRY.get(platform)
    if spec is None:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"unknown platform {platform!r}; known platforms: {known}")
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"platform {platform!r} is not available in this build: {exc}") from exc
    return getattr(module, class_name)


__all__ = ["REGISTRY", "Receipt", "Target", "TargetSettings", "Upload", "target_class"]
