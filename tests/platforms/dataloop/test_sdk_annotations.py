"""Wire oracle for annotations: the official ``dtlpy`` SDK and the syncd target send the same
labels and mask to the Dataloop emulator, each into its own dataset, and what the emulator
stored and received is compared.

The SDK (a subprocess: this file run as a script) adds the labels to its dataset's ontology
with ``dataset.add_label`` (the colours the target picks), uploads the image, sends
``dl.Classification``, ``dl.Box``, ``dl.Point``, ``dl.Polygon``, ``dl.Polyline`` and one
``dl.Segmentation`` per mask class through ``item.annotations.upload`` (the Segmentation takes
its colour from the ontology, as the target's binary masks do), then lists the item's
annotations and deletes one, as the target does when labels change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_sdk(url: str, token: str, spec_path: str) -> dict:
    """The SDK side (runs in the subprocess)."""
    import dtlpy as dl
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    dl.add_environment(environment=f"{url}/api/v1", alias="emulator", gate_url=url, verify_ssl=False)
    dl.setenv("emulator")
    dl.login_api_key(token)
    dataset = dl.projects.get(project_name="Oracle").datasets.get(dataset_name="by-sdk")
    for name, colour in spec["colours"].items():
        dataset.add_label(label_name=name, color=colour)
    item = dataset.items.upload(local_path=spec["image"], remote_path="/cam1", raise_on_error=True)
    builder = item.annotations.builder()
    for label in spec["labels"]:
        kind, name, attrs = label["type"], label["label"], label["attributes"]
        if kind == "classification":
            definition = dl.Classification(label=name, attributes=attrs)
        elif kind == "point":
            definition = dl.Point(x=label["x"], y=label["y"], label=name, attributes=attrs)
        elif kind == "box":
            definition = dl.Box(left=label["x"], top=label["y"], right=label["x"] + label["width"],
                                bottom=label["y"] + label["height"], label=name, attributes=attrs)
        elif kind == "polygon":
            definition = dl.Polygon(geo=np.array(label["points"]), label=name, attributes=attrs)
        else:
            definition = dl.Polyline(geo=np.array(label["points"]), label=name, attributes=attrs)
        builder.add(annotation_definition=definition)
    for mask in spec["masks"]:
        builder.add(annotation_definition=dl.Segmentation(geo=np.array(mask["inside"], dtype=bool),
                                                          label=mask["label"]))
    uploaded = item.annotations.upload(builder)
    listed = item.annotations.list()
    item.annotations.delete(annotation_id=uploaded[0].id)
    return {"item_id": item.id, "uploaded": len(uploaded), "listed": len(listed)}


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_sdk(*sys.argv[1:4])))
    sys.exit(0)


import base64  # noqa: E402  (the test side; the script side above needs only dtlpy)
import io  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from syncd.labels.masks import mask_of  # noqa: E402
from syncd.labels.support import labels_of  # noqa: E402
from syncd.targets.dataloop.target import DataloopSettings, DataloopTarget  # noqa: E402
from syncd.targets.dataloop.wire import MARKER  # noqa: E402
from tests.emulators.dataloop import DataloopEmulator  # noqa: E402
from tests.platforms.dataloop.test_annotations import LABELS, labelled  # noqa: E402


def pixels(data_url: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGBA"))


def comparable(annotation: dict) -> tuple:
    coordinates = annotation.get("coordinates")
    if annotation["type"] == "binary":
        coordinates = pixels(coordinates).tolist()
    return annotation["type"], annotation["label"], json.dumps(coordinates), annotation["metadata"]["system"]


def test_sdk_and_target_send_the_same_annotations(tmp_path):
    with DataloopEmulator() as emulator:
        project = emulator.add_project("Oracle")
        ours_ds = emulator.add_dataset(project["id"], "by-syncd")
        sdk_ds = emulator.add_dataset(project["id"], "by-sdk")
        token = emulator.make_token("oracle@example.com")
        settings = DataloopSettings(project="Oracle", dataset="by-syncd", base_url=f"{emulator.url}/api/v1", timeout=5)
        target = DataloopTarget("dl", settings, env={"DATALOOP_API_KEY": token})
        emulator.record = True
        # The target: a first delivery, then an edit that removes the first label.
        upload = labelled()
        first = target.deliver(upload)
        target.deliver(labelled(labels=LABELS[1:], previous=first))
        target.close()
        colours = {r["value"]["tag"]: r["value"]["color"]
                   for r in emulator.ontologies[emulator.recipes[ours_ds["metadata"]["system"]["recipes"][0]]
                                                ["ontologyIds"][0]]["roots"]}
        mask = mask_of(upload)
        image = tmp_path / "f1.png"
        image.write_bytes(upload.image)
        spec = {"image": str(image), "colours": colours, "labels": labels_of(upload),
                "masks": [{"label": mask.names[k], "inside": (mask.index == k).tolist()} for k in mask.present]}
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "DATALOOP_PATH": str(tmp_path / "dataloop-home"), "PYTHONWARNINGS": "ignore"}
        env.pop("INTERNAL_REQUESTS_URL", None)
        proc = subprocess.run([sys.executable, __file__, emulator.url, token, str(tmp_path / "spec.json")],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, f"dtlpy run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        seen = json.loads(lines[-1].removeprefix("RESULT "))
        assert seen["uploaded"] == seen["listed"] == 7
        assert [i["id"] for i in emulator.items_in(sdk_ds["id"])] == [seen["item_id"]]  # the SDK used its own dataset

        posts = emulator.recorded("POST", r"/annotations$")
        mine = [a for e in posts if e["path"] != f"/api/v1/items/{seen['item_id']}/annotations" for a in e["json"]]
        theirs = [a for e in posts if e["path"] == f"/api/v1/items/{seen['item_id']}/annotations" for a in e["json"]]
        assert len(theirs) == 7 and len(mine) == 7  # the edit only deleted (the classification)

        # 1. Same annotations: type, label, coordinates (binary: the same pixels and colours),
        #    metadata.system (attributes, automated).
        assert sorted(map(comparable, mine), key=str) == sorted(map(comparable, theirs), key=str)
        # 2. Same request shape: ours carries every field the SDK fills, except its own
        #    "source": "sdk" and the dataset URL; and the syncd tag in metadata.user.
        sdk_fields = {k for a in theirs for k, v in a.items() if v is not None}
        our_fields = {k for a in mine for k in a}
        assert our_fields <= sdk_fields and sdk_fields - our_fields == {"source", "dataset"}
        assert all(a["metadata"]["user"][MARKER]["key"] == "cam1/f1" for a in mine)
        # 3. Labels added to the ontology as dataset.add_label adds them.
        patches = emulator.recorded("PATCH", r"/ontologies/.+/labels$")
        sdk_nodes = [n for e in patches[1:] for n in e["json"]["labelsNode"]]
        assert all(e["json"]["upsert"] is True for e in patches)
        assert sorted(patches[0]["json"]["labelsNode"], key=lambda n: n["tag"]) == sorted(sdk_nodes,
                                                                                         key=lambda n: n["tag"])
        # 4. Listing and deleting annotations: the same query and DELETE body.
        queries = [e for e in emulator.recorded("POST", r"/query$") if e["json"].get("resource") == "annotations"]
        sdk_query, our_query = queries[-1], queries[0]
        assert {"itemId": seen["item_id"]} in sdk_query["json"]["filter"]["$and"]
        assert our_query["json"]["filter"]["$and"][0]["itemId"] != seen["item_id"]
        for field in ("sort", "page", "pageSize", "resource"):
            assert our_query["json"][field] == sdk_query["json"][field]
        assert our_query["headers"]["user_query"] == sdk_query["headers"]["user_query"] == "false"
        deletes = emulator.recorded("DELETE", r"/annotations/")
        assert len(deletes) == 2 and deletes[0]["json"] == deletes[1]["json"] == {"username": "oracle@example.com"}
