"""`syncd run` against the Nucleus emulator with faults on about one request in five
(lost replies included, on the annotation routes too), jobs that go Queued -> Running ->
Completed over polls, and a SIGKILL mid-run: every local item ends up as exactly one remote
item (one reference_id) holding its latest image and metadata, and exactly its sidecar's
labels and mask as annotations (once each), after label edits made while the daemon was down."""

from __future__ import annotations

import json
import re
import sqlite3

from syncd.targets.nucleus.payload import to_nucleus
from tests.daemon_harness import run_cli, wait_for, write_config
from tests.emulators.nucleus import NucleusEmulator
from tests.helpers import image_bytes, make_upload, mask_bytes, write_atomic, write_item
from tests.platforms.e2e import COUNT, FAULT_RATE, FAULTS, FaultyRun

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


# -- batches and jobs (engine v2) -----------------------------------------------------------------
def _batch_config(tmp_path, emulator, dataset_id, **target):
    table = {"platform": "nucleus", "dataset_id": dataset_id, "base_url": emulator.endpoint, "timeout": 5.0,
             "workers": 2, "job_poll_interval": 0.2, "job_timeout": 30.0}
    table.update(target)
    return write_config(tmp_path, {"nuc": table}, daemon={"rescan_seconds": 30})


def _faults_on_job_reads(emulator) -> None:
    """The harness's random faults, on job reads only: every append must be explained."""
    emulator.faults.set_rate(FAULT_RATE, FAULTS, path=r"/job/")


def _write_frames(inbox, count: int = COUNT, *, version: int = 1) -> dict[str, tuple[dict, int]]:
    expected = {}
    for i in range(count):
        key = f"cam{i % 2}/f{i:03d}"
        metadata, seed = {"i": i, "v": version}, i + 1000 * (version - 1)
        write_item(inbox / key.split("/")[0], key.split("/")[1], metadata=metadata, seed=seed)
        expected[key] = (metadata, seed)
    return expected


def _holds(emulator, dataset_id, expected, lagging: list[str]) -> bool:
    for key, (metadata, seed) in expected.items():
        item = emulator.item(dataset_id, key)
        if item is None or item["metadata"] != metadata or emulator.image(dataset_id, key) != image_bytes(seed=seed):
            lagging[:] = [f"{key}: {item and item['metadata']}"]
            return False
    return True


def _journaled_jobs(state_dir) -> set[str]:
    """The job ids the daemon's journal holds (its ``jobs`` table), read-only."""
    path = state_dir / "syncd.db"
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {row[0] for row in db.execute("SELECT job_id FROM jobs")}
    except sqlite3.OperationalError:  # not created yet
        return set()
    finally:
        db.close()


def _appends_per_key(emulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in emulator.journal:
        for row in entry["rows"]:
            counts[row["payload"]["reference_id"]] = counts.get(row["payload"]["reference_id"], 0) + 1
    return counts


def test_a_kill_with_jobs_outstanding_polls_them_after_the_restart(tmp_path):
    """SIGKILL while upload jobs are Running (1 s each, as real jobs take seconds): after the
    restart the daemon reads those jobs instead of sending their items again, re-sends only
    what changed meanwhile, and every key ends as one remote item holding its latest version."""
    with NucleusEmulator(seed=21, job_seconds=1.0) as emulator:
        emulator.record = True
        dataset_id = emulator.add_dataset("frames")
        env = {"NUCLEUS_API_KEY": emulator.api_key}
        config = _batch_config(tmp_path, emulator, dataset_id)
        inbox = tmp_path / "inbox"
        expected = _write_frames(inbox)

        state_dir = tmp_path / "state"

        def running_journaled():
            """Jobs still Running on Nucleus that the daemon journaled (their items in flight)."""
            journaled = _journaled_jobs(state_dir)
            with emulator.lock:
                return [job for job in emulator.state.jobs.values() if job.status == "Running"
                        and job.job_id in journaled]

        with FaultyRun(config, env, emulator) as run:
            _faults_on_job_reads(emulator)
            run.kill_when(lambda: len(running_journaled()) >= 2, interval=0.02, message="journaled jobs running")
            running = running_journaled()  # after the kill: what the journal says is outstanding
            held = {row.payload["reference_id"] for job in running for row in job.rows}
            sent_before = _appends_per_key(emulator)
            assert held, "no job was running at the kill"
            # While the daemon is down, one item of a running job changes: it must be sent again.
            changed = sorted(held)[0]
            metadata, seed = {"i": expected[changed][0]["i"], "v": 2}, expected[changed][1] + 500
            write_item(inbox / changed.split("/")[0], changed.split("/")[1], metadata=metadata, seed=seed, old=False)
            expected[changed] = (metadata, seed)
            polls_from = len(emulator.requests)
            lagging: list[str] = []
            run.converge(lambda: _holds(emulator, dataset_id, expected, lagging), timeout=90,
                         explain=lambda: f"{lagging}; status {run.status()}")
        after = _appends_per_key(emulator)
        # The jobs running at the kill were read after the restart, not their items sent again.
        polled = {path.rsplit("/", 1)[-1] for method, path in emulator.requests[polls_from:]
                  if method == "GET" and re.search(r"/job/[^/]+$", path)}
        assert {job.job_id for job in running} <= polled
        resent = {key for key in held if after[key] > sent_before.get(key, 0)}
        assert resent == {changed}, resent
        assert sorted(i["reference_id"] for i in emulator.items(dataset_id)) == sorted(expected)
        assert all(job.status == "Completed" for job in emulator.jobs())
        assert max(len(entry["rows"]) for entry in emulator.journal) > 1  # batches, not one item per request
        counts = run.status()
        assert counts["delivered"] == COUNT and counts["failed"] == 0, counts


def test_one_refused_item_in_a_batch_fails_alone(tmp_path):
    with NucleusEmulator(seed=22, job_seconds=0.3) as emulator:
        emulator.record = True
        dataset_id = emulator.add_dataset("frames")
        env = {"NUCLEUS_API_KEY": emulator.api_key}
        config = _batch_config(tmp_path, emulator, dataset_id)
        expected = _write_frames(tmp_path / "inbox")
        refused = "cam1/f007"
        emulator.reject[refused] = "Image could not be processed: unsupported colour profile"
        with FaultyRun(config, env, emulator) as run:
            _faults_on_job_reads(emulator)
            others = {k: v for k, v in expected.items() if k != refused}
            lagging: list[str] = []
            wait_for(lambda: _holds(emulator, dataset_id, others, lagging), timeout=60, interval=0.3,
                     message="every other item delivered")
            wait_for(lambda: run.status()["failed"] == 1 and run.status()["pending"] == 0, timeout=30,
                     interval=0.3, message="the refused item failed")
            counts = run.status()
            assert run.daemon.stop() == 0
        assert counts["delivered"] == COUNT - 1, counts
        # It was refused inside a batch: the job carried other items, which were written.
        [batch] = [e for e in emulator.journal if refused in [r["payload"]["reference_id"] for r in e["rows"]]][:1]
        assert len(batch["rows"]) > 1
        assert emulator.item(dataset_id, refused) is None
        result = run_cli("status", "--json", "--config", str(config), env=env)
        assert "unsupported colour profile" in result.stdout


def test_a_lost_reply_for_a_whole_batch(tmp_path):
    """The first append's reply is lost (its job was created and runs): every item of it is
    sent again; the dataset ends with one item per key."""
    with NucleusEmulator(seed=23, job_seconds=0.3) as emulator:
        emulator.record = True
        dataset_id = emulator.add_dataset("frames")
        env = {"NUCLEUS_API_KEY": emulator.api_key}
        config = _batch_config(tmp_path, emulator, dataset_id)
        expected = _write_frames(tmp_path / "inbox")
        emulator.faults.next("lost_reply", path=r"/append$")  # the first append
        with FaultyRun(config, env, emulator) as run:
            _faults_on_job_reads(emulator)
            lagging: list[str] = []
            wait_for(lambda: _holds(emulator, dataset_id, expected, lagging), timeout=60, interval=0.3,
                     message="every item delivered")
            wait_for(lambda: run.status()["pending"] == 0 and run.status()["in_flight"] == 0, timeout=60,
                     interval=0.3, message="an idle journal")
            counts = run.status()
            assert run.daemon.stop() == 0
        # The append that lost its reply (not always the first recorded: another append may
        # be recorded before it when both are under way).
        [lost] = [append for append in emulator.journal if append["fault"] == "lost_reply"]
        assert ("lost_reply", "POST", f"/v1/nucleus/dataset/{dataset_id}/append") in emulator.faults.injected
        lost_keys = [r["payload"]["reference_id"] for r in lost["rows"]]
        assert len(lost_keys) > 1  # a whole batch lost its reply
        after = _appends_per_key(emulator)
        assert all(after[key] >= 2 for key in lost_keys)  # each sent again
        assert sorted(i["reference_id"] for i in emulator.items(dataset_id)) == sorted(expected)
        assert all(job.status == "Completed" for job in emulator.jobs())
        assert counts["delivered"] == COUNT and counts["failed"] == 0, counts
