"""The Dataloop target against the Dataloop emulator: auth, dataset resolution, idempotent
delivery, PATCH diffs, updates, corrupted uploads, lookups and error classes."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from pydantic import ValidationError

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.targets.dataloop.client import jwt_expiry
from syncd.targets.dataloop.target import DataloopSettings, DataloopTarget
from syncd.targets.dataloop.wire import MARKER, metadata_diff
from tests.emulators.dataloop import DataloopEmulator, make_jwt
from tests.helpers import image_bytes, make_upload


class World:
    def __init__(self, emulator: DataloopEmulator):
        self.emulator = emulator
        self.project = emulator.add_project("Proj")
        self.dataset = emulator.add_dataset(self.project["id"], "ds")
        self.token = emulator.make_token()
        self.targets: list[DataloopTarget] = []

    def target(self, token: str | None = None, **settings) -> DataloopTarget:
        options = {"project": "Proj", "dataset": "ds", "base_url": f"{self.emulator.url}/api/v1", "timeout": 5}
        options.update(settings)
        if "dataset_id" in settings:
            options.pop("project"), options.pop("dataset")
        target = DataloopTarget("dl", DataloopSettings(**options), env={"DATALOOP_API_KEY": token or self.token})
        self.targets.append(target)
        return target

    def items(self) -> list[dict]:
        return self.emulator.items_in(self.dataset["id"])

    def only_item(self) -> dict:
        items = self.items()
        assert len(items) == 1, [i["filename"] for i in items]
        return items[0]

    def user(self, item: dict) -> dict:
        return {k: v for k, v in item["metadata"]["user"].items() if k != MARKER}


@pytest.fixture
def world():
    with DataloopEmulator() as emulator:
        made = World(emulator)
        yield made
        for target in made.targets:
            target.close()


# -- settings and credentials ----------------------------------------------------------------------
def test_settings_need_exactly_one_way_to_name_the_dataset():
    with pytest.raises(ValidationError, match="not both"):
        DataloopSettings(dataset_id="abc", project="p", dataset="d")
    with pytest.raises(ValidationError, match="give dataset_id"):
        DataloopSettings(project="p")
    with pytest.raises(ValidationError, match="give dataset_id"):
        DataloopSettings()
    with pytest.raises(ValidationError, match="extra"):
        DataloopSettings(dataset_id="abc", api_key="secret")  # keys never live in the TOML
    assert DataloopSettings(dataset_id="abc", remote_root="a//b").remote_root == "/a/b/"
    assert DataloopSettings(dataset_id="abc").remote_root == "/"
    with pytest.raises(ValidationError, match="'..'"):
        DataloopSettings(dataset_id="abc", remote_root="/a/../b")


def test_jwt_expiry_reads_exp_without_checking_the_signature():
    assert jwt_expiry(make_jwt({"exp": 1234}, b"any")) == 1234.0
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry(make_jwt({"sub": "no exp"}, b"any")) is None
    assert jwt_expiry("a.b!!.c") is None


@pytest.mark.parametrize("expires_in", [-3600, 30])
def test_expired_key_is_fatal_before_any_request(world, expires_in):
    token = world.emulator.make_token(expires_in=expires_in)
    target = world.target(token)
    for call in (target.check, lambda: target.deliver(make_upload("a/b")), lambda: target.lookup(make_upload("a/b"))):
        with pytest.raises(FatalTargetError, match="DATALOOP_API_KEY expired") as caught:
            call()
        assert token not in str(caught.value)
    assert world.emulator.requests == []


def test_a_key_that_is_not_a_jwt_is_fatal_before_any_request(world):
    target = world.target("plain-api-key-value-1234")
    with pytest.raises(FatalTargetError, match="not a Dataloop API key") as caught:
        target.deliver(make_upload("a/b"))
    assert "plain-api-key-value-1234" not in str(caught.value)
    assert world.emulator.requests == []


def test_missing_key_names_the_variable(world):
    settings = DataloopSettings(dataset_id="x", base_url=f"{world.emulator.url}/api/v1", api_key_env="MY_DL_KEY")
    with pytest.raises(FatalTargetError, match="MY_DL_KEY"):
        DataloopTarget("dl", settings, env={}).check()


def test_revoked_key_is_fatal_and_secret_free(world):
    target = world.target()
    target.check()
    world.emulator.revoke(world.token)
    for call in (target.check, lambda: target.deliver(make_upload("a/b"))):
        with pytest.raises(FatalTargetError, match="401") as caught:
            call()
        assert world.token not in str(caught.value)


@pytest.mark.parametrize("fault", ["429", "503", "500"])
def test_rate_limits_and_server_errors_are_transient(world, fault):
    target = world.target()
    target.check()
    world.emulator.faults.retry_after = 7
    world.emulator.faults.next(fault, path=r"/items$")
    with pytest.raises(TransientError) as caught:
        target.deliver(make_upload("a/b"))
    if fault == "429":
        assert caught.value.retry_after == 7
    assert world.token not in str(caught.value) and world.items() == []
    target.deliver(make_upload("a/b"))  # the next attempt goes through
    assert len(world.items()) == 1


# -- check and dataset resolution ------------------------------------------------------------------
def test_check_resolves_the_dataset_by_names_once(world):
    target = world.target()
    assert target.check() == []
    assert target.dataset_id() == world.dataset["id"]
    before = len(world.emulator.requests)
    target.deliver(make_upload("a/b"))
    assert not any("/projects/" in path or path.endswith("/datasets/query")
                   for _, path in world.emulator.requests[before:])


def test_check_by_dataset_id_and_unknown_dataset(world):
    assert world.target(dataset_id=world.dataset["id"]).check() == []
    with pytest.raises(FatalTargetError, match="no Dataloop dataset with id 'nope'"):
        world.target(dataset_id="nope").check()


def test_unknown_project_or_dataset_is_fatal(world):
    with pytest.raises(FatalTargetError, match="no Dataloop project named 'Other'"):
        world.target(project="Other").check()
    with pytest.raises(FatalTargetError, match="no dataset named 'missing'"):
        world.target(dataset="missing").check()
    world.emulator.add_dataset(world.project["id"], "twice")
    world.emulator.add_dataset(world.project["id"], "twice")
    with pytest.raises(FatalTargetError, match="2 datasets named 'twice'"):
        world.target(dataset="twice").check()


def test_check_warns_when_the_key_expires_soon(world):
    target = world.target(world.emulator.make_token(expires_in=5 * 86400))
    warnings = target.check()
    assert len(warnings) == 1 and "expires in 5 days" in warnings[0]


def test_deleted_dataset_is_fatal(world):
    target = world.target()
    target.check()
    del world.emulator.datasets[world.dataset["id"]]
    with pytest.raises(FatalTargetError, match="no longer exists"):
        target.deliver(make_upload("a/b"))


# -- delivery ----------------------------------------------------------------------------------------
def test_first_delivery_stores_bytes_path_and_metadata(world):
    target = world.target(remote_root="/drop")
    upload = make_upload("cam1/frame_0001", metadata={"site": "A", "n": 3, "gone": None, "deep": {"x": [1]}})
    receipt = target.deliver(upload)
    item = world.only_item()
    assert item["filename"] == "/drop/cam1/frame_0001.png" == receipt.extra["path"]
    assert world.emulator.binaries[item["id"]] == upload.image
    assert item["metadata"]["system"]["size"] == len(upload.image)
    assert item["metadata"]["system"]["mimetype"] == "image/png"
    assert world.user(item) == {"site": "A", "n": 3, "deep": {"x": [1]}}  # null values are not stored
    assert item["metadata"]["user"][MARKER] == {"key": upload.key, "version": upload.version,
                                                "image_sha256": upload.image_sha256, "annotations_sha256": "empty"}
    assert receipt.remote_id == item["id"] and receipt.extra["version"] == upload.version
    # Everything went in one request: the metadata rides along with the upload.
    assert [m for m, p in world.emulator.requests if "/items" in p] == ["POST"]


def test_lost_reply_on_upload_then_resend_gives_one_item(world):
    target = world.target()
    target.check()
    upload = make_upload("lost/one", metadata={"k": "v"})
    world.emulator.faults.next("lost_reply", path=r"/items$")
    with pytest.raises(TransientError) as caught:
        target.deliver(upload)
    assert caught.value.outcome_unknown
    # Recovery as the daemon does it on a create_only target: lookup, adopt if complete.
    found = target.lookup(upload)
    assert found is not None and found.extra["version"] == upload.version
    # And a blind re-send (mode=skip) is just as safe.
    receipt = target.deliver(upload)
    item = world.only_item()
    assert receipt.remote_id == found.remote_id == item["id"] and world.user(item) == {"k": "v"}


def test_lost_reply_on_metadata_patch_then_resend(world):
    target = world.target()
    first = target.deliver(make_upload("p/one", metadata={"a": 1}))
    second = make_upload("p/one", metadata={"a": 2, "b": 3}, previous=first)
    world.emulator.faults.next("lost_reply", path=r"/items/", method="PATCH")
    with pytest.raises(TransientError):
        target.deliver(second)
    receipt = target.deliver(second)
    assert receipt.remote_id == first.remote_id and world.user(world.only_item()) == {"a": 2, "b": 3}


def test_metadata_update_sends_a_diff_with_nulls_and_no_binary(world):
    target = world.target()
    old = {"camera": "c1", "old": "x", "nested": {"a": 1, "b": 2}, "tags": [1, 2]}
    new = {"camera": "c2", "nested": {"a": 1, "c": 3}, "tags": [2], "added": True}
    first = target.deliver(make_upload("m/one", metadata=old))
    world.emulator.record = True
    second = make_upload("m/one", metadata=new, previous=first)
    receipt = target.deliver(second)
    assert world.emulator.recorded("POST", r"/items$") == []  # the image did not change
    (patch,) = world.emulator.recorded("PATCH", r"/items/")
    assert patch["json"] == {"metadata": {"user": {
        "camera": "c2", "old": None, "nested": {"b": None, "c": 3}, "tags": [2], "added": True,
        MARKER: {"version": second.version}}}}
    assert world.user(world.only_item()) == new and receipt.extra["version"] == second.version


def test_metadata_diff_format():
    assert metadata_diff({"a": 1, "b": {"c": 1}}, {"a": 1, "b": {"c": 1}}) == {}
    assert metadata_diff({"a": 1}, {"a": 1.0}) == {"a": 1.0}  # JSON types matter
    assert metadata_diff({"a": {"x": 1}}, {"a": 5}) == {"a": 5}
    assert metadata_diff({"a": 5}, {"a": {"x": 1}}) == {"a": {"x": 1}}
    assert metadata_diff({"a": {"x": 1}}, {}) == {"a": None}


@pytest.mark.parametrize("new_id", [False, True], ids=["same-id", "new-id"])
def test_image_change_overwrites_in_place(world, new_id):
    world.emulator.overwrite_new_id = new_id
    target = world.target()
    first = target.deliver(make_upload("img/one", metadata={"k": "1"}, seed=1))
    world.emulator.record = True
    second = make_upload("img/one", metadata={"k": "2"}, seed=2, previous=first)
    receipt = target.deliver(second)
    (post,) = world.emulator.recorded("POST", r"/items$")
    assert post["query"] == {"mode": ["overwrite"]}
    item = world.only_item()
    assert world.emulator.binaries[item["id"]] == second.image and world.user(item) == {"k": "2"}
    assert receipt.remote_id == item["id"] and (item["id"] != first.remote_id) == new_id


def test_format_change_moves_the_item_and_keeps_one(world):
    target = world.target()
    first = target.deliver(make_upload("fmt/one", metadata={"k": "1"}))
    second = make_upload("fmt/one", metadata={"k": "1"}, fmt="JPEG", previous=first)
    receipt = target.deliver(second)
    item = world.only_item()
    assert item["filename"] == "/fmt/one.jpg" and item["id"] == receipt.remote_id != first.remote_id


def test_an_existing_foreign_item_at_the_path_is_overwritten(world):
    target = world.target()
    target.check()
    stranger = make_upload("x/y", seed=9)
    # Someone uploaded another image to our path, without syncd's marker.
    target._upload(world.dataset["id"], "/x/y.png", stranger, {"note": "manual"}, "skip")
    upload = make_upload("x/y", metadata={"k": "v"}, seed=1)
    receipt = target.deliver(upload)
    item = world.only_item()
    assert world.emulator.binaries[item["id"]] == upload.image and world.user(item) == {"k": "v"}
    assert receipt.extra["image_sha256"] == upload.image_sha256


def test_corrupted_new_item_is_deleted_and_the_retry_succeeds(world):
    target = world.target()
    world.emulator.truncate_next = 1
    upload = make_upload("c/new")
    with pytest.raises(TransientError, match="corrupted item was deleted") as caught:
        target.deliver(upload)
    assert not caught.value.outcome_unknown and world.items() == []
    target.deliver(upload)
    assert world.only_item()["metadata"]["system"]["size"] == len(upload.image)


def test_corrupted_overwrite_is_not_deleted_but_overwritten_again(world):
    target = world.target()
    first = target.deliver(make_upload("c/old", seed=1))
    second = make_upload("c/old", seed=2, previous=first)
    world.emulator.truncate_next = 1
    with pytest.raises(TransientError, match="overwritten on the next attempt"):
        target.deliver(second)
    # A crash now: the lookup must not claim the corrupted item holds this version.
    found = target.lookup(second)
    assert found.extra["version"] is None and found.extra["image_sha256"] is None
    target.deliver(replace(second, previous=found))
    assert world.emulator.binaries[world.only_item()["id"]] == second.image


def test_reserved_marker_key_is_a_permanent_error(world):
    with pytest.raises(PermanentError, match="'syncd' is reserved"):
        world.target().deliver(make_upload("r/one", metadata={MARKER: 1}))


def test_key_with_dot_segments_is_a_permanent_error(world):
    with pytest.raises(PermanentError, match="cannot be a Dataloop path"):
        world.target().deliver(make_upload("a/../b"))


# -- lookup ------------------------------------------------------------------------------------------
def test_lookup_reports_how_far_the_remote_item_is(world):
    target = world.target()
    upload = make_upload("l/one", metadata={"k": "1"})
    assert target.lookup(upload) is None
    receipt = target.deliver(upload)
    assert target.lookup(upload) == receipt
    changed = make_upload("l/one", metadata={"k": "2"})
    found = target.lookup(changed)
    assert found.remote_id == receipt.remote_id and found.extra["version"] is None
    assert found.extra["image_sha256"] == upload.image_sha256
    before = len(world.emulator.requests)
    target.deliver(replace(changed, previous=found))  # metadata only: GET + PATCH, no upload
    assert [m for m, _ in world.emulator.requests[before:]] == ["GET", "PATCH"]
    assert world.user(world.only_item()) == {"k": "2"}


def test_concurrent_deliveries_from_several_threads(world):
    target = world.target()
    target.check()
    errors = []

    def send(n):
        try:
            target.deliver(make_upload(f"t/{n}", metadata={"n": n}, seed=n))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    items = world.items()
    assert sorted(world.user(i)["n"] for i in items) == list(range(8))
    assert all(world.emulator.binaries[i["id"]] == image_bytes(seed=world.user(i)["n"]) for i in items)


def test_item_deleted_between_deliveries_is_uploaded_again(world):
    target = world.target()
    first = target.deliver(make_upload("gone/one", metadata={"a": 1}))
    with world.emulator.lock:
        world.emulator._delete_item(first.remote_id)
    receipt = target.deliver(make_upload("gone/one", metadata={"a": 2}, previous=first))
    item = world.only_item()
    assert receipt.remote_id == item["id"] and world.user(item) == {"a": 2}


def test_item_deleted_before_the_metadata_patch_is_transient(world):
    target = world.target()
    first = target.deliver(make_upload("gone/two", metadata={"a": 1}))
    with world.emulator.lock:
        world.emulator._delete_item(first.remote_id)
    item = {"id": first.remote_id, "metadata": {"user": {}}}
    with pytest.raises(TransientError, match="the item is gone"):
        target._patch_user_metadata(item, {"a": 2}, make_upload("gone/two"))
