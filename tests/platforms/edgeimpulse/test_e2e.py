"""`syncd run` against the Edge Impulse emulator with faults on about one request in five
(lost replies included) and a SIGKILL mid-run: every local item ends up as exactly one
sample holding its latest image, metadata, label and bounding boxes (from box labels and
masks; one item's labels are edited and its mask removed while the daemon is down), and
what Edge Impulse cannot hold is shown in `syncd status`."""

from __future__ import annotations

import json
import time

from syncd.targets.edgeimpulse.payload import sample_name, string_value, user_metadata
from tests.daemon_harness import (
    DaemonProcess,
    run_cli,
    run_once,
    wait_for,
    write_config,
)
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.helpers import image_bytes, mask_bytes, write_atomic, write_item
from tests.platforms.e2e import COUNT, FaultyRun

LANE = [9, 9, 9]  # class "lane" in cam0/class_map.json
MASK_BOX = {"label": "lane", "x": 16, "y": 0, "width": 16, "height": 24}  # mask_bytes: the right half
POLYGON = {"type": "polygon", "label": "roof", "points": [[0, 0], [9, 0], [4, 7]]}


def box(i: int) -> dict:
    return {"type": "box", "label": "car", "x": i % 10, "y": 2, "width": 5, "height": 4}


def boxes_for(labels: list[dict], has_mask: bool) -> list[dict]:
    """The bounding boxes Edge Impulse must hold, written out in its own form."""
    out = [{k: label[k] for k in ("label", "x", "y", "width", "height")} for label in labels if label["type"] == "box"]
    return out + ([MASK_BOX] if has_mask else [])


def test_faults_and_sigkill_converge_to_one_sample_each(tmp_path):
    with EdgeImpulseEmulator(seed=7) as emulator:
        project = emulator.add_project("E2E", labeling_method="object_detection")
        key = emulator.make_key(project["id"])
        env = {"EI_API_KEY": key}
        config = write_config(tmp_path, {"ei": {
            "platform": "edgeimpulse", "project_id": project["id"], "ingestion_url": emulator.url,
            "api_url": f"{emulator.url}/v1", "label_source": "folder", "timeout": 5.0, "workers": 3}},
            daemon={"rescan_seconds": 30})
        inbox = tmp_path / "inbox"
        write_atomic(inbox / "cam0" / "class_map.json", json.dumps({"lane": LANE}))
        # key -> (metadata, image seed, labels, mask): what the project must hold at the end.
        # cam0 items carry a box and a mask, cam1 items a box, one cam2 item a polygon too.
        expected = {}
        for i in range(COUNT):
            cam = i % 3
            labels = [box(i)] if cam < 2 else ([POLYGON, box(i)] if i == 2 else [])
            expected[f"cam{cam}/f{i:03d}"] = ({"i": i, "site": "A"}, i, labels, cam == 0)
        for item, (metadata, seed, labels, masked) in expected.items():
            write_item(inbox / item.split("/")[0], item.split("/")[1], metadata=metadata, seed=seed, labels=labels,
                       mask=mask_bytes(colours=((0, 0, 0), tuple(LANE))) if masked else None)

        def by_name() -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = {}
            for sample in emulator.samples_in(project["id"]):
                out.setdefault(sample["filename"], []).append(sample)
            return out

        def converged() -> bool:
            samples = by_name()
            for item, (metadata, seed, labels, masked) in expected.items():
                found = samples.get(sample_name(item), [])
                if len(found) != 1 or emulator.sample_data.get(found[0]["id"]) != image_bytes(seed=seed):
                    return False
                if user_metadata(found[0]["metadata"]) != {k: string_value(v) for k, v in metadata.items()}:
                    return False
                if found[0]["label"] != item.split("/")[0]:
                    return False
                if found[0]["boundingBoxes"] != boxes_for(labels, masked):
                    return False
            return len(samples) == COUNT

        # Besides the random faults, lost replies at the three places where they hurt most.
        emulator.faults.next("lost_reply", path=r"^/api/split/files$", times=2)
        with FaultyRun(config, env, emulator) as run:
            run.kill_when(lambda: len(by_name()) >= 10 and any(n.startswith("cam0__") for n in by_name()),
                          message="some deliveries, one with a mask")
            at_kill = set(by_name())
            assert len(at_kill) < COUNT, "the kill came too late to test anything"
            # While the daemon is down: a label edit with the mask removed on a delivered
            # cam0 item; metadata edits and new images, on items already delivered (updates
            # in place / replacements) and on items not delivered yet.
            relabeled = next(k for k in sorted(expected) if k.startswith("cam0/") and sample_name(k) in at_kill)
            metadata, seed, _, _ = expected[relabeled]
            expected[relabeled] = (metadata, seed, [box(7), {**box(1), "label": "bus"}], False)
            (inbox / f"{relabeled}.mask.png").unlink()
            write_item(inbox / "cam0", relabeled.split("/")[1], metadata=metadata, seed=seed,
                       labels=expected[relabeled][2], old=False)
            done = [k for k in sorted(expected) if sample_name(k) in at_kill and k != relabeled][:8]
            todo = [k for k in sorted(expected) if sample_name(k) not in at_kill][:4]
            for n, item in enumerate(done + todo):
                metadata, seed, labels, masked = expected[item]
                if n % 2:
                    expected[item] = ({**metadata, "site": "B", "edited": True}, seed, labels, masked)
                else:
                    expected[item] = (metadata, seed + 1000, labels, masked)
                write_item(inbox / item.split("/")[0], item.split("/")[1], metadata=expected[item][0],
                           seed=expected[item][1], labels=labels, old=False,
                           mask=mask_bytes(colours=((0, 0, 0), tuple(LANE))) if masked else None)
            emulator.record = True
            emulator.faults.next("lost_reply", path=r"/raw-data/\d+/metadata$")
            emulator.faults.next("lost_reply", path=r"/raw-data/\d+$", method="DELETE")
            run.converge(converged)
        lost = {(method, path.rsplit("/", 1)[-1]) for kind, method, path in emulator.faults.injected
                if kind == "lost_reply"}
        assert {("POST", "files"), ("POST", "metadata")} <= lost and any(m == "DELETE" for m, _ in lost), lost
        assert len(emulator.faults.injected) >= 10, emulator.faults.injected
        # After the restart, metadata edits went to the Studio metadata route and image changes
        # deleted the superseded sample: nothing was left behind.
        assert emulator.recorded("POST", r"/raw-data/\d+/metadata$")
        assert emulator.recorded("DELETE", r"/raw-data/\d+$")
        # The label edit replaced the boxes in place (the mask's box is gone, nothing doubled).
        relabel_sent = [e["json"] for e in emulator.recorded("POST", r"/bounding-boxes$")]
        assert {"boundingBoxes": boxes_for(expected[relabeled][2], False)} in relabel_sent
        assert converged()
        counts = run.status()
        assert counts["delivered"] == COUNT and counts["pending"] == 0 and counts["failed"] == 0, counts
        notes = {n["key"]: n["note"] for n in counts["not_representable"]}
        assert list(notes) == ["cam2/f002"] and "polygon" in notes["cam2/f002"], notes
        assert key not in run.daemon.logs()


def _config(tmp_path, emulator, project, **daemon):
    return write_config(tmp_path, {"ei": {
        "platform": "edgeimpulse", "project_id": project["id"], "ingestion_url": emulator.url,
        "api_url": f"{emulator.url}/v1", "timeout": 5.0, "workers": 2}}, daemon=daemon)


def test_a_lost_journal_ends_in_adoption_not_a_second_sample(tmp_path):
    """Issue 10 item 14: deliver, delete the journal, `syncd once` again: each re-send is
    refused as a duplicate and the sample found by name is adopted; a bounded number of
    requests, one sample per item."""
    with EdgeImpulseEmulator() as emulator:
        project = emulator.add_project("Lost journal")
        env = {"EI_API_KEY": emulator.make_key(project["id"])}
        config = _config(tmp_path, emulator, project)
        for i in range(3):
            write_item(tmp_path / "inbox", f"f{i}", metadata={"i": i}, seed=i)
        assert run_once(config, env=env).returncode == 0
        for path in (tmp_path / "state").glob("syncd.db*"):
            path.unlink()
        emulator.record = True
        result = run_once(config, env=env, args=("--max-wait", "10"))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "3 delivered, 0 failed" in result.stdout
        assert len(emulator.samples_in(project["id"])) == 3
        uploads = [e for e in emulator.recorded("POST", r"^/api/split/files$") if e["headers"].get("x-metadata")]
        assert len(uploads) == 3  # one refused re-send each (the other POST is the check's probe)
        assert len(emulator.journal) < 30, [(e["method"], e["path"]) for e in emulator.journal]


def test_ingestion_404_pauses_the_target_until_it_answers_again(tmp_path):
    """Issue 10 item 15: while the ingestion route answers 404 the target is paused with the
    reason and nothing fails; when it answers again everything is delivered."""
    with EdgeImpulseEmulator() as emulator:
        project = emulator.add_project("Route gone")
        key = emulator.make_key(project["id"])
        config = _config(tmp_path, emulator, project, target_recheck_seconds=0.5)
        inbox = tmp_path / "inbox"
        write_item(inbox, "first", seed=100)
        with DaemonProcess(config, env={"EI_API_KEY": key}) as daemon:
            wait_for(lambda: emulator.samples_in(project["id"]), message="the first delivery")
            emulator.hide_routes(r"^/api/[^/]+/files$")
            for i in range(4):
                write_item(inbox, f"later{i}", seed=i)

            def status() -> dict:
                return json.loads(run_cli("status", "--json", "--config", str(config),
                                          env={"EI_API_KEY": key}).stdout)

            wait_for(lambda: status()["targets"][0]["paused"], timeout=30, interval=0.3, message="a pause")
            reason = status()["targets"][0]["paused"]
            assert "404" in reason and "ingestion" in reason, reason
            time.sleep(2)  # several rechecks: still paused, nothing failed
            now = status()
            assert now["targets"][0]["paused"] and now["folders"][0]["targets"][0]["failed"] == 0, now
            emulator.hide_routes(None)
            wait_for(lambda: len(emulator.samples_in(project["id"])) == 5, timeout=30, message="every delivery")
            wait_for(lambda: not status()["targets"][0]["paused"], timeout=10, message="the target resumed")
            counts = status()["folders"][0]["targets"][0]
            assert counts["delivered"] == 5 and counts["failed"] == 0, counts
            assert daemon.stop() == 0


def test_shared_requests_under_faults_and_sigkill_converge_to_one_sample_each(tmp_path):
    """Items without sidecars, labelled by folder: a batch of one folder's new items shares
    one ingestion request. Under random faults (lost replies of whole shared requests
    included) and a SIGKILL, every item ends as exactly one sample holding its image and
    label, and some requests did carry several files."""
    with EdgeImpulseEmulator(seed=11) as emulator:
        emulator.record = True
        project = emulator.add_project("Shared E2E")
        env = {"EI_API_KEY": emulator.make_key(project["id"])}
        config = write_config(tmp_path, {"ei": {
            "platform": "edgeimpulse", "project_id": project["id"], "ingestion_url": emulator.url,
            "api_url": f"{emulator.url}/v1", "label_source": "folder", "timeout": 5.0, "workers": 2}},
            daemon={"rescan_seconds": 30})
        expected = {f"cam{i % 3}/f{i:03d}": i for i in range(COUNT)}
        for item, seed in expected.items():
            write_item(tmp_path / "inbox" / item.split("/")[0], item.split("/")[1], seed=seed)

        def samples() -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = {}
            for sample in emulator.samples_in(project["id"]):
                out.setdefault(sample["filename"], []).append(sample)
            return out

        def converged() -> bool:
            found = samples()
            return len(found) == COUNT and all(
                len(found.get(sample_name(item), [])) == 1
                and emulator.sample_data[found[sample_name(item)][0]["id"]] == image_bytes(seed=seed)
                and found[sample_name(item)][0]["label"] == item.split("/")[0]
                for item, seed in expected.items())

        emulator.faults.next("lost_reply", path=r"^/api/split/files$", times=2)
        with FaultyRun(config, env, emulator) as run:
            run.kill_when(lambda: len(samples()) >= 6, message="some deliveries")
            run.converge(converged)
        shared = [e for e in emulator.recorded("POST", r"^/api/split/files$")
                  if len([p for p in e.get("parts") or [] if p["name"] == "data"]) > 1]
        assert shared, "no ingestion request carried several files"
        assert converged()
        counts = run.status()
        assert counts["delivered"] == COUNT and counts["failed"] == 0, counts
