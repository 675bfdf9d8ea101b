"""Fixtures of the Nucleus target tests: an emulator recording its requests, a dataset, a target."""

from __future__ import annotations

import pytest

from tests.emulators.nucleus import NucleusEmulator
from tests.platforms.nucleus.harness import make_target


@pytest.fixture
def emulator():
    with NucleusEmulator() as emulator:
        emulator.record = True
        yield emulator


@pytest.fixture
def dataset_id(emulator):
    return emulator.add_dataset("frames")


@pytest.fixture
def target(emulator, dataset_id):
    target = make_target(emulator, dataset_id)
    yield target
    target.close()
