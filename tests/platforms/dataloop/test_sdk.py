"""Oracle test: the official ``dtlpy`` SDK against the Dataloop emulator, and the syncd
target side by side with it.

The SDK runs in a subprocess (this very file, run as a script) so its process-wide state
(``DATALOOP_PATH`` cookie, environment, event loop) stays out of the test process. The
test then asserts what the emulator stored, and that the target speaks the same wire
shapes as the SDK: the multipart fields of an upload, the PATCH diff format, the query
by filename. dtlpy is pinned in tests/requirements-sdk.txt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ITEM_PATH = "/cam1/frame.png"
FIRST = {"camera": "c1", "n": 3, "old": "x", "nested": {"a": 1, "b": 2}}
SECOND = {"camera": "c2", "new": 1, "nested": {"a": 1, "c": [1, 2]}}


def run_sdk(url: str, token: str, image: str, target_path: str) -> dict:
    """The SDK side (runs in the subprocess): returns what the SDK saw, as JSON."""
    import dtlpy as dl

    dl.add_environment(environment=f"{url}/api/v1", alias="emulator", gate_url=url, verify_ssl=False)
    dl.setenv("emulator")
    dl.login_api_key(token)
    project = dl.projects.get(project_name="Oracle Project")
    dataset = project.datasets.get(dataset_name="oracle-ds")
    item = dataset.items.upload(local_path=image, remote_path="/cam1", item_metadata={"user": FIRST},
                                raise_on_error=True)
    first_id = item.id
    item.metadata["user"] = json.loads(json.dumps(SECOND))
    item = item.update()
    # The same file again in the default mode (skip): the existing item comes back.
    again = dataset.items.upload(local_path=image, remote_path="/cam1", raise_on_error=True)
    found = dataset.items.get(filepath=ITEM_PATH)
    by_target = dataset.items.get(filepath=target_path)
    return {"first_id": first_id, "updated_user": item.metadata["user"], "again_id": again.id,
            "found_id": found.id, "found_user": found.metadata["user"], "found_size": found.metadata["system"]["size"],
            "target_item_id": by_target.id, "target_item_user": by_target.metadata["user"],
            "target_item_size": by_target.metadata["system"]["size"]}


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_sdk(*sys.argv[1:5])))
    sys.exit(0)


import pytest  # noqa: E402  (the test side; the script side above needs only dtlpy)

from syncd.targets.dataloop.target import DataloopSettings, DataloopTarget  # noqa: E402
from syncd.targets.dataloop.wire import MARKER, metadata_diff  # noqa: E402
from tests.emulators.dataloop import DataloopEmulator  # noqa: E402
from tests.helpers import image_bytes, make_upload  # noqa: E402


@pytest.fixture
def world(tmp_path):
    with DataloopEmulator() as emulator:
        emulator.record = True
        project = emulator.add_project("Oracle Project")
        dataset = emulator.add_dataset(project["id"], "oracle-ds")
        token = emulator.make_token("oracle@example.com")
        settings = DataloopSettings(project="Oracle Project", dataset="oracle-ds", base_url=f"{emulator.url}/api/v1",
                                    timeout=5)
        target = DataloopTarget("dl", settings, env={"DATALOOP_API_KEY": token})
        yield emulator, dataset, token, target
        target.close()


def sdk(tmp_path: Path, emulator, token: str, image: Path, target_path: str) -> dict:
    env = {**os.environ, "DATALOOP_PATH": str(tmp_path / "dataloop-home"), "PYTHONWARNINGS": "ignore"}
    env.pop("INTERNAL_REQUESTS_URL", None)
    proc = subprocess.run([sys.executable, __file__, emulator.url, token, str(image), target_path],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"dtlpy run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_sdk_and_target_agree_with_the_emulator(world, tmp_path):
    emulator, dataset, token, target = world
    target_upload = make_upload("cam2/by_syncd", metadata={"site": "A", "deep": {"x": [1, 2]}}, seed=7)
    receipt = target.deliver(target_upload)
    target_path = receipt.extra["path"]
    image = tmp_path / "frame.png"
    image.write_bytes(image_bytes(seed=3))

    seen = sdk(tmp_path, emulator, token, image, target_path)

    # What the emulator stored for the SDK's item: one item, the bytes, the updated metadata.
    items = {i["filename"]: i for i in emulator.items_in(dataset["id"])}
    assert sorted(items) == [ITEM_PATH, target_path]
    stored = items[ITEM_PATH]
    assert emulator.binaries[stored["id"]] == image.read_bytes()
    assert stored["metadata"]["system"]["size"] == image.stat().st_size == seen["found_size"]
    assert stored["metadata"]["user"] == SECOND == seen["updated_user"] == seen["found_user"]
    assert seen["first_id"] == seen["again_id"] == seen["found_id"] == stored["id"]

    # The SDK reads the target's item as the target wrote it.
    assert seen["target_item_id"] == receipt.remote_id
    assert seen["target_item_size"] == len(target_upload.image)
    assert {k: v for k, v in seen["target_item_user"].items() if k != MARKER} == {"site": "A", "deep": {"x": [1, 2]}}

    # Same wire shapes: multipart fields of an upload (both chunked and plain bodies parsed).
    sdk_upload, target_post = emulator.recorded("POST", r"/items$")[1], emulator.recorded("POST", r"/items$")[0]
    assert sdk_upload["headers"].get("transfer-encoding") == "chunked"
    assert [name for name, _ in sdk_upload["parts"]] == [name for name, _ in target_post["parts"]]
    assert dict(sdk_upload["parts"])["path"] == ITEM_PATH
    assert json.loads(dict(sdk_upload["parts"])["metadata"]) == {"user": FIRST}
    assert sdk_upload["query"] == target_post["query"] == {"mode": ["skip"]}

    # Same PATCH diff for the same change: nested keys, removed keys as null.
    sdk_patch = emulator.recorded("PATCH", r"/items/")[-1]["json"]
    assert sdk_patch == {"metadata": {"user": metadata_diff(FIRST, SECOND)}}

    # The target's lookup finds the SDK's item by path (a foreign item: no version marker) ...
    sdk_item_upload = make_upload("cam1/frame", metadata={"camera": "c3"}, seed=3)
    found = target.lookup(sdk_item_upload)
    assert found is not None and found.remote_id == stored["id"] and found.extra["version"] is None
    sdk_query = [e for e in emulator.recorded("POST", r"/query$") if "filename" in json.dumps(e["json"])][0]
    target_query = emulator.recorded("POST", r"/query$")[-1]
    for clause in ({"filename": ITEM_PATH}, {"type": "file"}):
        assert clause in sdk_query["json"]["filter"]["$and"] and clause in target_query["json"]["filter"]["$and"]

    # ... and adopting it (daemon: deliver with previous=<lookup receipt>) keeps one item.
    adopted = target.deliver(make_upload("cam1/frame", metadata={"camera": "c3"}, seed=3, previous=found))
    items = {i["filename"]: i for i in emulator.items_in(dataset["id"])}
    assert len(items) == 2 and items[ITEM_PATH]["id"] == adopted.remote_id
    assert {k: v for k, v in items[ITEM_PATH]["metadata"]["user"].items() if k != MARKER} == {"camera": "c3"}
