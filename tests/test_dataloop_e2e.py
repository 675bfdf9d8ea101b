"""`syncd run` against the Dataloop emulator with faults on about one request in five
(lost replies included) and a SIGKILL mid-run: every local item ends up as exactly one
remote item holding its latest image and metadata."""

from __future__ import annotations

import json

from syncd.targets.dataloop import MARKER
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.emulators.dataloop import DataloopEmulator
from tests.helpers import image_bytes, write_item

COUNT = 30
FAULTS = ("500", "503", "429", "reset", "lost_reply", "slow")


def test_faults_and_sigkill_converge_to_one_item_each(tmp_path):
    with DataloopEmulator(seed=11) as emulator:
        project = emulator.add_project("E2E")
        dataset = emulator.add_dataset(project["id"], "frames")
        token = emulator.make_token()
        config = write_config(tmp_path, {"dl": {
            "platform": "dataloop", "project": "E2E", "dataset": "frames", "remote_root": "/e2e",
            "base_url": f"{emulator.url}/api/v1", "timeout": 5.0, "workers": 3}},
            daemon={"rescan_seconds": 30})
        inbox = tmp_path / "inbox"
        # key -> (metadata, image seed): what the remote side must hold at the end.
        expected = {f"cam{i % 3}/f{i:03d}": ({"i": i, "site": "A"}, i) for i in range(COUNT)}
        for key, (metadata, seed) in expected.items():
            write_item(inbox / key.split("/")[0], key.split("/")[1], metadata=metadata, seed=seed)

        def remote() -> dict[str, dict]:
            return {i["filename"]: i for i in emulator.items_in(dataset["id"])}

        def converged() -> bool:
            items = remote()
            for key, (metadata, seed) in expected.items():
                item = items.get(f"/e2e/{key}.png")
                if item is None or emulator.binaries.get(item["id"]) != image_bytes(seed=seed):
                    return False
                if {k: v for k, v in item["metadata"]["user"].items() if k != MARKER} != metadata:
                    return False
            return True

        def status() -> dict:
            result = run_cli("status", "--json", "--config", str(config), env={"DATALOOP_API_KEY": token})
            return json.loads(result.stdout)["folders"][0]["targets"][0]

        emulator.faults.retry_after = 1
        emulator.faults.set_rate(0.2, FAULTS)
        daemon = DaemonProcess(config, env={"DATALOOP_API_KEY": token}).start()
        try:
            wait_for(lambda: len(remote()) >= 10, timeout=60, message="some deliveries")
            daemon.kill()
            at_kill = {f["filename"] for f in remote().values()}
            assert len(at_kill) < COUNT, "the kill came too late to test anything"
            # While the daemon is down: metadata edits and new images, on items already
            # delivered (updates in place) and on items not delivered yet.
            done = [k for k in sorted(expected) if f"/e2e/{k}.png" in at_kill][:8]
            todo = [k for k in sorted(expected) if f"/e2e/{k}.png" not in at_kill][:4]
            for n, key in enumerate(done + todo):
                metadata, seed = expected[key]
                if n % 2:
                    expected[key] = ({**metadata, "site": "B", "edited": True}, seed)
                else:
                    expected[key] = (metadata, seed + 1000)
                write_item(inbox / key.split("/")[0], key.split("/")[1], metadata=expected[key][0],
                           seed=expected[key][1], old=False)
            emulator.record = True
            daemon.start()
            wait_for(converged, timeout=120, interval=0.3, message="convergence")
            # The remote side can be right before the journal says so (a lost reply is
            # retried, then adopted): let the daemon finish its bookkeeping.
            emulator.faults.set_rate(0.0)
            wait_for(lambda: status()["pending"] == 0 and status()["in_flight"] == 0, timeout=60, interval=0.3,
                     message="an idle journal")
            assert daemon.stop() == 0
        finally:
            if daemon.running:
                daemon.proc.kill()
        injected = {kind for kind, _, _ in emulator.faults.injected}
        assert "lost_reply" in injected and len(emulator.faults.injected) >= 10, emulator.faults.injected
        # The updates after the restart were done in place: binaries overwritten, metadata
        # patched, no second item (the remote path is the key).
        assert emulator.recorded("POST", r"/items$") and any(
            e["query"] == {"mode": ["overwrite"]} for e in emulator.recorded("POST", r"/items$"))
        assert emulator.recorded("PATCH", r"/items/")
        assert sorted(remote()) == sorted(f"/e2e/{key}.png" for key in expected)
        assert all(i["metadata"]["system"]["size"] == len(emulator.binaries[i["id"]]) for i in remote().values())
        counts = status()
        assert counts["delivered"] == COUNT and counts["pending"] == 0 and counts["failed"] == 0, counts
        assert token not in daemon.logs()
