"""Contract case for the Dataloop target, against the Dataloop emulator."""

from __future__ import annotations

from contextlib import contextmanager

from syncd.targets.dataloop.target import DataloopSettings, DataloopTarget
from syncd.targets.dataloop.wire import MARKER
from tests.emulators.dataloop import DataloopEmulator
from tests.platforms.contract import ContractCase

NETWORK = True
ROOT = "/syncd/"


def item_key(filename: str) -> str:
    """The syncd item key of a remote path made by the target (root and suffix stripped)."""
    return filename.removeprefix(ROOT).rsplit(".", 1)[0]


def user_metadata(item: dict) -> dict:
    """An item's metadata.user without syncd's own marker."""
    return {k: v for k, v in item["metadata"].get("user", {}).items() if k != MARKER}


@contextmanager
def make_case(tmp_path):
    with DataloopEmulator() as emulator:
        project = emulator.add_project("Contract Project")
        dataset = emulator.add_dataset(project["id"], "contract-ds")
        emulator.add_dataset(project["id"], "other-ds")
        token = emulator.make_token()
        settings = DataloopSettings(project="Contract Project", dataset="contract-ds", remote_root=ROOT,
                                    base_url=f"{emulator.url}/api/v1", timeout=5)
        target = DataloopTarget("dl", settings, env={"DATALOOP_API_KEY": token})

        def remote_items():
            return [(item_key(i["filename"]), user_metadata(i)) for i in emulator.items_in(dataset["id"])]

        def inject(kind):
            emulator.faults.next(kind, path=r"/items$|/items/")

        yield ContractCase(target=target, secret=token, remote_items=remote_items, inject=inject,
                           revoke_credentials=lambda: emulator.revoke(token))
