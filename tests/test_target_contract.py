"""One contract suite for every target: deliver, update, lookup, error classes, secrets.

Platform case modules live in tests/contract/case_<platform>.py; each is a fresh emulator
(or directory) and a target pointed at it.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import tests.contract as contract_pkg
from syncd.errors import FatalTargetError, SyncdError, TransientError
from tests.helpers import make_upload

CASES = sorted(m.name for m in pkgutil.iter_modules(contract_pkg.__path__) if m.name.startswith("case_"))
# Cases whose target talks HTTP to an emulator (module flag NETWORK = True): they also get
# the fault-injection and credential tests.
NETWORK_CASES = [c for c in CASES if getattr(importlib.import_module(f"tests.contract.{c}"), "NETWORK", False)]


def _made_case(name, tmp_path):
    module = importlib.import_module(f"tests.contract.{name}")
    return module.make_case(tmp_path)


@pytest.fixture(params=CASES, ids=[c.removeprefix("case_") for c in CASES])
def case(request, tmp_path):
    with _made_case(request.param, tmp_path) as made:
        yield made
        made.target.close()


@pytest.fixture(params=NETWORK_CASES, ids=[c.removeprefix("case_") for c in NETWORK_CASES])
def network_case(request, tmp_path):
    with _made_case(request.param, tmp_path) as made:
        yield made
        made.target.close()


def metadata_of(case, key):
    found = [meta for k, meta in case.remote_items() if k == key]
    assert len(found) == 1, f"expected exactly one remote item for {key}, found {len(found)}"
    return found[0]


def test_check_passes_and_returns_warnings_list(case):
    assert isinstance(case.target.check(), list)


def test_deliver_creates_one_item_with_metadata(case):
    upload = make_upload("cam1/frame_0001", metadata={"site": "A", "n": "1"})
    receipt = case.target.deliver(upload)
    assert receipt.remote_id
    assert metadata_of(case, "cam1/frame_0001") == {"site": "A", "n": "1"}


def test_update_replaces_metadata_in_place(case):
    first = make_upload("a/b", metadata={"site": "A", "old": "x"})
    receipt = case.target.deliver(first)
    second = make_upload("a/b", metadata={"site": "B"}, previous=receipt)
    receipt2 = case.target.deliver(second)
    assert receipt2.remote_id
    assert metadata_of(case, "a/b") == {"site": "B"}


def test_lookup_finds_delivered_item_or_target_is_upsert(case):
    upload = make_upload("look/up", metadata={"k": "v"})
    assert case.target.lookup(upload) is None
    receipt = case.target.deliver(upload)
    found = case.target.lookup(upload)
    if case.target.create_only:
        assert found is not None and found.remote_id == receipt.remote_id
    else:
        assert found is None or found.remote_id == receipt.remote_id


def test_resend_after_lost_reply_never_duplicates(network_case):
    """The reply of a committed request is lost; the daemon's recovery path must not duplicate."""
    case = network_case
    upload = make_upload("lost/reply", metadata={"k": "v"})
    case.inject("lost_reply")
    with pytest.raises(TransientError):
        case.target.deliver(upload)
    # What delivery.py does after an unknown outcome on a create-only target:
    previous = case.target.lookup(upload) if case.target.create_only else None
    retry = make_upload("lost/reply", metadata={"k": "v"}, previous=previous)
    case.target.deliver(retry)
    assert metadata_of(case, "lost/reply") == {"k": "v"}


@pytest.mark.parametrize("fault", ["503", "429", "reset"])
def test_transient_faults_raise_transient_error(network_case, fault):
    case = network_case
    case.inject(fault)
    with pytest.raises(TransientError) as caught:
        case.target.deliver(make_upload("t/fault", metadata={}))
    if fault == "429":
        assert caught.value.retry_after is not None
    assert case.secret not in str(caught.value)


def test_revoked_credentials_are_fatal_and_secret_free(network_case):
    case = network_case
    case.revoke_credentials()
    with pytest.raises(FatalTargetError) as caught:
        case.target.deliver(make_upload("auth/fail", metadata={}))
    assert case.secret not in str(caught.value)
    with pytest.raises(SyncdError) as caught:
        case.target.check()
    assert case.secret not in str(caught.value)
