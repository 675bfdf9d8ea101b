"""`syncd run` against the RedBrick emulator with faults on about one request in five (lost
replies included) and a SIGKILL mid-run: every local item ends up as exactly one task
holding its latest image, metadata, labels and mask (once each: replaced, never added to),
and none is left failed. Some label edits happen while the daemon is killed.

RedBrick refuses a second task of the same name, so "one task per item" also holds for a
careless client — it would show up as failed items instead. The journal's counts are
what proves that lost replies and the kill were recovered by lookup and adoption."""

from __future__ import annotations

import json
import uuid

from syncd.targets.redbrick.payload import to_redbrick
from syncd.targets.redbrick.target import VERSION_KEY
from tests.daemon_harness import write_config
from tests.emulators.redbrick import RedBrickEmulator
from tests.helpers import image_bytes, make_upload, mask_bytes, write_atomic, write_item
from tests.platforms.e2e import COUNT, FaultyRun

CLASS_MAP = {"road": [255, 0, 0]}  # mask_bytes(): black background, a red right half
MASK = mask_bytes()


def labels_for(i: int) -> list[dict] | None:
    """Every third item carries a box and a classification."""
    if i % 3:
        return None
    return [{"type": "box", "label": "car", "x": i % 10, "y": 2, "width": 8, "height": 6},
            {"type": "classification", "label": "day", "attributes": {"n": i}}]


def as_strings(metadata: dict) -> dict:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def test_faults_and_sigkill_converge_to_one_task_each(tmp_path):
    with RedBrickEmulator(seed=11) as emulator:
        org_id = str(uuid.uuid4())
        project_id = emulator.add_project(org_id, name="E2E")["projectId"]
        key = emulator.add_api_key(org_id)
        env = {"REDBRICK_API_KEY": key}
        config = write_config(tmp_path, {"rb": {
            "platform": "redbrick", "org_id": org_id, "project_id": project_id,
            "url": f"http://localhost:{emulator.port}", "timeout": 5.0, "workers": 3}},
            daemon={"rescan_seconds": 30})
        inbox = tmp_path / "inbox"
        write_atomic(inbox / "class_map.json", json.dumps(CLASS_MAP))
        # key -> (metadata, image seed, labels, mask): what the remote side must hold at the end.
        expected = {f"cam{i % 3}/f{i:03d}": ({"i": i, "site": "A"}, i, labels_for(i), MASK if i % 5 == 0 else None)
                    for i in range(COUNT)}
        for item_key, (metadata, seed, labels, mask) in expected.items():
            write_item(inbox / item_key.split("/")[0], item_key.split("/")[1], metadata=metadata, seed=seed,
                       labels=labels, mask=mask)
        want_labels: dict[tuple, tuple] = {}

        def remote_labels(item_key: str) -> tuple:
            """The labels and segmentations the item's task must hold (the converter's output)."""
            _, seed, labels, mask = expected[item_key]
            spec = (item_key, seed, json.dumps(labels), mask is not None)
            if spec not in want_labels:
                upload = make_upload(item_key, labels=labels or [], seed=seed, mask=mask,
                                     class_map=CLASS_MAP if mask else None)
                converted = to_redbrick(upload)
                want_labels[spec] = (converted.labels, {0: converted.nifti} if mask else {})
            return want_labels[spec]

        def remote() -> dict[str, dict]:
            return {t["name"]: t for t in emulator.tasks_in(org_id, project_id)}

        def converged() -> bool:
            tasks = remote()
            for item_key, (metadata, seed, _, _) in expected.items():
                task = tasks.get(item_key)
                if task is None or len(task["items"]) != 1:
                    return False
                blob = emulator.blobs.get(task["items"][0])
                if blob is None or blob["data"] != image_bytes(seed=seed):
                    return False
                if {k: v for k, v in task["meta"].items() if k != VERSION_KEY} != as_strings(metadata):
                    return False
                if (task["labels"], task["segmentations"]) != remote_labels(item_key):
                    return False
            return True

        with FaultyRun(config, env, emulator) as run:
            run.kill_when(lambda: len(remote()) >= 10 and any(expected[k][2] for k in remote()),
                          message="some deliveries, a labelled one among them")
            at_kill = set(remote())
            assert len(at_kill) < COUNT, "the kill came too late to test anything"
            # While the daemon is down: metadata edits, new images and label edits (a box
            # moved, a box removed, labels added), on items already delivered (updates in
            # place) and on items not delivered yet.
            done = [k for k in sorted(expected) if k in at_kill][:8]
            todo = [k for k in sorted(expected) if k not in at_kill][:4]
            labelled_done = [k for k in sorted(at_kill) if expected[k][2]][:2]
            assert labelled_done, "no labelled item was delivered before the kill"
            for n, item_key in enumerate(done + todo + labelled_done):
                metadata, seed, labels, mask = expected[item_key]
                if item_key in labelled_done:
                    labels = labels[1:] if n % 2 else [dict(labels[0], x=20), *labels[1:]]
                elif n % 2:
                    metadata = {**metadata, "site": "B", "edited": True}
                    labels = labels or [{"type": "point", "label": "nose", "x": 3, "y": 4}]
                else:
                    seed += 1000
                expected[item_key] = (metadata, seed, labels, mask)
                write_item(inbox / item_key.split("/")[0], item_key.split("/")[1], metadata=metadata, seed=seed,
                           labels=labels, mask=mask, old=False)
            run.converge(converged)
        injected = emulator.faults.injected
        assert "lost_reply" in {kind for kind, _, _ in injected} and len(injected) >= 10, injected
        assert any(path.endswith("/createDatapointSDK") for _, _, path in injected), injected
        # The edits after the restart were updates in place (updateTaskItems, putLabels), not new tasks.
        assert emulator.calls_of("updateTaskItemsSDK") and emulator.calls_of("updateTasksLabelsSDK")
        assert sum(1 for t in remote().values() if t["segmentations"]) == len([i for i in range(COUNT) if i % 5 == 0])
        assert sorted(remote()) == sorted(expected)
        assert all(t["meta"][VERSION_KEY] for t in remote().values())
        counts = run.status()
        assert counts["delivered"] == COUNT and counts["pending"] == 0 and counts["failed"] == 0, counts
        assert key not in run.daemon.logs()
