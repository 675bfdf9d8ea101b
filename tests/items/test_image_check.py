"""``[daemon] image_check = "structure"``: a JPEG's or PNG's structure is checked instead of
decoding its pixels. A file cut anywhere (caught mid-write, a partial copy) still fails with
its name and the same "truncated or corrupt" message; a good frame gives the same format,
size and orientation as the decode; other formats are still decoded.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from syncd.errors import ItemError
from syncd.items.image import decode_image
from tests.corpus import png_bad_crc, scrambled
from tests.daemon_harness import run_cli, write_config
from tests.helpers import write_atomic

CORRUPT = "the image is truncated or corrupt"


def _frame(fmt: str, *, progressive: bool = False, exif: Image.Exif | None = None, size=(160, 120)) -> bytes:
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    options = {"quality": 85, "progressive": progressive} if fmt == "JPEG" else {}
    if exif is not None:
        options["exif"] = exif
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _with_thumbnail_segment(jpeg: bytes) -> bytes:
    """An APP1 segment that holds a whole JPEG (as EXIF thumbnails do), end marker included,
    before the frame's own scan: a cut frame must not pass on the thumbnail's FF D9."""
    thumbnail = _frame("JPEG", size=(16, 12))
    body = b"Exif\x00\x00" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def _check(data: bytes, fmt: str, check: str):
    suffix = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}[fmt]
    return decode_image(data, name=f"cam/frame.{suffix}", expected_format=fmt, max_pixels=10**8, check=check)


FRAMES = {
    "baseline": lambda: _frame("JPEG"),
    "progressive": lambda: _frame("JPEG", progressive=True),
    "thumbnail": lambda: _with_thumbnail_segment(_frame("JPEG")),
    "png": lambda: _frame("PNG"),
}


@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_a_frame_cut_anywhere_fails_with_its_name(kind):
    data = FRAMES[kind]()
    fmt = "PNG" if kind == "png" else "JPEG"
    step = max(1, len(data) // 300)
    passed = []
    for cut in range(0, len(data) - 1, step):
        try:
            _check(data[:cut], fmt, "structure")
            passed.append(cut)
        except ItemError as exc:
            assert str(exc).startswith("cam/frame."), exc
            assert CORRUPT in str(exc) or "file is empty" in str(exc) or "not an image" in str(exc), exc
    assert passed == [], f"cut {kind} frames accepted at offsets {passed[:5]}"


@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_a_good_frame_reads_as_the_decode_does(kind):
    data = FRAMES[kind]()
    fmt = "PNG" if kind == "png" else "JPEG"
    assert _check(data, fmt, "structure") == _check(data, fmt, "decode")


def test_a_turned_frame_keeps_its_displayed_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # turned by 90 degrees: 160x120 stored, 120x160 shown
    assert _check(_frame("JPEG", exif=exif), "JPEG", "structure") == ("JPEG", 120, 160, 6)


def test_damage_the_structure_shows_is_refused():
    jpeg, png = _frame("JPEG"), _frame("PNG")
    for data, fmt in ((scrambled(jpeg, len(jpeg) // 3, len(jpeg)), "JPEG"), (scrambled(jpeg, 4, 40), "JPEG"),
                      (png_bad_crc(), "PNG"), (scrambled(png, len(png) // 3, len(png)), "PNG")):
        with pytest.raises(ItemError, match="truncated or corrupt|not an image"):
            _check(data, fmt, "structure")


def test_the_pixel_limit_and_other_formats_are_unchanged():
    big = _frame("JPEG", size=(400, 300))
    with pytest.raises(ItemError, match="exceeds max_image_pixels"):
        decode_image(big, name="big.jpg", expected_format="JPEG", max_pixels=100_000, check="structure")
    tiff = _frame("TIFF")
    assert _check(tiff, "TIFF", "structure") == _check(tiff, "TIFF", "decode")
    with pytest.raises(ItemError, match=CORRUPT):  # decoded: no structure check for TIFF
        _check(tiff[: len(tiff) * 6 // 10], "TIFF", "structure")


def test_once_with_structure_delivers_good_frames_and_fails_a_cut_one(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "out"}},
                          daemon={"image_check": "structure"})
    good, cut = _frame("JPEG"), _frame("JPEG", progressive=True)
    write_atomic(tmp_path / "inbox" / "good.jpg", good)
    write_atomic(tmp_path / "inbox" / "cut.jpg", cut[: len(cut) - 40])
    once = run_cli("once", "--config", str(config), cwd=tmp_path)
    assert once.returncode == 1, once.stdout + once.stderr
    assert (tmp_path / "out" / "good.jpg").read_bytes() == good
    assert not (tmp_path / "out" / "cut.jpg").exists()
    status = json.loads(run_cli("status", "--json", "--all", "--config", str(config)).stdout)
    target = status["folders"][0]["targets"][0]
    assert (target["delivered"], target["failed"]) == (1, 1)
    [failed] = target["failed_items"]
    assert failed["key"] == "cut"
    assert "inbox/cut.jpg: the image is truncated or corrupt: the JPEG has no end-of-image marker" in failed["reason"]


def test_an_unknown_image_check_is_a_configuration_error(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "out"}}, daemon={"image_check": "fast"})
    result = run_cli("check", "--config", str(config))
    assert result.returncode != 0
    assert "image_check" in result.stdout + result.stderr and "Traceback" not in result.stderr
