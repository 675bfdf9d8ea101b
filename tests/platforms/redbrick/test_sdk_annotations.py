"""Oracle test for labels and masks: the official ``redbrick-sdk`` sends the same annotation
as the syncd target, through the RedBrick emulator, and both land identically.

The SDK (own venv ``.venv-sdk-redbrick``, run in a subprocess: this file as a script) gets the
annotation the way its users write it — the public ``series`` form our converter also
produces, with the mask as a NIfTI file — and runs its real pipeline: the emulator's
``validateAndConvertToImportFormat`` (public -> import format, emulated), its own
segmentation processing and upload (``presignUploadsSDK`` + PUT), then ``createDatapoint``;
and ``update_tasks_labels`` (``putLabels``) for an edit. The test compares, call by call, what
the SDK and the target sent (labels, labelsMap, presign variables, PUT headers, the NIfTI
bytes) and what the emulator kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_sdk(url: str, org_id: str, project_id: str, key: str, spec_path: str) -> dict:
    """The SDK side (runs in the subprocess)."""
    import redbrick

    spec = json.loads(Path(spec_path).read_text())
    project = redbrick.get_project(org_id, project_id, key, url)
    created = project.upload.create_datapoints(redbrick.StorageMethod.REDBRICK, [
        {"name": "sdk/labels", "series": [{"items": "frame.png", **spec["first"], "segmentations": "first.nii.gz"}]}])
    project.upload.update_tasks_labels([
        {"taskId": spec["task_id"], "series": [{**spec["second"], "segmentations": "second.nii.gz"}]}])
    return {"created": created}


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_sdk(*sys.argv[1:6])))
    sys.exit(0)


import uuid  # noqa: E402  (the test side; the script side above needs only the SDK)

from syncd.targets.redbrick.payload import to_redbrick  # noqa: E402
from syncd.targets.redbrick.target import RedBrickSettings, RedBrickTarget  # noqa: E402
from tests.daemon_harness import REPO  # noqa: E402
from tests.emulators.redbrick import RedBrickEmulator  # noqa: E402
from tests.platforms.redbrick.test_annotations import BOX, CLASS_MAP, LABELS, labelled, mask_pixels, mask_png  # noqa: E402

SDK_PYTHON = REPO / ".venv-sdk-redbrick" / "bin" / "python"
SAME_PRESIGN = ("fileTypeData", "fileEncodingData", "fileTypeSeg", "fileEncodingSeg", "filesData")


def canonical(labels: list[dict]) -> list[str]:
    """Labels in a comparable form: order aside (the server's conversion orders by kind)."""
    return sorted(json.dumps(label, sort_keys=True) for label in labels)


def decoded(call: dict) -> list[dict]:
    return json.loads(call["variables"]["labelsData"])


def test_sdk_and_target_send_the_same_labels_and_mask(tmp_path):
    assert SDK_PYTHON.exists(), f"the SDK venv is missing: see tests/install.sh ({SDK_PYTHON})"
    with RedBrickEmulator() as emulator:
        org_id = str(uuid.uuid4())
        project_id = emulator.add_project(org_id, name="Oracle")["projectId"]
        key = emulator.add_api_key(org_id)
        url = f"http://localhost:{emulator.port}"
        target = RedBrickTarget("rb", RedBrickSettings(org_id=org_id, project_id=project_id, url=url, timeout=5),
                                env={"REDBRICK_API_KEY": key})
        # The target: a task with every label type and a mask, then an edit (box moved, sky gone).
        first = labelled("syncd/labels", labels=LABELS[:5])
        pixels = mask_pixels()
        pixels[:8] = 0
        second_mask = mask_png(pixels)
        receipt = target.deliver(first)
        ours_created = emulator.tasks_in(org_id, project_id)[0]
        second = labelled("syncd/labels", labels=[LABELS[0], dict(BOX, x=0)], mask=second_mask, previous=receipt)
        target.deliver(second)
        target.close()
        ours = list(emulator.calls)
        our_puts = list(emulator.puts)

        # The SDK: the same annotations in the public form, the same NIfTI files.
        a, b = to_redbrick(first), to_redbrick(second)
        (tmp_path / "frame.png").write_bytes(first.image)
        (tmp_path / "first.nii.gz").write_bytes(a.nifti)
        (tmp_path / "second.nii.gz").write_bytes(b.nifti)
        spec = {"first": a.series, "second": b.series, "task_id": receipt.remote_id}
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "HOME": str(tmp_path), "REDBRICK_DISABLE_VERSION_CHECK": "1", "PYTHONPATH": ""}
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.run([str(SDK_PYTHON), __file__, url, org_id, project_id, key, str(tmp_path / "spec.json")],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        assert "response" in result["created"][0], result
        sdk = emulator.calls[len(ours):]
        sdk_puts = emulator.puts[len(our_puts):]
        tasks = {t["name"]: t for t in emulator.tasks_in(org_id, project_id)}

    def first_of(calls, op):
        return next(c for c in calls if c["op"] == op)

    # createDatapoint: the same labels (the SDK's come from the server's conversion of the
    # public form), one labelsMap entry for series 0, no labels file.
    sdk_create, our_create = first_of(sdk, "createDatapointSDK"), first_of(ours, "createDatapointSDK")
    assert canonical(decoded(sdk_create)) == canonical(decoded(our_create)) == canonical(a.labels)
    for call in (sdk_create, our_create):
        [entry] = call["variables"]["labelsMap"]
        assert entry["seriesIndex"] == 0 and entry["labelName"] and call["variables"]["labelsDataPath"] is None
    # What the emulator kept from each: the same labels, the very same NIfTI bytes.
    assert canonical(tasks["sdk/labels"]["labels"]) == canonical(ours_created["labels"])
    assert tasks["sdk/labels"]["segmentations"] == ours_created["segmentations"] == {0: a.nifti}

    # presignUploadsSDK and the NIfTI PUT: the same variables and headers.
    sdk_presign, our_presign = first_of(sdk, "presignUploadsSDK"), first_of(ours, "presignUploadsSDK")
    assert set(sdk_presign["variables"]) == set(our_presign["variables"])
    for name in SAME_PRESIGN:
        assert sdk_presign["variables"][name] == our_presign["variables"][name], name
    for presign in (sdk_presign, our_presign):
        [path] = presign["variables"]["filesSeg"]
        parts = path.split("/")
        assert parts[0] == "labels" and parts[3] == "0.nii.gz" and all(uuid.UUID(p) for p in parts[1:3])
    sdk_seg = [p for p in sdk_puts if "/segs/" in (p["filePath"] or "")]
    our_seg = [p for p in our_puts if "/segs/" in (p["filePath"] or "")]
    assert len(sdk_seg) == 2 and len(our_seg) == 2
    for header in ("content-type", "x-ms-blob-type"):
        assert {p["headers"][header] for p in sdk_seg} == {p["headers"][header] for p in our_seg}, header
    assert not any("apikey" in p["headers"] for p in sdk_seg + our_seg)

    # putLabels: the same variables, and the edit leaves the task as our edit left it.
    sdk_put, our_put = first_of(sdk, "updateTasksLabelsSDK"), first_of(ours, "updateTasksLabelsSDK")
    assert set(sdk_put["variables"]) == set(our_put["variables"])
    for name in ("taskId", "finalize", "timeSpentMs", "extraData", "labelsDataPath"):
        assert sdk_put["variables"][name] == our_put["variables"][name], name
    assert canonical(decoded(sdk_put)) == canonical(decoded(our_put)) == canonical(b.labels)
    assert [e["seriesIndex"] for e in sdk_put["variables"]["labelsMap"]] == [0]
    assert canonical(tasks["syncd/labels"]["labels"]) == canonical(b.labels)
    assert tasks["syncd/labels"]["segmentations"] == {0: b.nifti}
    assert {lb["category"] for lb in b.labels if "dicom" in lb} == {"road", "car"} and "sky" in CLASS_MAP
