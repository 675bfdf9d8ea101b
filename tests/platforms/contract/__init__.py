"""The target contract: one case module per registered platform (``case_<platform>.py``, see
tests/platforms/test_contract.py).

Each module defines ``make_case(tmp_path)``: a context manager yielding a ``ContractCase``
whose target is connected to a fresh emulator (or directory, for ``local``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from syncd.targets.base import Target


@dataclass
class ContractCase:
    target: Target
    # Every secret the target was given; none may appear in any error message.
    secret: str
    # All remote items as (item key, metadata) pairs; duplicates show up as repeated keys.
    remote_items: Callable[[], list[tuple[str, dict]]]
    # Queue a fault ("503", "429", "reset", "lost_reply", ...) for the next request(s) that
    # a delivery makes; None for targets without a network.
    inject: Callable[[str], None] | None
    # Make the credentials invalid from now on (the platform answers 401/403).
    revoke_credentials: Callable[[], None] | None
