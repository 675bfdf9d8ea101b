"""A corpus of bad input, generated at test time with pillow/numpy (no binary data in git).

Each ``BadInput`` writes the files of one item under ``bad/`` in a watched folder and says
which per-item error the daemon must report for it (a regex over the reason in ``syncd
status``). ``write_good`` writes the good items that must all be delivered beside them.

``build_corpus()`` holds the inputs that make an item fail. ``LABEL_CORPUS`` holds bad labels
and masks: they do not hold the image back, so the item is delivered without them and the
reason is reported per item (``labels_failed`` in ``syncd status``).
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BAD = "bad"
MAX_PIXELS = 4_000_000  # the corpus config's [daemon] max_image_pixels


def image(fmt: str = "PNG", width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def scrambled(data: bytes, start: int, end: int, seed: int = 1) -> bytes:
    """``data`` with bytes ``start:end`` replaced by seeded random bytes."""
    rng = random.Random(seed)
    out = bytearray(data)
    for i in range(start, min(end, len(out))):
        out[i] = rng.randrange(256)
    return bytes(out)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, idat: bytes) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB, with the given IDAT payload."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="GIF")
    return buffer.getvalue()


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(image("BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def tiff_bad_ifd() -> bytes:
    data = bytearray(image("TIFF"))
    struct.pack_into("<I", data, 4, 0x7FFFFF00)  # first IFD far beyond the end of the file
    return bytes(data)


def png_bad_crc() -> bytes:
    data = bytearray(image("PNG"))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    return bytes(data)


def mask_png(width: int, height: int, colours=((0, 0, 0), (255, 0, 0)), *, mode: str = "RGB") -> bytes:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = colours[0]
    pixels[:, width // 2:] = colours[1]
    picture = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        picture = Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class BadInput:
    """One kind of bad input: ``write(folder)`` creates it; ``expect`` matches the reason."""

    kind: str
    key: str
    expect: str
    write: Callable[[Path], None]


def _put(folder: Path, name: str | bytes, data: bytes | str) -> Path:
    directory = folder / BAD
    directory.mkdir(parents=True, exist_ok=True)
    raw = name if isinstance(name, bytes) else name.encode()
    path = os.path.join(os.fsencode(directory), raw)
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    return Path(os.fsdecode(path))


def _image_file(name: str, data: bytes, ext: str = "png") -> Callable[[Path], None]:
    return lambda folder: _put(folder, f"{name}.{ext}", data)


def _with_sidecar(name: str, sidecar: bytes | str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        _put(folder, f"{name}.png", image(seed=hash(name) % 1000))
        _put(folder, f"{name}.json", sidecar)
    return write


def _symlink(name: str, target: Callable[[Path], str], *, sidecar: bool = False) -> Callable[[Path], None]:
    """``bad/<name>.png`` (or its sidecar) as a symlink to ``target(folder)``."""
    def write(folder: Path) -> None:
        (folder / BAD).mkdir(parents=True, exist_ok=True)
        if sidecar:
            _put(folder, f"{name}.png", image(seed=5))
            os.symlink(target(folder), folder / BAD / f"{name}.json")
        else:
            os.symlink(target(folder), folder / BAD / f"{name}.png")
    return write


def _outside(folder: Path, name: str, data: bytes) -> str:
    """A real file outside the watched folder (next to it), for symlinks to point at."""
    path = folder.parent / "outside" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _unreadable(name: str, which: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        img = _put(folder, f"{name}.png", image(seed=6))
        side = _put(folder, f"{name}.json", json.dumps({"metadata": {"secret": True}}))
        (img if which == "image" else side).chmod(0)
    return write


def _fifo(folder: Path) -> None:
    (folder / BAD).mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / BAD / "fifo.png")  # opening it for reading would block forever


def _two_images(folder: Path) -> None:
    _put(folder, "twins.png", image(seed=7))
    _put(folder, "twins.jpg", image("JPEG", seed=8))


def _symlink_loop(folder: Path) -> None:
    (folder / BAD).mkdir(parents=True, exist_ok=True)
    os.symlink("loop_b.png", folder / BAD / "loop_a.png")
    os.symlink("loop_a.png", folder / BAD / "loop_b.png")


def _build() -> list[BadInput]:
    jpeg, png, tiff, bmp, webp = (image(f) for f in ("JPEG", "PNG", "TIFF", "BMP", "WEBP"))
    corrupt = "the image is truncated or corrupt"
    unreadable_image = "not an image pillow can read"
    zip_bomb = png_claiming(4000, 4000, zlib.compress(b"\0" * ((4000 * 3 + 1) * 4000), 9))  # 46 kB, 48 MB decoded
    deep = b'{"metadata": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    b = BAD
    return [
        # -- images: corrupt and truncated, every supported format ------------------------
        BadInput("jpeg-truncated", f"{b}/jpeg_truncated", corrupt, _image_file("jpeg_truncated", jpeg[: len(jpeg) * 6 // 10], "jpg")),
        BadInput("jpeg-corrupt-scan", f"{b}/jpeg_corrupt_scan", corrupt, _image_file("jpeg_corrupt_scan", scrambled(jpeg, len(jpeg) // 3, len(jpeg)), "jpg")),
        BadInput("jpeg-corrupt-header", f"{b}/jpeg_corrupt_header", corrupt, _image_file("jpeg_corrupt_header", scrambled(jpeg, 4, 40), "jpeg")),
        BadInput("png-truncated", f"{b}/png_truncated", corrupt, _image_file("png_truncated", png[: len(png) * 6 // 10])),
        BadInput("png-missing-end", f"{b}/png_missing_end", "no end chunk", _image_file("png_missing_end", png[:-12])),
        BadInput("png-bad-crc", f"{b}/png_bad_crc", corrupt, _image_file("png_bad_crc", png_bad_crc())),
        BadInput("png-corrupt-stream", f"{b}/png_corrupt_stream", corrupt, _image_file("png_corrupt_stream", scrambled(png, len(png) // 3, len(png)))),
        BadInput("tiff-truncated", f"{b}/tiff_truncated", corrupt, _image_file("tiff_truncated", tiff[: len(tiff) * 6 // 10], "tif")),
        BadInput("tiff-bad-ifd", f"{b}/tiff_bad_ifd", unreadable_image, _image_file("tiff_bad_ifd", tiff_bad_ifd(), "tiff")),
        BadInput("bmp-truncated", f"{b}/bmp_truncated", corrupt, _image_file("bmp_truncated", bmp[: len(bmp) * 6 // 10], "bmp")),
        BadInput("bmp-corrupt-header", f"{b}/bmp_corrupt_header", corrupt, _image_file("bmp_corrupt_header", scrambled(bmp, 4, 40), "bmp")),
        BadInput("webp-truncated", f"{b}/webp_truncated", corrupt, _image_file("webp_truncated", webp[: len(webp) * 6 // 10], "webp")),
        BadInput("webp-corrupt-header", f"{b}/webp_corrupt_header", unreadable_image, _image_file("webp_corrupt_header", scrambled(webp, 4, 40), "webp")),
        # -- images that decode as something else, or are not images ------------------------
        BadInput("png-named-jpg", f"{b}/png_named_jpg", "is a PNG image but its name says JPEG", _image_file("png_named_jpg", png, "jpg")),
        BadInput("gif-named-png", f"{b}/gif_named_png", "is a GIF image but its name says PNG", _image_file("gif_named_png", gif())),
        BadInput("text-named-png", f"{b}/text_named_png", unreadable_image, _image_file("text_named_png", b"not an image\n" * 20)),
        BadInput("random-bytes-jpg", f"{b}/random_bytes", unreadable_image, _image_file("random_bytes", random.Random(3).randbytes(3000), "jpg")),
        # -- decompression bombs -------------------------------------------------------------
        BadInput("png-bomb-header", f"{b}/png_bomb_header", "decompression bomb", _image_file("png_bomb_header", png_claiming(30000, 30000, zlib.compress(b"\0" * 100)))),
        BadInput("png-zip-bomb", f"{b}/png_zip_bomb", f"4000x4000 pixels exceeds max_image_pixels={MAX_PIXELS}", _image_file("png_zip_bomb", zip_bomb)),
        BadInput("bmp-giant-dimensions", f"{b}/bmp_giant", "decompression bomb", _image_file("bmp_giant", bmp_claiming(50000, 50000), "bmp")),
        # -- empty files -------------------------------------------------------------------------
        BadInput("zero-byte-image", f"{b}/zero_image", r"the file is empty \(0 bytes\)", _image_file("zero_image", b"")),
        BadInput("zero-byte-sidecar", f"{b}/zero_sidecar", "zero_sidecar.json: the sidecar is empty", _with_sidecar("zero_sidecar", b"")),
        # -- broken and hostile JSON --------------------------------------------------------------
        BadInput("json-broken", f"{b}/json_broken", "json_broken.json: not valid JSON at line 1", _with_sidecar("json_broken", '{"metadata": {"a": 1,')),
        BadInput("json-deep-nesting", f"{b}/json_deep", "json_deep.json: JSON is nested too deeply", _with_sidecar("json_deep", deep)),
        BadInput("json-huge-integer", f"{b}/json_huge_int", "json_huge_int.json: invalid JSON value: .*digits", _with_sidecar("json_huge_int", '{"metadata": {"n": ' + "9" * 5000 + "}}")),
        BadInput("json-huge-float", f"{b}/json_huge_float", "too large for a JSON number", _with_sidecar("json_huge_float", '{"metadata": {"n": 1e999}}')),
        BadInput("json-nan", f"{b}/json_nan", "NaN is not a JSON number", _with_sidecar("json_nan", '{"metadata": {"n": NaN}}')),
        BadInput("json-metadata-wrong-type", f"{b}/json_meta_list", r"json_meta_list.json: metadata: Input should be a valid dictionary", _with_sidecar("json_meta_list", '{"metadata": [1, 2]}')),
        BadInput("json-labels-wrong-type", f"{b}/json_labels_obj", r"json_labels_obj.json: labels: Input should be a valid list", _with_sidecar("json_labels_obj", '{"labels": {"a": 1}}')),
        BadInput("json-top-level-array", f"{b}/json_array", "must be a JSON object", _with_sidecar("json_array", "[1, 2, 3]")),
        BadInput("json-unknown-key", f"{b}/json_unknown", "unknown key 'meta'", _with_sidecar("json_unknown", '{"meta": {}}')),
        BadInput("json-not-utf8", f"{b}/json_latin1", r"json_latin1.json: not UTF-8 text \(byte", _with_sidecar("json_latin1", '{"metadata": {"city": "Zürich"}}'.encode("latin-1"))),
        BadInput("json-lone-surrogate", f"{b}/json_surrogate", "unpaired UTF-16 surrogate", _with_sidecar("json_surrogate", '{"metadata": {"s": "\\ud800"}}')),
        BadInput("json-too-large", f"{b}/json_large", "sidecar is larger than 16 MiB", _with_sidecar("json_large", '{"metadata": {"pad": "' + "x" * (17 << 20) + '"}}')),
        # -- path tricks in names -------------------------------------------------------------------
        BadInput("name-newline", rf"{b}/new\x0aline", "the file name contains a control character", _image_file("new\nline", image(seed=11))),
        BadInput("name-not-utf8", rf"{b}/latin\xe9", "the file name is not valid UTF-8", lambda f: _put(f, b"latin\xe9.png", image(seed=12))),
        BadInput("name-backslash-traversal", f"{b}/sub\\..\\..\\escape", "the file name contains a backslash", _image_file("sub\\..\\..\\escape", image(seed=13))),
        BadInput("name-windows-absolute", f"{b}/C:\\Windows\\evil", "the file name contains a backslash", _image_file("C:\\Windows\\evil", image(seed=14))),
        # -- symlinks -------------------------------------------------------------------------------------
        BadInput("symlink-outside-absolute", f"{b}/link_abs", "a symlink leading outside the watched folder is refused",
                 _symlink("link_abs", lambda f: _outside(f, "abs.png", image(seed=15)))),
        BadInput("symlink-outside-relative", f"{b}/link_rel", "a symlink leading outside the watched folder is refused",
                 _symlink("link_rel", lambda f: os.path.join("..", "..", "outside", os.path.basename(_outside(f, "rel.png", image(seed=16)))))),
        BadInput("symlink-sidecar-outside", f"{b}/link_sidecar", "link_sidecar.json: a symlink leading outside",
                 _symlink("link_sidecar", lambda f: _outside(f, "meta.json", b'{"metadata": {"stolen": true}}'), sidecar=True)),
        BadInput("symlink-broken", f"{b}/link_broken", "a broken symlink", _symlink("link_broken", lambda f: str(f / "no-such-file.png"))),
        BadInput("symlink-loop", f"{b}/loop_a", "symlink loop", _symlink_loop),
        # -- unreadable, special and ambiguous files ---------------------------------------------------------
        BadInput("unreadable-image", f"{b}/locked_image", "permission denied", _unreadable("locked_image", "image")),
        BadInput("unreadable-sidecar", f"{b}/locked_sidecar", "locked_sidecar.json: permission denied", _unreadable("locked_sidecar", "sidecar")),
        BadInput("fifo-named-png", f"{b}/fifo", "not a regular file", _fifo),
        BadInput("two-images-one-stem", f"{b}/twins", "other images share its stem", _two_images),
    ]


def build_corpus() -> list[BadInput]:
    """The corpus (built on demand: some entries are megabytes)."""
    return _build()

# The loop's second link is an item of its own with the same error.
EXTRA_FAILED = {f"{BAD}/loop_b": "symlink loop"}


def _masked(name: str, mask: bytes, class_map: str | None = '{"car": [255, 0, 0]}') -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        directory = folder / BAD / "masks" / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "item.png").write_bytes(image(seed=21))
        (directory / "item.mask.png").write_bytes(mask)
        if class_map is not None:
            (directory / "class_map.json").write_text(class_map)
    return write


def _labelled(name: str, labels: list) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        directory = folder / BAD / "labels"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.png").write_bytes(image(seed=31))
        (directory / f"{name}.json").write_text(json.dumps({"metadata": {"name": name}, "labels": labels}))
    return write


# Delivered without their labels/mask, reported in status as labels_failed (see the docstring).
LABEL_CORPUS: list[BadInput] = [
    BadInput("label-box-outside-image", f"{BAD}/labels/box_outside", r"labels\[0\]\.width: the box ends at x=510, past the image's width 64",
             _labelled("box_outside", [{"type": "box", "label": "car", "x": 10, "y": 20, "width": 500, "height": 8}])),
    BadInput("label-unknown-type", f"{BAD}/labels/unknown_type", r"labels\[0\]\.type: unknown label type 'blob'",
             _labelled("unknown_type", [{"type": "blob", "label": "car"}])),
    BadInput("label-without-class", f"{BAD}/labels/no_class", r"labels\[0\]\.label: field required",
             _labelled("no_class", [{"type": "point", "x": 1, "y": 1}])),
    BadInput("mask-wrong-size", f"{BAD}/masks/wrong_size/item", "item.mask.png: the mask is 32x24 but the image is 64x48: a mask must have its image's size",
             _masked("wrong_size", mask_png(32, 24))),
    BadInput("mask-16-bit", f"{BAD}/masks/sixteen_bit/item", "item.mask.png: the mask is 16-bit",
             _masked("sixteen_bit", mask_png(64, 48, mode="I;16"))),
    BadInput("mask-not-png", f"{BAD}/masks/jpeg_mask/item", "item.mask.png: not a PNG file",
             _masked("jpeg_mask", image("JPEG"))),
    BadInput("mask-unknown-colour", f"{BAD}/masks/unknown_colour/item", r"item.mask.png: 1 colour\(s\) are not in the class map: \[0, 255, 0\]",
             _masked("unknown_colour", mask_png(64, 48, ((0, 0, 0), (0, 255, 0))))),
    BadInput("mask-truncated", f"{BAD}/masks/truncated/item", "item.mask.png: the mask cannot be decoded",
             _masked("truncated", mask_png(64, 48)[:100])),
    BadInput("mask-without-class-map", f"{BAD}/masks/no_class_map/item", "item.mask.png: no class_map.json in the mask's folder",
             _masked("no_class_map", mask_png(64, 48), class_map=None)),
    BadInput("class-map-broken-json", f"{BAD}/masks/broken_map/item", r"class_map.json \(for .*item.mask.png\): not valid JSON",
             _masked("broken_map", mask_png(64, 48), class_map='{"car": [255, 0')),
]


def write_good(folder: Path) -> dict[str, bytes]:
    """Good items of every format and shape; returns ``key -> image bytes``."""
    good: dict[str, bytes] = {}
    formats = [
        ("PNG", "png"), ("JPEG", "jpg"), ("JPEG", "jpeg"), ("TIFF", "tif"), ("TIFF", "tiff"), ("BMP", "bmp"),
        ("WEBP", "webp"),
    ]
    for i, (fmt, ext) in enumerate(formats * 3):
        directory = folder / ("good" if i % 2 else BAD)  # good items share directories with bad ones
        directory.mkdir(parents=True, exist_ok=True)
        data = image(fmt, 40 + i, 30 + i, seed=100 + i)
        (directory / f"ok_{i:02d}.{ext}").write_bytes(data)
        if i % 3 == 0:
            (directory / f"ok_{i:02d}.json").write_text(json.dumps({"metadata": {"i": i, "unicode": "Zürich ✓"}}))
        good[f"{directory.name}/ok_{i:02d}"] = data
    # Unusual but fine: a space and non-ASCII UTF-8 in the name, deep (not too deep) JSON,
    # big integers within range, a symlink to a file inside the folder.
    (folder / "good" / "café au lait.png").write_bytes(data := image(seed=200))
    good["good/café au lait"] = data
    (folder / "good" / "nested.png").write_bytes(data := image(seed=201))
    (folder / "good" / "nested.json").write_text(
        '{"metadata": {"x": ' + "[" * 200 + "]" * 200 + ', "big": 123456789012345678901234567890}}'
    )
    good["good/nested"] = data
    (folder / "good" / "real.png").write_bytes(data := image(seed=202))
    os.symlink("real.png", folder / "good" / "alias.png")
    good["good/real"] = data
    good["good/alias"] = data
    return good


def write_outside_tree(folder: Path) -> None:
    """A symlinked directory leading outside: never followed, so never delivered."""
    outside = folder.parent / "outside" / "tree"
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "leak.png").write_bytes(image(seed=300))
    os.symlink(outside, folder / "linked_dir")
