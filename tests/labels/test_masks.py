"""Masks: reading and validating PNGs against the class map, and the converters' output."""

from __future__ import annotations

import gzip
import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from syncd.errors import ItemError
from syncd.labels.classmap import parse_class_map
from syncd.labels.masks import (
    binary_rgba_pngs,
    check_mask,
    index_png,
    mask_of,
    name_colour,
    nifti_instances,
    png_data_url,
    read_mask,
    segments,
)
from tests.helpers import make_upload

RGB_MAP = {"road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]}


def png(pixels: np.ndarray, mode: str | None = None, **save) -> bytes:
    image = Image.fromarray(pixels, mode) if mode else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def rgb_pixels(h=6, w=8) -> np.ndarray:
    """Rows 0-1 road, rows 2-3 car (left half) and black, rows 4-5 sky."""
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[0:2] = RGB_MAP["road"]
    pixels[2:4, : w // 2] = RGB_MAP["car"]
    pixels[4:6] = RGB_MAP["sky"]
    return pixels


def read(data: bytes, class_map=RGB_MAP, width=8, height=6):
    return read_mask(data, parse_class_map(class_map, source="class_map.json"), width=width, height=height,
                     source="cam1/a.mask.png")


def fails(data: bytes, class_map=RGB_MAP, width=8, height=6) -> str:
    with pytest.raises(ItemError) as info:
        read(data, class_map, width, height)
    assert str(info.value).startswith("cam1/a.mask.png: ")
    return str(info.value)


def expected_index(h=6, w=8) -> np.ndarray:
    index = np.zeros((h, w), dtype=np.uint8)
    index[0:2] = 1
    index[2:4, : w // 2] = 2
    index[4:6] = 3
    return index


def test_rgb_mask_becomes_class_indices_with_black_as_background():
    mask = read(png(rgb_pixels()))
    assert mask.index.dtype == np.uint8 and mask.index.shape == (6, 8)
    assert (mask.index == expected_index()).all()
    assert mask.names == {1: "road", 2: "car", 3: "sky"}
    assert mask.colours[2] == (0, 0, 142)
    assert mask.counts == {1: 16, 2: 8, 3: 16}
    assert mask.present == [1, 2, 3]
    assert mask.background == 0 and (mask.width, mask.height) == (8, 6)


def test_alpha_is_ignored_and_palette_pngs_are_read_as_colours():
    pixels = rgb_pixels()
    alpha = np.arange(48, dtype=np.uint8).reshape(6, 8)  # anything, including 0
    rgba = np.dstack([pixels, alpha])
    assert (read(png(rgba, "RGBA")).index == expected_index()).all()
    palette = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert (read(buffer.getvalue()).index == expected_index()).all()


def test_black_mapped_to_a_class_is_that_class():
    mask = read(png(rgb_pixels()), {"void": [0, 0, 0], **RGB_MAP})
    assert mask.background is None
    assert mask.names[1] == "void" and mask.counts[1] == 8
    assert mask.present == [1, 2, 3, 4]


def test_unknown_colours_are_listed_with_pixel_counts_largest_first():
    pixels = rgb_pixels()
    pixels[0, 0] = (1, 2, 3)
    pixels[5, :5] = (250, 0, 0)
    message = fails(png(pixels))
    assert message == ("cam1/a.mask.png: 2 colour(s) are not in the class map: [250, 0, 0] (5 px), [1, 2, 3] (1 px); "
                       "add them to class_map.json or repaint those pixels")


def test_many_unknown_colours_are_cut_short():
    pixels = np.zeros((4, 8, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(32).reshape(4, 8) + 1
    message = fails(png(pixels), width=8, height=4)
    assert message.startswith("cam1/a.mask.png: 32 colour(s) are not in the class map: ")
    assert message.count(" px)") == 8 and "and 24 more" in message


def test_index_masks_in_greyscale_palette_and_one_bit():
    index_map = {"road": 1, "car": 2, "sky": 3}
    mask = read(png(expected_index(), "L"), index_map)
    assert (mask.index == expected_index()).all()
    assert mask.names == {1: "road", 2: "car", 3: "sky"} and mask.background == 0
    assert mask.colours[1] == name_colour("road")  # no colours in the map: derived, stable
    pal = Image.fromarray(expected_index(), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    buffer = io.BytesIO()
    pal.save(buffer, format="PNG")
    assert (read(buffer.getvalue(), index_map).index == expected_index()).all()  # indices, not colours
    bits = Image.fromarray(expected_index() == 2).convert("1")
    buffer = io.BytesIO()
    bits.save(buffer, format="PNG")
    assert (read(buffer.getvalue(), {"car": 1}).index == (expected_index() == 2)).all()


def test_index_zero_mapped_is_a_class():
    mask = read(png(expected_index(), "L"), {"bg": 0, "road": 1, "car": 2, "sky": 3})
    assert mask.background is None and mask.counts[0] == 8


def test_unknown_index_values_are_listed():
    index = expected_index()
    index[0, :3] = 9
    message = fails(png(index, "L"), {"road": 1, "car": 2})
    assert message == ("cam1/a.mask.png: 2 index value(s) are not in the class map: 3 (16 px), 9 (3 px); "
                       "add them to class_map.json or fix the mask")


@pytest.mark.parametrize(
    ("make", "class_map", "expected"),
    [
        (lambda: png(rgb_pixels(6, 9)), RGB_MAP,
         "the mask is 9x6 but the image is 8x6: a mask must have its image's size"),
        (lambda: png(expected_index(), "L"), RGB_MAP, "the mask is single-channel (L) but the class map gives colours"),
        (lambda: png(rgb_pixels()), {"road": 1}, "the mask has colours (RGB) but the class map gives class indices"),
        (lambda: png(expected_index().astype(np.uint16) * 300), {"road": 1}, "the mask is 16-bit"),
        (lambda: b"GIF89a" + bytes(40), RGB_MAP, "not a PNG file: save the mask as PNG"),
        (lambda: png(rgb_pixels())[:60], RGB_MAP, "the mask cannot be decoded"),
    ],
)
def test_broken_masks_are_item_errors(make, class_map, expected):
    assert expected in fails(make(), class_map)


def _png_raw(width: int, height: int, depth: int, colour_type: int, raw: bytes) -> bytes:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_sixteen_bit_rgb_is_refused_not_silently_reduced():
    # pillow would read this 48-bit PNG as 8-bit RGB, merging colours that differ in the low byte.
    rows = b"".join(b"\x00" + bytes(8 * 6) for _ in range(6))
    assert "the mask is 16-bit; masks must be 8-bit" in fails(_png_raw(8, 6, 16, 2, rows))
    rows = b"".join(b"\x00" + bytes(2) for _ in range(6))
    assert "the mask is 2-bit greyscale" in fails(_png_raw(8, 6, 2, 0, rows), {"a": 1})


def test_check_mask_is_the_item_hook():
    class_map = json.dumps(RGB_MAP).encode()
    assert check_mask(png(rgb_pixels()), class_map, 8, 6, "cam1/a.mask.png") == RGB_MAP
    with pytest.raises(ItemError, match=r"^cam1/a.mask.png: no class_map.json in the mask's folder or a parent folder"):
        check_mask(png(rgb_pixels()), None, 8, 6, "cam1/a.mask.png")
    with pytest.raises(ItemError, match=r"^cam1/class_map.json: class 'car'"):
        check_mask(png(rgb_pixels()), b'{"car": [1]}', 8, 6, "cam1/a.mask.png", class_map_name="cam1/class_map.json")
    with pytest.raises(ItemError, match=r"^cam1/a.mask.png: the mask is 8x6 but the image is 8x7"):
        check_mask(png(rgb_pixels()), class_map, 8, 7, "cam1/a.mask.png")


def test_mask_of_reads_the_uploads_mask_with_its_class_map():
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[:, 16:] = RGB_MAP["car"]
    upload = make_upload(mask=png(pixels), class_map=RGB_MAP)
    mask = mask_of(upload)
    assert mask.counts == {2: 24 * 16}
    assert mask_of(make_upload()) is None
    with pytest.raises(ItemError, match="the mask has no class map"):
        mask_of(make_upload(mask=png(pixels)))


def test_index_png_and_segments_for_nucleus():
    mask = read(png(rgb_pixels()))
    data = index_png(mask)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L" and image.size == (8, 6)
        assert (np.asarray(image) == expected_index()).all()
    assert segments(mask) == [{"label": "road", "index": 1}, {"label": "car", "index": 2}, {"label": "sky", "index": 3}]


def test_binary_rgba_pngs_hold_the_class_colour_inside_and_zeros_outside():
    mask = read(png(rgb_pixels()))
    out = binary_rgba_pngs(mask, {"sky": (1, 2, 3)})
    assert [name for name, _ in out] == ["road", "car", "sky"]
    for (name, data), k, colour in zip(out, (1, 2, 3), ((128, 64, 128), (0, 0, 142), (1, 2, 3))):
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == "RGBA" and image.size == (8, 6)
            pixels = np.asarray(image)
        inside = expected_index() == k
        assert (pixels[inside] == (*colour, 255)).all()
        assert (pixels[~inside] == 0).all()
    assert png_data_url(b"\x89PNG").startswith("data:image/png;base64,iVBORw")


def test_nifti_instances_for_redbrick():
    nibabel = pytest.importorskip("nibabel")  # in the test extra; the RedBrick extra in production
    mask = read(png(rgb_pixels()), {"void": [9, 9, 9], **RGB_MAP})  # "void" absent: no instance for it
    data, instances = nifti_instances(mask)
    assert instances == [(1, "road"), (2, "car"), (3, "sky")]
    assert data[:2] == b"\x1f\x8b" and nifti_instances(mask)[0] == data  # gzip, byte-for-byte repeatable
    image = nibabel.Nifti1Image.from_bytes(gzip.decompress(data))
    assert image.shape == (8, 6, 1)
    assert image.get_data_dtype() == np.uint8
    assert (image.affine == np.diag([-1, -1, 1, 1])).all()
    assert int(image.header["sform_code"]) == 2
    volume = np.asarray(image.dataobj)[:, :, 0].T  # back to (H, W), as RedBrick's SDK reads it
    assert (volume == expected_index()).all()  # road/car/sky are classes 2, 3, 4 -> instances 1, 2, 3


def test_a_4k_mask_converts_in_well_under_the_time_a_per_pixel_loop_would_take():
    # 20 classes in vertical stripes with blobs, 3840x2160; a regression guard, not the benchmark
    # (bench/masks.py): per-pixel Python would take minutes, the vectorised code a fraction of a second.
    w, h = 3840, 2160
    colours = {f"c{i}": [(i * 37) % 256, (i * 91) % 256, 200 - i] for i in range(1, 21)}
    stripe = np.repeat(np.arange(1, 21, dtype=np.uint8), w // 20)
    index = np.tile(stripe, (h, 1))
    index[::97, ::89] = 0
    table = np.zeros((256, 3), dtype=np.uint8)
    for i in range(1, 21):
        table[i] = colours[f"c{i}"]
    data = png(table[index])
    start = time.perf_counter()
    mask = read_mask(data, parse_class_map(colours, source="m"), width=w, height=h, source="big.mask.png")
    index_png(mask)
    elapsed = time.perf_counter() - start
    assert len(mask.present) == 20
    assert (mask.index == index).all()
    assert elapsed < 5.0, f"{elapsed:.2f} s"
