"""`syncd run` against the RedBrick emulator with faults on about one request in five (lost
replies included) and a SIGKILL mid-run: every local item ends up as exactly one task
holding its latest image and metadata, and none is left failed.

RedBrick refuses a second task of the same name, so "one task per item" also holds for a
careless client — it would show up as failed items instead. The journal's counts are
what proves that lost replies and the kill were recovered by lookup and adoption."""

from __future__ import annotations

import json
import uuid

from syncd.targets.redbrick import VERSION_KEY
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.emulators.redbrick import RedBrickEmulator
from tests.helpers import image_bytes, write_item

COUNT = 30
FAULTS = ("500", "503", "429", "reset", "lost_reply", "slow")


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
        # key -> (metadata, image seed): what the remote side must hold at the end.
        expected = {f"cam{i % 3}/f{i:03d}": ({"i": i, "site": "A"}, i) for i in range(COUNT)}
        for item_key, (metadata, seed) in expected.items():
            write_item(inbox / item_key.split("/")[0], item_key.split("/")[1], metadata=metadata, seed=seed)

        def remote() -> dict[str, dict]:
            return {t["name"]: t for t in emulator.tasks_in(org_id, project_id)}

        def converged() -> bool:
            tasks = remote()
            for item_key, (metadata, seed) in expected.items():
                task = tasks.get(item_key)
                if task is None or len(task["items"]) != 1:
                    return False
                blob = emulator.blobs.get(task["items"][0])
                if blob is None or blob["data"] != image_bytes(seed=seed):
                    return False
                if {k: v for k, v in task["meta"].items() if k != VERSION_KEY} != as_strings(metadata):
                    return False
            return True

        def status() -> dict:
            result = run_cli("status", "--json", "--config", str(config), env=env)
            return json.loads(result.stdout)["folders"][0]["targets"][0]

        emulator.faults.retry_after = 1
        emulator.faults.set_rate(0.2, FAULTS)
        daemon = DaemonProcess(config, env=env).start()
        try:
            wait_for(lambda: len(remote()) >= 10, timeout=60, message="some deliveries")
            daemon.kill()
            at_kill = set(remote())
            assert len(at_kill) < COUNT, "the kill came too late to test anything"
            # While the daemon is down: metadata edits and new images, on items already
            # delivered (updates in place) and on items not delivered yet.
            done = [k for k in sorted(expected) if k in at_kill][:8]
            todo = [k for k in sorted(expected) if k not in at_kill][:4]
            for n, item_key in enumerate(done + todo):
                metadata, seed = expected[item_key]
                if n % 2:
                    expected[item_key] = ({**metadata, "site": "B", "edited": True}, seed)
                else:
                    expected[item_key] = (metadata, seed + 1000)
                write_item(inbox / item_key.split("/")[0], item_key.split("/")[1], metadata=expected[item_key][0],
                           seed=expected[item_key][1], old=False)
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
        injected = emulator.faults.injected
        assert "lost_reply" in {kind for kind, _, _ in injected} and len(injected) >= 10, injected
        assert any(path.endswith("/createDatapointSDK") for _, _, path in injected), injected
        # The edits after the restart were updates in place (updateTaskItems), not new tasks.
        assert emulator.calls_of("updateTaskItemsSDK")
        assert sorted(remote()) == sorted(expected)
        assert all(t["meta"][VERSION_KEY] for t in remote().values())
        counts = status()
        assert counts["delivered"] == COUNT and counts["pending"] == 0 and counts["failed"] == 0, counts
        assert key not in daemon.logs()
