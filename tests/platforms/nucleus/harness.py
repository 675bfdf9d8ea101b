"""A Nucleus target against the emulator, for the target-level tests of this package."""

from __future__ import annotations

from syncd.targets.nucleus.target import NucleusSettings, NucleusTarget


def make_target(emulator, dataset_id, *, key=None, **overrides) -> NucleusTarget:
    """A target on ``dataset_id`` of ``emulator`` that polls jobs quickly (``overrides``: settings)."""
    options = dict(dataset_id=dataset_id, base_url=emulator.endpoint, timeout=5, job_poll_interval=0.01,
                   job_timeout=5)
    options.update(overrides)
    return NucleusTarget("nuc", NucleusSettings(**options), env={"NUCLEUS_API_KEY": key or emulator.api_key})
