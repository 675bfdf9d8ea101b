"""One contract suite for every registered target: deliver, update, lookup, error classes,
secrets.

The platforms are those of ``syncd.targets.REGISTRY``; each has a case module
``tests/platforms/contract/case_<platform>.py`` (``-`` written ``_``) whose
``make_case(tmp_path)`` yields a fresh emulator (or directory) and a target pointed at it.
A registered platform without a case fails here, as does a case for a platform that is not
registered.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import tests.platforms.contract as contract_pkg
from syncd.errors import FatalTargetError, SyncdError, TransientError
from syncd.targets import REGISTRY, target_class
from tests.helpers import make_upload

PLATFORMS = sorted(REGISTRY)


def case_name(platform: str) -> str:
    return "case_" + platform.replace("-", "_")


def load_case(platform: str) -> ModuleType | None:
    """The contract case module of ``platform``, or None when there is none."""
    name = f"{contract_pkg.__name__}.{case_name(platform)}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the case exists but imports something missing: that is a failure
        return None


def missing_cases(platforms) -> list[str]:
    """The platforms among ``platforms`` that have no contract case."""
    return [p for p in sorted(platforms) if load_case(p) is None]


CASES = {platform: load_case(platform) for platform in PLATFORMS}
# Cases whose target talks HTTP to an emulator (module flag NETWORK = True): they also get
# the fault-injection and credential tests.
NETWORK_PLATFORMS = [p for p, module in CASES.items() if getattr(module, "NETWORK", False)]


def _made_case(platform, tmp_path):
    module = CASES[platform]
    if module is None:
        pytest.fail(f"platform {platform!r} is in REGISTRY but has no contract case: write "
                    f"{Path(contract_pkg.__file__).parent / case_name(platform)}.py")
    return module.make_case(tmp_path)


@pytest.fixture(params=PLATFORMS)
def case(request, tmp_path):
    with _made_case(request.param, tmp_path) as made:
        yield made
        made.target.close()


@pytest.fixture(params=NETWORK_PLATFORMS)
def network_case(request, tmp_path):
    with _made_case(request.param, tmp_path) as made:
        yield made
        made.target.close()


def test_every_registered_platform_has_a_case_and_every_case_a_platform():
    assert missing_cases(REGISTRY) == []
    assert missing_cases([*REGISTRY, "no-such-platform"]) == ["no-such-platform"]
    cases = {m.name for m in pkgutil.iter_modules(contract_pkg.__path__) if m.name.startswith("case_")}
    assert cases == {case_name(p) for p in REGISTRY}


def test_the_case_tests_the_registered_target(case, request):
    platform = request.node.callspec.params["case"]
    assert isinstance(case.target, target_class(platform)) and case.target.platform == platform


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
