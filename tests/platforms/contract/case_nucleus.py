"""Contract case for the Scale Nucleus target, against the Nucleus emulator.

Jobs progress Queued -> Running -> Completed over polls, so every delivery exercises the
polling path. syncd stores nothing of its own in the item metadata, so the remote
metadata is compared as is.
"""

from __future__ import annotations

from contextlib import contextmanager

from syncd.targets.nucleus.target import NucleusSettings, NucleusTarget
from tests.emulators.nucleus import NucleusEmulator
from tests.platforms.contract import ContractCase

NETWORK = True


@contextmanager
def make_case(tmp_path):
    with NucleusEmulator() as emulator:
        dataset_id = emulator.add_dataset("contract-ds")
        emulator.add_dataset("other-ds")
        settings = NucleusSettings(dataset_id=dataset_id, base_url=emulator.endpoint, timeout=5,
                                   job_poll_interval=0.01, job_timeout=5)
        target = NucleusTarget("nucleus", settings, env={"NUCLEUS_API_KEY": emulator.api_key})

        def remote_items():
            return [(item["reference_id"], item["metadata"]) for item in emulator.items(dataset_id)]

        def inject(kind):
            emulator.faults.next(kind, path=r"/append$")

        yield ContractCase(target=target, secret=emulator.api_key, remote_items=remote_items, inject=inject,
                           revoke_credentials=lambda: emulator.revoke(emulator.api_key))
