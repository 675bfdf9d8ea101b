"""`syncd run` against the Nucleus emulator with faults on about one request in five
(lost replies included, on the annotation routes too), jobs that go Queued -> Running ->
Completed over polls, and a SIGKILL mid-run: every local item ends up as exactly one remote
item (one reference_id) holding its latest image and metadata, and exactly its sidecar's
labels and mask as annotations (once each), after label edits made while the daemon was down."""

from __future__ import annotations

import json

from syncd.targets.nucleus.payload import to_nucleus
from tests.daemon_harness import write_config
from tests.emulators.nucleus import NucleusEmulator
from tests.helpers import image_bytes, make_upload, mask_bytes, write_atomic, write_item
from tests.platforms.e2e import COUNT, FaultyRun

CLASS_MAP = {"road": [255, 0, 0]}  # mask_bytes(): black background, a red right half
MASK = mask_bytes()
TWO_CLASSES = "cam0/f000"


def labels_for(i: int) -> list[dict] | None:
    """Every third item carries a box, a polygon and a classification (f000 a second one)."""
    if i % 3:
        return None
    labels = [{"type": "box", "label": "car", "x": i % 10, "y": 2, "width": 8, "height": 6},
              {"type": "polygon", "label": "roof", "points": [[0, 0], [10, 0], [5, 8]]},
              {"type": "classification", "label": "day", "attributes": {"n": i}}]
    return labels + [{"type": "classification", "label": "dusk"}] if i == 0 else labels


def test_faults_and_sigkill_converge_to_one_item_each(tmp_path):
    with NucleusEmulator(seed=13) as emulator:
        dataset_id = emulator.add_dataset("frames")
        env = {"NUCLEUS_API_KEY": emulator.api_key}
        config = write_config(tmp_path, {"nuc": {
            "platform": "nucleus", "dataset_id": dataset_id, "base_url": emulator.endpoint, "timeout": 5.0,
            "workers": 3, "job_poll_interval": 0.05, "job_timeout": 20.0}}, daemon={"rescan_seconds": 30})
        inbox = tmp_path / "inbox"
        write_atomic(inbox / "class_map.json", json.dumps(CLASS_MAP))
        # key -> (metadata, image seed, labels, mask): what the remote side must hold at the end.
        expected = {f"cam{i % 3}/f{i:03d}": ({"i": i, "site": "A"}, i, labels_for(i), MASK if i % 5 == 0 else None)
                    for i in range(COUNT)}
        for key, (metadata, seed, labels, mask) in expected.items():
            write_item(inbox / key.split("/")[0], key.split("/")[1], metadata=metadata, seed=seed, labels=labels,
                       mask=mask)

        def annotations_match(key: str) -> bool:
            """The item holds exactly the converter's annotations and mask, once each."""
            _, seed, labels, mask = expected[key]
            converted = to_nucleus(make_upload(key, labels=labels or [], seed=seed, mask=mask,
                                               class_map=CLASS_MAP if mask else None))
            held = emulator.annotations(dataset_id, key)
            order = lambda a: (a["type"], a.get("annotation_id") or "")  # noqa: E731
            flat = sorted((a for kind, rows in held.items() if kind != "segmentation" for a in rows), key=order)
            if flat != sorted(converted.annotations, key=order):
                return False
            if converted.segmentation is None:
                return "segmentation" not in held
            rows = held.get("segmentation", [])
            return (len(rows) == 1 and rows[0]["annotations"] == converted.segmentation["annotations"]
                    and emulator.mask(dataset_id, key) == converted.mask_png)

        lagging: list[str] = []  # the first item not converged yet, for the failure message

        def converged() -> bool:
            for key, (metadata, seed, _, _) in expected.items():
                item = emulator.item(dataset_id, key)
                image = emulator.image(dataset_id, key)
                if item is None or item["metadata"] != metadata or image != image_bytes(seed=seed):
                    lagging[:] = [f"{key}: item {item and item['metadata']}"]
                    return False
                if not annotations_match(key):
                    lagging[:] = [f"{key}: annotations {emulator.annotations(dataset_id, key)}"]
                    return False
            return True

        def some_delivered() -> bool:
            held = {i["reference_id"] for i in emulator.items(dataset_id)}
            return (len(held) >= 10 and any(expected[k][2] and k != TWO_CLASSES for k in held)
                    and any(expected[k][3] is not None for k in held))

        with FaultyRun(config, env, emulator) as run:
            run.kill_when(some_delivered, interval=0.05, message="some deliveries, labelled and masked")
            at_kill = {i["reference_id"] for i in emulator.items(dataset_id)}
            assert len(at_kill) < COUNT, "the kill came too late to test anything"
            # While the daemon is down: metadata edits and new images, on items already
            # delivered (updates in place) and on items not delivered yet...
            done = [k for k in sorted(expected) if k in at_kill][:8]
            todo = [k for k in sorted(expected) if k not in at_kill][:4]
            for n, key in enumerate(done + todo):
                metadata, seed, labels, mask = expected[key]
                if n % 2:
                    expected[key] = ({"i": metadata["i"], "edited": True}, seed, labels, mask)  # "site" removed
                else:
                    expected[key] = (metadata, seed + 1000, labels, mask)
            # ... and label edits on delivered items: the box removed and the polygon moved,
            # the mask removed, labels added to an item that had none.
            labelled = [k for k in sorted(at_kill) if expected[k][2] and k != TWO_CLASSES]
            masked = [k for k in sorted(at_kill) if expected[k][3] is not None]
            plain = [k for k in sorted(at_kill) if not expected[k][2]]
            assert labelled and masked and plain, (labelled, masked, plain)
            metadata, seed, labels, mask = expected[labelled[0]]
            moved = dict(labels[1], points=[[1, 1], [12, 1], [6, 9]])
            expected[labelled[0]] = (metadata, seed, [moved, labels[2]], mask)
            metadata, seed, labels, _ = expected[masked[-1]]
            (inbox / masked[-1].split("/")[0] / (masked[-1].split("/")[1] + ".mask.png")).unlink()
            expected[masked[-1]] = (metadata, seed, labels, None)
            metadata, seed, _, mask = expected[plain[0]]
            expected[plain[0]] = (metadata, seed, [{"type": "point", "label": "nose", "x": 3, "y": 4}], mask)
            for key in {*done, *todo, labelled[0], masked[-1], plain[0]}:
                metadata, seed, labels, mask = expected[key]
                write_item(inbox / key.split("/")[0], key.split("/")[1], metadata=metadata, seed=seed, labels=labels,
                           mask=mask, old=False)
            # At least one annotation write loses its reply (the random faults may miss them).
            emulator.faults.next("lost_reply", path=r"/annotate$")
            run.converge(converged, timeout=60, explain=lambda: f"{lagging}; status {run.status()}")
        injected = {kind for kind, _, _ in emulator.faults.injected}
        assert "lost_reply" in injected and len(emulator.faults.injected) >= 10, emulator.faults.injected
        assert any("/annotate" in path or "/annotation/" in path for _, _, path in emulator.faults.injected)
        # Every job the daemon started has ended (none left to overwrite later), and the
        # re-sends and updates were upserts: one item per key, nothing else.
        assert all(job.status == "Completed" for job in emulator.jobs()), [j.status for j in emulator.jobs()]
        assert sorted(i["reference_id"] for i in emulator.items(dataset_id)) == sorted(expected)
        assert converged()
        counts = run.status()
        assert counts["delivered"] == COUNT and counts["pending"] == 0 and counts["failed"] == 0, counts
        # The second classification Nucleus cannot hold is reported, not dropped silently.
        notes = {note["key"]: note["note"] for note in counts["not_representable"]}
        assert "multiple classifications" in notes.get(TWO_CLASSES, ""), notes
        assert emulator.api_key not in run.daemon.logs()
