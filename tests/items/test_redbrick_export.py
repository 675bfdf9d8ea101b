"""A RedBrick export folder (class_map.json + datapoint_map.json): read as pairs, and dropped
in, read as items."""

from __future__ import annotations

import json

import pytest

from syncd.errors import ItemError
from syncd.items.redbrick_export import is_redbrick_export, read_datapoint_map, scan_datapoint_map
from tests.daemon_harness import run_once, write_config
from tests.helpers import age_files, image_bytes, mask_bytes


def export_folder(tmp_path, mapping: dict, *, masks=(), images=(), masks_dir=True):
    folder = tmp_path / "export"
    (folder / "masks").mkdir(parents=True)
    (folder / "images").mkdir()
    (folder / "class_map.json").write_text(json.dumps({"car": [255, 0, 0]}))
    (folder / "datapoint_map.json").write_text(json.dumps(mapping))
    for name in masks:
        (folder / ("masks" if masks_dir else ".") / name).write_bytes(mask_bytes())
    for name in images:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes())
    return folder


def test_current_layout_masks_dir_and_storage_paths(tmp_path):
    folder = export_folder(
        tmp_path,
        {"task-1.png": "0f8e/images/77aa/frame1.png", "task-2.png": "frame2.jpg", "task-3.png": "sub/frame3.png"},
        masks=("task-1.png", "task-2.png", "task-3.png"),
        images=("frame1.png", "images/frame2.jpg", "sub/frame3.png"),
    )
    assert is_redbrick_export(folder)
    assert read_datapoint_map(folder) == [
        (folder / "frame1.png", folder / "masks" / "task-1.png"),  # storage path -> its file name in the folder
        (folder / "images" / "frame2.jpg", folder / "masks" / "task-2.png"),
        (folder / "sub" / "frame3.png", folder / "masks" / "task-3.png"),  # relative path as given
    ]


def test_older_layout_masks_next_to_the_json_and_keys_without_suffix(tmp_path):
    folder = export_folder(tmp_path, {"dp1": "a.png", "dp2.png": "b.png"}, masks=("dp1.png", "dp2.png"),
                           images=("a.png", "b.png"), masks_dir=False)
    assert read_datapoint_map(folder) == [(folder / "a.png", folder / "dp1.png"),
                                          (folder / "b.png", folder / "dp2.png")]


def test_bad_entries_are_reported_each_and_do_not_hide_good_ones(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(image_bytes())
    folder = export_folder(
        tmp_path,
        {"ok.png": "ok.png", "url.png": "https://bucket/x.png", "missing-mask.png": "ok2.png",
         "m1.png": "nowhere.png", "m2.png": "ok.png", "m3.png": str(outside), "m4.png": "../outside.png",
         "m5.png": "notes.txt", "m6.png": 7},
        masks=("ok.png", "url.png", "m1.png", "m2.png", "m3.png", "m4.png", "m5.png", "m6.png"),
        images=("ok.png", "ok2.png"),
    )
    result = scan_datapoint_map(folder)
    assert result.pairs == [(folder / "ok.png", folder / "masks" / "ok.png")]
    assert result.problems == [
        "datapoint_map.json['url.png']: the image is a URL (https://bucket/x.png): download it into the folder",
        "datapoint_map.json['missing-mask.png']: no mask file 'missing-mask.png' in the folder or in masks/",
        "datapoint_map.json['m1.png']: image 'nowhere.png' not found in the folder or in images/",
        "datapoint_map.json['m2.png']: image 'ok.png' already has the mask 'ok.png': one mask per image",
        f"datapoint_map.json['m3.png']: image {str(outside)!r} not found in the folder or in images/",
        "datapoint_map.json['m4.png']: image '../outside.png' not found in the folder or in images/",
        "datapoint_map.json['m5.png']: 'notes.txt' is not an image file name "
        "(.jpg, .jpeg, .png, .tif, .tiff, .bmp, .webp)",
        "datapoint_map.json['m6.png']: the image path must be a non-empty string",
    ]
    with pytest.raises(ItemError) as info:
        read_datapoint_map(folder)
    assert str(info.value).startswith("datapoint_map.json['url.png']: the image is a URL")
    assert str(info.value).endswith("(and 3 more)")


def test_a_mask_named_like_its_image_in_the_folder_itself_is_refused(tmp_path):
    folder = export_folder(tmp_path, {"a.png": "a.png"}, images=("a.png",))
    assert scan_datapoint_map(folder).problems == [
        "datapoint_map.json['a.png']: the mask and the image are the same file ('a.png')"]


def test_a_mask_key_cannot_escape_the_folder(tmp_path):
    (tmp_path / "evil.png").write_bytes(mask_bytes())
    folder = export_folder(tmp_path, {"../../evil.png": "a.png"}, images=("a.png",))
    assert scan_datapoint_map(folder).problems == [
        "datapoint_map.json['../../evil.png']: no mask file '../../evil.png' in the folder or in masks/"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"[1, 2]", "must be a JSON object of mask file name -> image path"),
     (b"{oops", "not valid JSON at line 1 column 2"),
     (b"\xff\xfe", "not UTF-8 text")],
)
def test_a_broken_map_file_is_an_item_error(tmp_path, content, expected):
    folder = export_folder(tmp_path, {})
    (folder / "datapoint_map.json").write_bytes(content)
    with pytest.raises(ItemError, match=expected):
        read_datapoint_map(folder)


def test_a_folder_without_the_map_is_not_an_export(tmp_path):
    assert not is_redbrick_export(tmp_path)
    (tmp_path / "datapoint_map.json").write_text("{}")
    assert not is_redbrick_export(tmp_path)  # class_map.json is needed too
    with pytest.raises(ItemError, match="not found: a RedBrick export folder needs datapoint_map.json"):
        read_datapoint_map(tmp_path / "nothing")


# -- dropped into a watched folder: the daemon reads it as items ------------------------------

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
