"""``[daemon] image_check = "structure"`` (the default): a JPEG's or PNG's structure is checked instead of
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
from syncd.items.image import check_image
from tests.corpus import png_bad_crc, scrambled
from tests.daemon_harness import run_cli, write_config
from tests.helpers import write_atomic

CORRUPT = "the image is truncated or corrupt"


def _frame(fmt: str, *, progressive: bool = False, exif: Image.Exif | None = None, size=(160, 120),
           mode: str = "RGB", **options) -> bytes:
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        options = {"quality": 85, "progressive": progressive, **options}
    if exif is not None:
        options["exif"] = exif
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _with_thumbnail_segment(jpeg: bytes) -> bytes:
    """An APP1 segment that holds a whole JPEG (as EXIF thumbnails do), end marker included,
    before the frame's own scan: a cut frame must not pass on the thumbnail's FF D9."""
    thumbnail = _frame("JPEG", size=(16, 12))
    body = b"Exif\x00\x00" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def _check(data: bytes, fmt: str, check: str):
    suffix = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}[fmt]
    return check_image(data, name=f"cam/frame.{suffix}", expected_format=fmt, max_pixels=10**8, check=check)


FRAMES = {
    "baseline": lambda: _frame("JPEG"),
    "progressive": lambda: _frame("JPEG", progressive=True),
    "thumbnail": lambda: _with_thumbnail_segment(_frame("JPEG")),
    "restart markers": lambda: _frame("JPEG", restart_marker_blocks=4),
    "progressive, optimized, restarts": lambda: _frame("JPEG", progressive=True, optimize=True,
                                                       restart_marker_rows=1),
    "4:4:4, quality 100": lambda: _frame("JPEG", subsampling=0, quality=100),
    "grey": lambda: _frame("JPEG", mode="L"),
    "CMYK": lambda: _frame("JPEG", mode="CMYK"),
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


@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_garbage_in_the_image_data_is_refused(kind):
    """Everything from a point on replaced by random bytes (what a decode refuses 93 % of the
    time, bench.image_check): a stray marker, or no end marker, shows it. Random bytes that
    happen to start with a valid end marker (about 1 in 250) pass: at most 1 in 50 here."""
    data = FRAMES[kind]()
    fmt = "PNG" if kind == "png" else "JPEG"
    rng = np.random.default_rng(11)
    accepted, offsets = [], range(len(data) // 3, len(data) - 2, max(1, len(data) // 100))
    for at in offsets:
        garbage = data[:at] + rng.integers(0, 256, len(data) - at, dtype=np.uint8).tobytes()
        try:
            _check(garbage, fmt, "structure")
            accepted.append(at)
        except ItemError as exc:
            assert CORRUPT in str(exc) or "not an image" in str(exc), exc
    assert len(accepted) <= len(offsets) // 50, accepted


def test_bytes_after_the_end_marker_are_accepted():
    """Some cameras append data after the JPEG's end marker; viewers ignore it."""
    data = _frame("JPEG")
    assert _check(data + b"\x00vendor trailer" * 20, "JPEG", "structure") == _check(data, "JPEG", "structure")


def test_a_stray_marker_is_named_with_its_offset():
    data = _frame("JPEG")
    at = len(data) // 2
    broken = data[:at] + b"\xff\xc0" + data[at + 2:]  # a start-of-frame inside the image data
    with pytest.raises(ItemError, match=r"cam/frame.jpg: the image is truncated or corrupt: a stray marker \(FF C0\)"):
        _check(broken, "JPEG", "structure")


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
        check_image(big, name="big.jpg", expected_format="JPEG", max_pixels=100_000, check="structure")
    tiff = _frame("TIFF")
    assert _check(tiff, "TIFF", "structure") == _check(tiff, "TIFF", "decode")
    with pytest.raises(ItemError, match=CORRUPT):  # decoded: no structure check for TIFF
        _check(tiff[: len(tiff) * 6 // 10], "TIFF", "structure")


@pytest.mark.parametrize("image_check, says", [
    (None, "the JPEG has no end-of-image marker"),  # the default: "structure"
    ("decode", "image file is truncated"),
])
def test_once_delivers_good_frames_and_fails_a_cut_one(tmp_path, image_check, says):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "out"}},
                          daemon={"image_check": image_check} if image_check else {})
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
    assert f"inbox/cut.jpg: the image is truncated or corrupt: {says}" in failed["reason"]


def test_an_unknown_image_check_is_a_configuration_error(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "out"}}, daemon={"image_check": "fast"})
    result = run_cli("check", "--config", str(config))
    assert result.returncode != 0
    assert "image_check" in result.stdout + result.stderr and "Traceback" not in result.stderr
