"""Contract case for the RedBrick target, against the RedBrick emulator.

Faults are injected on the ``createDatapointSDK`` mutation (the emulator exposes GraphQL
operation names to the fault filters): it is the one request of a first delivery whose
outcome matters. The presign query before it is idempotent and its failures are not
"unknown outcomes"; a lost reply on createDatapoint is the case that could duplicate.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager

from syncd.targets.redbrick.target import VERSION_KEY, RedBrickSettings, RedBrickTarget
from tests.emulators.redbrick import RedBrickEmulator
from tests.platforms.contract import ContractCase

NETWORK = True


def user_metadata(task: dict) -> dict:
    """A task's metadata without syncd's version marker."""
    return {k: v for k, v in task["meta"].items() if k != VERSION_KEY}


@contextmanager
def make_case(tmp_path):
    with RedBrickEmulator() as emulator:
        org_id = str(uuid.uuid4())
        project = emulator.add_project(org_id, name="Contract")
        emulator.add_project(org_id, name="Other")
        key = emulator.add_api_key(org_id)
        settings = RedBrickSettings(org_id=org_id, project_id=project["projectId"],
                                    url=f"http://localhost:{emulator.port}", timeout=5)
        target = RedBrickTarget("rb", settings, env={"REDBRICK_API_KEY": key})

        def remote_items():
            return [(t["name"], user_metadata(t)) for t in emulator.tasks_in(org_id, project["projectId"])]

        def inject(kind):
            emulator.faults.next(kind, path=r"/createDatapointSDK$")

        yield ContractCase(target=target, secret=key, remote_items=remote_items, inject=inject,
                           revoke_credentials=lambda: emulator.revoke(key))
