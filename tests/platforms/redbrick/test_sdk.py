"""Oracle test: the official ``redbrick-sdk`` against the RedBrick emulator, and the syncd
target side by side with it.

The SDK pins pillow and other packages to versions other than ours, so it lives in its own
venv ``.venv-sdk-redbrick`` (see tests/install.sh for the install commands) and
runs in a subprocess: this very file, run as a script, whose script part needs only the
SDK. The test then asserts what the emulator stored from the SDK, that the SDK reads back
what the target wrote, and that both send the same wire shapes (operation names,
variables, gzip+base64 bodies, credential-free PUTs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

FIRST = {"camera": "c1", "site": "A"}
SECOND = {"camera": "c2"}


def run_sdk(url: str, org_id: str, project_id: str, key: str, image: str, image2: str) -> dict:
    """The SDK side (runs in the subprocess): returns what the SDK saw, as JSON."""
    import redbrick

    project = redbrick.get_project(org_id, project_id, key, url)
    storage = redbrick.StorageMethod.REDBRICK
    created = project.upload.create_datapoints(
        storage, [{"name": "sdk/frame", "items": [image], "metaData": FIRST, "labels": []}])
    task_id = created[0]["response"]["taskId"]
    try:
        project.upload.update_task_items(storage,
                                         [{"taskId": task_id, "metaData": SECOND, "series": [{"items": image2}]}])
        update_error = None
    except KeyError as exc:  # SDK 2.35.4 raises this *after* a successful updateTaskItems
        update_error = f"KeyError: {exc}"
    listed = list(project.export.list_tasks(task_name="sdk/", limit=None))
    syncd_task = list(project.export.list_tasks(task_name="syncd/frame", limit=None))
    return {"created": created, "update_error": update_error, "listed": listed, "syncd_task": syncd_task}


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_sdk(*sys.argv[1:7])))
    sys.exit(0)


import uuid  # noqa: E402  (the test side; the script side above needs only the SDK)

import pytest  # noqa: E402

from syncd.targets.redbrick.client import REDBRICK_STORAGE  # noqa: E402
from syncd.targets.redbrick.target import VERSION_KEY, RedBrickSettings, RedBrickTarget  # noqa: E402
from tests.daemon_harness import REPO  # noqa: E402
from tests.emulators.redbrick import RedBrickEmulator  # noqa: E402
from tests.helpers import image_bytes, make_upload  # noqa: E402

SDK_PYTHON = REPO / ".venv-sdk-redbrick" / "bin" / "python"


@pytest.fixture
def emulator():
    with RedBrickEmulator() as emulator:
        yield emulator


def test_sdk_and_target_agree_with_the_emulator(emulator, tmp_path):
    assert SDK_PYTHON.exists(), f"the SDK venv is missing: see tests/install.sh ({SDK_PYTHON})"
    org_id = str(uuid.uuid4())
    project = emulator.add_project(org_id, name="Oracle")
    project_id = project["projectId"]
    key = emulator.add_api_key(org_id)
    url = f"http://localhost:{emulator.port}"
    first, second = image_bytes(seed=1), image_bytes(seed=2, fmt="JPEG")
    (tmp_path / "frame.png").write_bytes(first)
    (tmp_path / "frame2.jpg").write_bytes(second)

    # The target writes one task first, so the SDK can read it back.
    target = RedBrickTarget("rb", RedBrickSettings(org_id=org_id, project_id=project_id, url=url, timeout=5),
                            env={"REDBRICK_API_KEY": key})
    upload = make_upload("syncd/frame", metadata={"site": "B", "n": 3})
    receipt = target.deliver(upload)
    target.close()
    target_calls = len(emulator.calls)

    env = {**os.environ, "HOME": str(tmp_path), "REDBRICK_DISABLE_VERSION_CHECK": "1", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run([str(SDK_PYTHON), __file__, url, org_id, project_id, key, "frame.png", "frame2.jpg"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])

    # What the emulator stored from the SDK: one task, its bytes, metadata replaced by the update.
    tasks = {t["name"]: t for t in emulator.tasks_in(org_id, project_id)}
    assert sorted(tasks) == ["sdk/frame", "syncd/frame"]
    sdk_task = tasks["sdk/frame"]
    assert result["created"][0]["response"]["taskId"] == sdk_task["taskId"]
    assert sdk_task["meta"] == SECOND  # replaced, not merged: "site" is gone
    assert result["update_error"] and result["update_error"].startswith("KeyError")  # the known SDK bug
    assert len(sdk_task["items"]) == 1 and emulator.blobs[sdk_task["items"][0]]["data"] == second
    assert emulator.blobs[sdk_task["items"][0]]["content_type"] == "image/jpeg"
    assert sdk_task["storageId"] == REDBRICK_STORAGE and sdk_task["labelsData"] == "[]"

    # The SDK reads back both tasks, including the one the target wrote.
    assert [t["name"] for t in result["listed"]] == ["sdk/frame"]
    assert result["listed"][0]["metaData"] == SECOND
    [seen] = result["syncd_task"]
    assert seen["taskId"] == receipt.remote_id
    assert seen["metaData"] == {"site": "B", "n": "3", VERSION_KEY: upload.version}

    # The same wire shapes: gzip+base64 bodies, the SDK's operation names and variables.
    target_ops = emulator.calls[:target_calls]
    sdk_ops = emulator.calls[target_calls:]
    for call in emulator.calls:
        assert call["headers"].get("content-encoding-rb") == "gzip" and call["headers"]["apikey"] == key
    for op in ("itemsUploadPresignSDK", "createDatapointSDK"):
        sdk_call = next(c for c in sdk_ops if c["op"] == op)
        ours = next(c for c in target_ops if c["op"] == op)
        assert set(ours["variables"]) == set(sdk_call["variables"]), op
    sdk_create = next(c for c in sdk_ops if c["op"] == "createDatapointSDK")["variables"]
    our_create = next(c for c in target_ops if c["op"] == "createDatapointSDK")["variables"]
    for name in ("orgId", "projectId", "storageId", "labelsData", "preAssign", "isGroundTruth", "workspaceId"):
        assert our_create[name] == sdk_create[name], name
    sdk_update = next(c for c in sdk_ops if c["op"] == "updateTaskItemsSDK")["variables"]
    assert {"taskId", "storageId", "items", "metaData"} <= set(sdk_update)
    # Presigned PUTs carry no credentials, from either client.
    assert len(emulator.puts) == 3
    assert all("apikey" not in p["headers"] and "authorization" not in p["headers"] for p in emulator.puts)
