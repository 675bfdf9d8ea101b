"""`syncd run` against the Nucleus emulator with faults on about one request in five
(lost replies included), jobs that go Queued -> Running -> Completed over polls, and a
SIGKILL mid-run: every local item ends up as exactly one remote item (one reference_id)
holding its latest image and metadata."""

from __future__ import annotations

import json

from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.emulators.nucleus import NucleusEmulator
from tests.helpers import image_bytes, write_item

COUNT = 30
FAULTS = ("500", "503", "429", "reset", "lost_reply", "slow")


def test_faults_and_sigkill_converge_to_one_item_each(tmp_path):
    with NucleusEmulator(seed=13) as emulator:
        dataset_id = emulator.add_dataset("frames")
        env = {"NUCLEUS_API_KEY": emulator.api_key}
        config = write_config(tmp_path, {"nuc": {
            "platform": "nucleus", "dataset_id": dataset_id, "base_url": emulator.endpoint, "timeout": 5.0,
            "workers": 3, "job_poll_interval": 0.05, "job_timeout": 20.0}}, daemon={"rescan_seconds": 30})
        inbox = tmp_path / "inbox"
        # key -> (metadata, image seed): what the remote side must hold at the end.
        expected = {f"cam{i % 3}/f{i:03d}": ({"i": i, "site": "A"}, i) for i in range(COUNT)}
        for key, (metadata, seed) in expected.items():
            write_item(inbox / key.split("/")[0], key.split("/")[1], metadata=metadata, seed=seed)

        def converged() -> bool:
            for key, (metadata, seed) in expected.items():
                item = emulator.item(dataset_id, key)
                if item is None or item["metadata"] != metadata or emulator.image(dataset_id, key) != image_bytes(seed=seed):
                    return False
            return True

        def status() -> dict:
            result = run_cli("status", "--json", "--config", str(config), env=env)
            return json.loads(result.stdout)["folders"][0]["targets"][0]

        emulator.faults.retry_after = 1
        emulator.faults.set_rate(0.2, FAULTS)
        daemon = DaemonProcess(config, env=env).start()
        try:
            wait_for(lambda: len(emulator.items(dataset_id)) >= 10, timeout=60, message="some deliveries")
            daemon.kill()
            at_kill = {i["reference_id"] for i in emulator.items(dataset_id)}
            assert len(at_kill) < COUNT, "the kill came too late to test anything"
            # While the daemon is down: metadata edits and new images, on items already
            # delivered (updates in place) and on items not delivered yet.
            done = [k for k in sorted(expected) if k in at_kill][:8]
            todo = [k for k in sorted(expected) if k not in at_kill][:4]
            for n, key in enumerate(done + todo):
                metadata, seed = expected[key]
                if n % 2:
                    expected[key] = ({"i": metadata["i"], "edited": True}, seed)  # "site" removed
                else:
                    expected[key] = (metadata, seed + 1000)
                write_item(inbox / key.split("/")[0], key.split("/")[1], metadata=expected[key][0],
                           seed=expected[key][1], old=False)
            daemon.start()
            wait_for(converged, timeout=120, interval=0.3, message="convergence")
            emulator.faults.set_rate(0.0)
            wait_for(lambda: status()["pending"] == 0 and status()["in_flight"] == 0, timeout=60, interval=0.3,
                     message="an idle journal")
            assert daemon.stop() == 0
        finally:
            if daemon.running:
                daemon.proc.kill()
        injected = {kind for kind, _, _ in emulator.faults.injected}
        assert "lost_reply" in injected and len(emulator.faults.injected) >= 10, emulator.faults.injected
        # Every job the daemon started has ended (none left to overwrite later), and the
        # re-sends and updates were upserts: one item per key, nothing else.
        assert all(job.status == "Completed" for job in emulator.jobs()), [j.status for j in emulator.jobs()]
        assert sorted(i["reference_id"] for i in emulator.items(dataset_id)) == sorted(expected)
        assert converged()
        counts = status()
        assert counts["delivered"] == COUNT and counts["pending"] == 0 and counts["failed"] == 0, counts
        assert emulator.api_key not in daemon.logs()
