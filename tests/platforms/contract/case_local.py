"""Contract case for the local directory target."""

from __future__ import annotations

import json
from contextlib import contextmanager

from syncd.targets.local import LocalSettings, LocalTarget
from tests.platforms.contract import ContractCase


@contextmanager
def make_case(tmp_path):
    root = tmp_path / "dataset"
    target = LocalTarget("local", LocalSettings(path=root))

    def remote_items():
        return [
            (record["key"], record["metadata"])
            for record in (json.loads(p.read_text()) for p in sorted(root.rglob("*.json")))
        ]

    yield ContractCase(target=target, secret="no-secret-here", remote_items=remote_items, inject=None,
                       revoke_credentials=None)
