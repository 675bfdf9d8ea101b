"""`syncd run` against the Edge Impulse emulator with faults on about one request in five
(lost replies included) and a SIGKILL mid-run: every local item ends up as exactly one
sample holding its latest image, metadata and label."""

from __future__ import annotations

import json

from syncd.targets.edgeimpulse_common import sample_name, string_value, user_metadata
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.helpers import image_bytes, write_item

COUNT = 30
FAULTS = ("500", "503", "429", "reset", "lost_reply", "slow")


def test_faults_and_sigkill_converge_to_one_sample_each(tmp_path):
    with EdgeImpulseEmulator(seed=7) as emulator:
        project = emulator.add_project("E2E")
        key = emulator.make_key(project["id"])
        env = {"EI_API_KEY": key}
        config = write_config(tmp_path, {"ei": {
            "platform": "edgeimpulse", "project_id": project["id"], "ingestion_url": emulator.url,
            "api_url": f"{emulator.url}/v1", "label_source": "folder", "timeout": 5.0, "workers": 3}},
            daemon={"rescan_seconds": 30})
        inbox = tmp_path / "inbox"
        # key -> (metadata, image seed): what the project must hold at the end.
        expected = {f"cam{i % 3}/f{i:03d}": ({"i": i, "site": "A"}, i) for i in range(COUNT)}
        for item, (metadata, seed) in expected.items():
            write_item(inbox / item.split("/")[0], item.split("/")[1], metadata=metadata, seed=seed)

        def by_name() -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = {}
            for sample in emulator.samples_in(project["id"]):
                out.setdefault(sample["filename"], []).append(sample)
            return out

        def converged() -> bool:
            samples = by_name()
            for item, (metadata, seed) in expected.items():
                found = samples.get(sample_name(item), [])
                if len(found) != 1 or emulator.sample_data.get(found[0]["id"]) != image_bytes(seed=seed):
                    return False
                if user_metadata(found[0]["metadata"]) != {k: string_value(v) for k, v in metadata.items()}:
                    return False
                if found[0]["label"] != item.split("/")[0]:
                    return False
            return len(samples) == COUNT

        def status() -> dict:
            result = run_cli("status", "--json", "--config", str(config), env=env)
            return json.loads(result.stdout)["folders"][0]["targets"][0]

        emulator.faults.retry_after = 1
        emulator.faults.set_rate(0.2, FAULTS)
        # Besides the random faults, lost replies at the three places where they hurt most.
        emulator.faults.next("lost_reply", path=r"^/api/split/files$", times=2)
        daemon = DaemonProcess(config, env=env).start()
        try:
            wait_for(lambda: len(by_name()) >= 10, timeout=60, message="some deliveries")
            daemon.kill()
            at_kill = set(by_name())
            assert len(at_kill) < COUNT, "the kill came too late to test anything"
            # While the daemon is down: metadata edits and new images, on items already
            # delivered (updates in place / replacements) and on items not delivered yet.
            done = [k for k in sorted(expected) if sample_name(k) in at_kill][:8]
            todo = [k for k in sorted(expected) if sample_name(k) not in at_kill][:4]
            for n, item in enumerate(done + todo):
                metadata, seed = expected[item]
                if n % 2:
                    expected[item] = ({**metadata, "site": "B", "edited": True}, seed)
                else:
                    expected[item] = (metadata, seed + 1000)
                write_item(inbox / item.split("/")[0], item.split("/")[1], metadata=expected[item][0],
                           seed=expected[item][1], old=False)
            emulator.record = True
            emulator.faults.next("lost_reply", path=r"/raw-data/\d+/metadata$")
            emulator.faults.next("lost_reply", path=r"/raw-data/\d+$", method="DELETE")
            daemon.start()
            wait_for(converged, timeout=120, interval=0.3, message="convergence")
            # The remote side can be right before the journal says so: let the daemon finish.
            emulator.faults.set_rate(0.0)
            wait_for(lambda: status()["pending"] == 0 and status()["in_flight"] == 0, timeout=60, interval=0.3,
                     message="an idle journal")
            assert daemon.stop() == 0
        finally:
            if daemon.running:
                daemon.proc.kill()
        lost = {(method, path.rsplit("/", 1)[-1]) for kind, method, path in emulator.faults.injected
                if kind == "lost_reply"}
        assert {("POST", "files"), ("POST", "metadata")} <= lost and any(m == "DELETE" for m, _ in lost), lost
        assert len(emulator.faults.injected) >= 10, emulator.faults.injected
        # After the restart, metadata edits went to the Studio metadata route and image changes
        # deleted the superseded sample: nothing was left behind.
        assert emulator.recorded("POST", r"/raw-data/\d+/metadata$")
        assert emulator.recorded("DELETE", r"/raw-data/\d+$")
        assert converged()
        counts = status()
        assert counts["delivered"] == COUNT and counts["pending"] == 0 and counts["failed"] == 0, counts
        assert key not in daemon.logs()
