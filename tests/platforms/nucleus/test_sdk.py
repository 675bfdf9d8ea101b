"""Oracle test: the official ``scale-nucleus`` SDK against the Nucleus emulator, and the
syncd target side by side with it.

``scale-nucleus`` pins an older pillow than syncd's, so it lives in its own virtualenv
(``.venv-sdk-nucleus``, made by tests/install.sh) and this file, run as a script with that
interpreter, is the SDK side. The test side asserts what the emulator stored and that the
target's append has the same wire shape as the SDK's (parts, file name encoding, item keys).
"""

from __future__ import annotations

import json
import sys

LOCAL_META = {"camera": "c1", "n": 3, "old": "x"}
UPDATED_META = {"camera": "c2", "n": 4}
REMOTE_URL = "https://example.com/images/r1.jpg"


def run_sdk(endpoint: str, key: str, image1: str, image2: str, phase: str) -> dict:
    """The SDK side (runs in the subprocess); returns what it saw, as JSON."""
    import nucleus
    import nucleus.async_job
    from nucleus import DatasetItem, NucleusClient

    nucleus.async_job.JOB_POLLING_INTERVAL = 0.01  # the SDK sleeps 5 s per poll otherwise
    client = NucleusClient(api_key=key, endpoint=endpoint)
    if phase == "batch":  # image1 is a folder of 12 images: the SDK sends 10 + 2
        import pathlib

        dataset = client.get_dataset(client.datasets[0].id)
        files = sorted(pathlib.Path(image1).iterdir())
        items = [DatasetItem(image_location=str(f), reference_id=f"sdk/{f.stem}", metadata={"n": i})
                 for i, f in enumerate(files)]
        dataset.append(items, update=True).sleep_until_complete(verbose_std_out=False)
        return {"dataset_id": dataset.id}
    if phase == "queued-quirk":
        dataset = client.get_dataset(client.datasets[0].id)
        job = dataset.append([DatasetItem(image_location=image1, reference_id="quirk/1", metadata={})])
        job.sleep_until_complete(verbose_std_out=False)
        return {"status_after_wait": job.job_last_known_status}
    dataset = client.create_dataset("oracle", is_scene=False)
    local = [DatasetItem(image_location=image1, reference_id="local/1", metadata=LOCAL_META),
             DatasetItem(image_location=image2, reference_id="local/2", metadata={"camera": "c9"}, width=32, height=24)]
    dataset.append(local).sleep_until_complete(verbose_std_out=False)
    remote = [DatasetItem(image_location=REMOTE_URL, reference_id="remote/1", metadata={"n": 7})]
    dataset.append(remote).sleep_until_complete(verbose_std_out=False)
    # update=False: the existing item is left alone; update=True: metadata replaced wholesale.
    ignored = DatasetItem(image_location=image1, reference_id="local/1", metadata={"camera": "ignored"})
    dataset.append([ignored]).sleep_until_complete(verbose_std_out=False)
    after_ignored = dataset.refloc("local/1")["item"].metadata
    updated = DatasetItem(image_location=image2, reference_id="local/1", metadata=UPDATED_META)
    dataset.append([updated], update=True).sleep_until_complete(verbose_std_out=False)
    # A row error: "n" is a number elsewhere in the dataset. The job still completes.
    bad = DatasetItem(image_location="https://example.com/b.jpg", reference_id="remote/bad", metadata={"n": "seven"})
    bad_job = dataset.append([bad])
    bad_job.sleep_until_complete(verbose_std_out=False)
    refloc = dataset.refloc("local/1")["item"]
    return {
        "dataset_id": dataset.id,
        "after_ignored": after_ignored,
        "refloc_metadata": refloc.metadata,
        "refloc_reference_id": refloc.reference_id,
        "items": sorted(i.reference_id for i in dataset.items),
        "generator": sorted(i.reference_id for i in dataset.items_generator(page_size=2)),
        "bad_status": bad_job.status()["status"],
        "bad_errors": bad_job.errors(),
        "privacy": dataset.use_privacy_mode,
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_sdk(*sys.argv[1:6])))
    sys.exit(0)


import re  # noqa: E402  (the test side; the script side above needs only the SDK)
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import quote  # noqa: E402

import pytest  # noqa: E402

from syncd.targets.nucleus.target import NucleusSettings, NucleusTarget  # noqa: E402
from tests.daemon_harness import REPO  # noqa: E402
from tests.emulators.nucleus import NucleusEmulator  # noqa: E402
from tests.helpers import image_bytes, make_upload  # noqa: E402

SDK_PYTHON = REPO / ".venv-sdk-nucleus" / "bin" / "python"


def sdk(emulator: NucleusEmulator, tmp_path: Path, phase: str = "main", image1: str | None = None) -> dict:
    assert SDK_PYTHON.exists(), (
        f"{SDK_PYTHON} is missing: python3 -m venv .venv-sdk-nucleus && "
        ".venv-sdk-nucleus/bin/pip install scale-nucleus==0.22.3 (tests/install.sh does it)"
    )
    images = []
    for seed in (1, 2):
        path = tmp_path / f"img{seed}.png"
        path.write_bytes(image_bytes(seed=seed))
        images.append(str(path))
    if image1 is not None:
        images[0] = image1
    result = subprocess.run([str(SDK_PYTHON), __file__, emulator.endpoint, emulator.api_key, *images, phase],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def raw_filenames(body: bytes) -> list[str]:
    """The image parts' file names exactly as they were on the wire."""
    return [m.decode() for m in re.findall(rb'name="image"; filename="([^"]*)"', body)]


@pytest.fixture
def emulator():
    with NucleusEmulator(job_script=("Running", "Running")) as emulator:
        emulator.record = True
        yield emulator


def test_sdk_round_trip_is_stored_as_sent(emulator, tmp_path):
    seen = sdk(emulator, tmp_path)
    dataset_id = seen["dataset_id"]
    items = {i["reference_id"]: i for i in emulator.items(dataset_id)}
    assert sorted(items) == ["local/1", "local/2", "remote/1"]
    # update=False left the item alone; update=True replaced metadata wholesale and the image.
    assert seen["after_ignored"] == LOCAL_META
    assert items["local/1"]["metadata"] == UPDATED_META == seen["refloc_metadata"]
    assert seen["refloc_reference_id"] == "local/1"
    assert emulator.image(dataset_id, "local/1") == image_bytes(seed=2)
    assert emulator.image(dataset_id, "local/2") == image_bytes(seed=2)
    assert (items["local/2"]["width"], items["local/2"]["height"]) == (32, 24)
    assert items["remote/1"]["original_image_url"] == REMOTE_URL and emulator.image(dataset_id, "remote/1") is None
    # datasetItems answers ref_id (backend quirk) and the SDK maps it; itemsPage pages by 2.
    assert seen["items"] == seen["generator"] == ["local/1", "local/2", "remote/1"]
    assert seen["bad_status"] == "Completed"
    assert len(seen["bad_errors"]) == 1 and "Metadata key 'n'" in json.loads(seen["bad_errors"][0])["error"]
    assert seen["privacy"] is False
    # Every shape arrived: multipart (local), signed URL + NDJSON (remote), async jobs.
    shapes = [(e["content_type"].split(";")[0], e["query"]) for e in emulator.journal]
    assert ("multipart/form-data", {"async": ["1"]}) in shapes
    assert ("application/json", {"async": ["1"]}) in shapes
    sdk_local = emulator.journal[0]
    assert [r["update"] for r in emulator.journal[2]["rows"]] == [False]
    assert [r["update"] for r in emulator.journal[3]["rows"]] == [True]
    # The SDK percent-encodes the whole local path as the image part's file name.
    assert raw_filenames(sdk_local["body"]) == [quote(p, safe="") for p in
                                                 (r["payload"]["image_url"] for r in sdk_local["rows"])]

    # The target on the same dataset speaks the same shape.
    target = NucleusTarget("n", NucleusSettings(dataset_id=dataset_id, base_url=emulator.endpoint, timeout=5,
                                                job_poll_interval=0.01), env={"NUCLEUS_API_KEY": emulator.api_key})
    upload = make_upload("cam 1/frame#1", metadata={"camera": "c3", "n": 5})
    receipt = target.deliver(upload)
    ours = emulator.journal[-1]
    assert [p["name"] for p in ours["parts"]] == [p["name"] for p in sdk_local["parts"][:2]] == ["items", "image"]
    assert set(ours["rows"][0]["payload"]) == set(sdk_local["rows"][1]["payload"]) | {"update"}
    assert raw_filenames(ours["body"]) == [quote("cam 1/frame#1.png", safe="")]
    assert ours["parts"][0]["content_type"] == sdk_local["parts"][0]["content_type"] == "application/json"
    assert ours["parts"][1]["content_type"] == sdk_local["parts"][1]["content_type"] == "image/png"
    assert emulator.item(dataset_id, "cam 1/frame#1")["metadata"] == {"camera": "c3", "n": 5}
    assert target.lookup(upload).remote_id == receipt.remote_id == "cam 1/frame#1"
    target.close()


def test_a_batch_of_ten_has_the_sdks_wire_shape(emulator, tmp_path):
    """The SDK sends local files 10 per request (``local_files_per_upload_request``); the
    target's ``deliver_batch`` of 10 sends the same request: one ``items`` part listing the
    10 payloads, then the 10 ``image`` parts in the same order, named and typed alike."""
    dataset_id = emulator.add_dataset("batch")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i:02d}.png").write_bytes(image_bytes(seed=i))
    sdk(emulator, tmp_path, phase="batch", image1=str(folder))
    sdk_requests = [e for e in emulator.journal if e["content_type"].startswith("multipart/")]
    assert sorted(len(e["rows"]) for e in sdk_requests) == [2, 10]  # 10 per request
    theirs = next(e for e in sdk_requests if len(e["rows"]) == 10)

    target = NucleusTarget("n", NucleusSettings(dataset_id=dataset_id, base_url=emulator.endpoint, timeout=5,
                                                job_poll_interval=0.01), env={"NUCLEUS_API_KEY": emulator.api_key})
    uploads = [make_upload(f"cam 1/f#{i:02d}", metadata={"n": i}, seed=i) for i in range(10)]
    results = target.deliver_batch(uploads)
    assert len({r.job_id for r in results}) == 1
    ours = emulator.journal[-1]
    assert ours["query"] == theirs["query"] == {"async": ["1"]}
    assert [(p["name"], p["filename"] is None, p["content_type"]) for p in ours["parts"]] == [
        (p["name"], p["filename"] is None, p["content_type"]) for p in theirs["parts"]]
    assert [p["name"] for p in ours["parts"]] == ["items"] + ["image"] * 10
    # Each image part is named after its item's image_url, percent-encoded, in the items' order.
    for entry in (theirs, ours):
        urls = [r["payload"]["image_url"] for r in entry["rows"]]
        assert raw_filenames(entry["body"]) == [quote(u, safe="") for u in urls]
        assert [p["size"] for p in entry["parts"][1:]] == [len(r["image"]) for r in entry["rows"]]
    assert [set(r["payload"]) for r in ours["rows"]] == [set(r["payload"]) | {"width", "height"}
                                                          for r in theirs["rows"]]
    assert all(r["update"] is True for r in ours["rows"] + theirs["rows"])
    emulator.run_jobs()
    for upload in uploads:
        assert emulator.image(dataset_id, upload.key) == upload.image
    assert len(emulator.items(dataset_id)) == 22
    target.close()


def test_sdk_stops_waiting_on_queued_which_the_target_does_not(emulator, tmp_path):
    """The SDK's sleep_until_complete returns while a job is still Queued
    (docs/platforms/nucleus.md): the item is not there yet. The target polls on to Completed."""
    dataset_id = emulator.add_dataset("quirk")
    emulator.job_script = ["Queued", "Running"]
    seen = sdk(emulator, tmp_path, phase="queued-quirk")
    assert seen["status_after_wait"] == "Queued"
    assert emulator.item(dataset_id, "quirk/1") is None
    target = NucleusTarget("n", NucleusSettings(dataset_id=dataset_id, base_url=emulator.endpoint, timeout=5,
                                                job_poll_interval=0.01), env={"NUCLEUS_API_KEY": emulator.api_key})
    target.deliver(make_upload("quirk/2"))
    # Running the target's job ran the SDK's older one first (jobs are FIFO per dataset).
    assert emulator.item(dataset_id, "quirk/1") is not None and emulator.item(dataset_id, "quirk/2") is not None
    target.close()
