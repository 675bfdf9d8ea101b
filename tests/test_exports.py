"""A RedBrick export folder (class_map.json + datapoint_map.json) dropped in is read as items."""

from __future__ import annotations

import json

from tests.daemon_harness import run_once, write_config
from tests.helpers import age_files, image_bytes, mask_bytes


def test_export_folder_becomes_items_with_their_masks(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    export = tmp_path / "inbox" / "export"
    (export / "images").mkdir(parents=True)
    (export / "masks").mkdir()
    (export / "class_map.json").write_text(json.dumps({"car": [255, 0, 0], "road": [0, 0, 255]}))
    mapping = {}
    for i in range(3):
        (export / "images" / f"frame{i}.png").write_bytes(image_bytes(seed=i))
        (export / "masks" / f"task-{i}.png").write_bytes(mask_bytes(colours=((0, 0, 255), (255, 0, 0))))
        mapping[f"task-{i}.png"] = f"org/uuid/images/frame{i}.png"
    (export / "datapoint_map.json").write_text(json.dumps(mapping))
    age_files(*[p for p in export.rglob("*") if p.is_file()])

    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 delivered" in result.stdout  # the mask files are not items of their own
    for i in range(3):
        record = json.loads((tmp_path / "synced" / "export" / "images" / f"frame{i}.json").read_text())
        assert record["mask"] == f"frame{i}.mask.png"
        assert record["class_map"] == {"car": [255, 0, 0], "road": [0, 0, 255]}
        copied = tmp_path / "synced" / "export" / "images" / f"frame{i}.mask.png"
        assert copied.read_bytes() == (export / "masks" / f"task-{i}.png").read_bytes()


def test_bad_datapoint_map_entries_do_not_hide_the_good_ones(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    export = tmp_path / "inbox" / "export"
    export.mkdir(parents=True)
    (export / "class_map.json").write_text(json.dumps({"car": [255, 0, 0]}))
    (export / "a.png").write_bytes(image_bytes(seed=1))
    (export / "m-a.png").write_bytes(mask_bytes())
    (export / "datapoint_map.json").write_text(json.dumps({"m-a.png": "a.png", "m-missing.png": "b.png"}))
    age_files(*[p for p in export.rglob("*") if p.is_file()])
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "m-missing.png" in result.stderr  # the bad entry is reported in the log
    assert json.loads((tmp_path / "synced" / "export" / "a.json").read_text())["mask"] == "a.mask.png"
