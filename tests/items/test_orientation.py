"""EXIF-rotated JPEGs: labels are read in the orientation the image is displayed in (issue 10,
item 11). A camera held upright stores a 64x32 frame with EXIF Orientation 6 ("rotate 90°
clockwise to display"): every viewer, browser and platform page shows it 32 wide, 64 high, and
that is the size the record carries and the labels are checked against."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from syncd.errors import ItemError
from syncd.items.content import read_item
from syncd.items.convention import IgnoreRules, walk
from syncd.items.image import check_image
from syncd.labels.validate import read_options
from tests.daemon_harness import run_once, write_config
from tests.helpers import mask_bytes

RAW_W, RAW_H = 64, 32


def rotated_jpeg(orientation: int, *, width: int = RAW_W, height: int = RAW_H) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation, size", [
    (1, (RAW_W, RAW_H)), (2, (RAW_W, RAW_H)), (3, (RAW_W, RAW_H)), (4, (RAW_W, RAW_H)),
    (5, (RAW_H, RAW_W)), (6, (RAW_H, RAW_W)), (7, (RAW_H, RAW_W)), (8, (RAW_H, RAW_W)),
    (0, (RAW_W, RAW_H)), (9, (RAW_W, RAW_H)),  # not an orientation: taken as stored
])
def test_size_is_the_displayed_size(orientation, size):
    data = rotated_jpeg(orientation)
    assert check_image(data, name="a.jpg", expected_format="JPEG", max_pixels=10**8)[1:3] == size
    with Image.open(io.BytesIO(data)) as image:  # what viewers show: pillow's exif_transpose agrees
        from PIL import ImageOps
        assert ImageOps.exif_transpose(image).size == size


def item_in(tmp_path, labels=None, mask=None, orientation=6):
    (tmp_path / "a.jpg").write_bytes(rotated_jpeg(orientation))
    if labels is not None:
        (tmp_path / "a.json").write_text(json.dumps({"metadata": {}, "labels": labels}))
    if mask is not None:
        (tmp_path / "a.mask.png").write_bytes(mask)
        (tmp_path / "class_map.json").write_text(json.dumps({"background": [0, 0, 0], "car": [255, 0, 0]}))
    return next(walk(tmp_path, IgnoreRules(), ""))


BOX_DISPLAYED = {"type": "box", "label": "person", "x": 4, "y": 30, "width": 20, "height": 30}  # fits 32x64 only
BOX_RAW = {"type": "box", "label": "person", "x": 30, "y": 2, "width": 30, "height": 20}  # fits 64x32 only


def test_a_box_drawn_on_the_displayed_image_is_accepted(tmp_path):
    content = read_item(item_in(tmp_path, [BOX_DISPLAYED]), **read_options(10**8))
    assert (content.width, content.height) == (RAW_H, RAW_W)
    assert content.label_errors == [] and content.sidecar.labels[0]["y"] == 30


def test_a_box_in_stored_coordinates_is_refused_and_the_rotation_is_named(tmp_path):
    content = read_item(item_in(tmp_path, [BOX_RAW]), **read_options(10**8))
    assert content.sidecar.labels == []
    (error,) = content.label_errors
    assert "past the image's width 32" in error or "outside the image (0..32)" in error, error
    assert "EXIF orientation 6" in error and "as displayed" in error


def test_a_mask_has_the_displayed_size(tmp_path):
    upright = read_item(item_in(tmp_path, mask=mask_bytes(RAW_H, RAW_W)), **read_options(10**8))
    assert upright.mask is not None and upright.label_errors == []
    stored = read_item(item_in(tmp_path, mask=mask_bytes(RAW_W, RAW_H)), **read_options(10**8))
    assert stored.mask is None and "EXIF orientation 6" in stored.label_errors[0]


def test_once_records_the_displayed_size_and_delivers_the_labels(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          daemon={"settle_seconds": 0})
    inbox = tmp_path / "inbox"
    (inbox / "portrait.jpg").write_bytes(rotated_jpeg(6))
    (inbox / "portrait.json").write_text(json.dumps({"metadata": {}, "labels": [BOX_DISPLAYED]}))
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "synced" / "portrait.json").read_text())
    assert (record["width"], record["height"], record["exif_orientation"]) == (RAW_H, RAW_W, 6)
    assert record["labels"][0]["height"] == 30
    assert (tmp_path / "synced" / "portrait.jpg").read_bytes() == (inbox / "portrait.jpg").read_bytes()


def test_the_orientation_is_not_read_from_other_formats(tmp_path):
    """Only a JPEG's EXIF turns the image for display everywhere; a PNG is taken as stored."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (RAW_W, RAW_H)).save(buffer, "PNG", exif=exif.tobytes())
    assert check_image(buffer.getvalue(), name="a.png", expected_format="PNG", max_pixels=10**8)[1:3] == \
        (RAW_W, RAW_H)


def test_a_broken_exif_block_is_taken_as_stored(tmp_path):
    data = rotated_jpeg(6)
    at = data.find(b"Exif\x00\x00")
    broken = data[: at + 6] + b"\xff" * 8 + data[at + 14:]  # the TIFF header of the EXIF block garbled
    try:
        size = check_image(broken, name="a.jpg", expected_format="JPEG", max_pixels=10**8)[1:3]
    except ItemError as exc:  # refusing it is fine too, as long as it is a clear item error
        assert "a.jpg" in str(exc)
    else:
        assert size == (RAW_W, RAW_H)
