"""Contract case for the Edge Impulse project target, against the Edge Impulse emulator."""

from __future__ import annotations

from contextlib import contextmanager

from syncd.targets.edgeimpulse.payload import user_metadata
from syncd.targets.edgeimpulse.target import EdgeImpulseSettings, EdgeImpulseTarget
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.platforms.contract import ContractCase

NETWORK = True


@contextmanager
def make_case(tmp_path):
    with EdgeImpulseEmulator() as emulator:
        project = emulator.add_project("Contract project")
        emulator.add_project("Other project")
        key = emulator.make_key(project["id"])
        settings = EdgeImpulseSettings(project_id=project["id"], ingestion_url=emulator.url,
                                       api_url=f"{emulator.url}/v1", timeout=5)
        target = EdgeImpulseTarget("ei", settings, env={"EI_API_KEY": key})

        def remote_items():
            # The contract's keys are plain, so their sample names are the key with '/' -> '__'.
            return [(s["filename"].replace("__", "/"), user_metadata(s["metadata"]))
                    for s in emulator.samples_in(project["id"])]

        def inject(kind):
            emulator.faults.next(kind, path=r"^/api/[^/]+/files$")

        yield ContractCase(target=target, secret=key, remote_items=remote_items, inject=inject,
                           revoke_credentials=lambda: emulator.revoke(key))
