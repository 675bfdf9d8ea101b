"""Contract case for the Edge Impulse organization-data target, against the Edge Impulse emulator."""

from __future__ import annotations

from contextlib import contextmanager

from syncd.targets.edgeimpulse.org import EdgeImpulseOrgSettings, EdgeImpulseOrgTarget
from syncd.targets.edgeimpulse.payload import user_metadata
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.platforms.contract import ContractCase

NETWORK = True


@contextmanager
def make_case(tmp_path):
    with EdgeImpulseEmulator() as emulator:
        org = emulator.add_org("Contract org")
        emulator.add_org_dataset(org["id"], "frames")
        emulator.add_org_dataset(org["id"], "other")
        key = emulator.make_org_key(org["id"])
        settings = EdgeImpulseOrgSettings(organization_id=org["id"], dataset="frames", api_url=f"{emulator.url}/v1",
                                          timeout=5)
        target = EdgeImpulseOrgTarget("ei-org", settings, env={"EI_ORG_API_KEY": key})

        def remote_items():
            return [(i["name"].replace("__", "/"), user_metadata(i["metadata"]))
                    for i in emulator.items_in(org["id"], "frames")]

        def inject(kind):
            emulator.faults.next(kind, path=r"/data/add$")

        yield ContractCase(target=target, secret=key, remote_items=remote_items, inject=inject,
                           revoke_credentials=lambda: emulator.revoke(key))
