"""An image's bytes -> its format and its size as displayed, checked once.

``check_image`` checks the bytes (a cut, corrupt or disguised file is an ``ItemError``) the
way ``[daemon] image_check`` says, and refuses images over ``max_pixels`` from the header
before any pixel is decoded:

- ``"structure"`` (the default) reads a JPEG's markers (``_jpeg_structure``: whole headers,
  an end-of-image marker after the compressed data) or a PNG's chunks against their CRCs
  (``_png_structure``), without decoding; TIFF, BMP and WebP are decoded;
- ``"decode"`` decodes every image (a JPEG at 1/8 scale) and remembers the bytes (by
  SHA-256) that decoded, so the upload workers' re-read is not decoded again.

For a 93 KB camera frame the structure costs 0.08 ms and the decode 1.1 ms, and the decode
finds little more: libjpeg decodes most damaged compressed data without an error
(``bench.image_check`` measures both). ``image_header`` reads the same answer from the
header alone, for bytes checked before. The size is the one viewers show: a JPEG's EXIF
orientation is applied (``displayed_size``).
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict

from PIL import Image, UnidentifiedImageError

from syncd.errors import ItemError

# syncd applies its own limit, [daemon] max_image_pixels, to every image it decodes: per call,
# from the header, before any pixel is decoded (_check_image; a mask must have its image's
# size). pillow's own limit is one number for the whole process (89.5 MP: a warning above it,
# an error above twice that) that cannot be changed per call without a race between threads,
# and it refused every frame between 89.5 MP and the configured limit, so it is off.
Image.MAX_IMAGE_PIXELS = None

PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its CRC: every complete PNG has it
EXIF_ORIENTATION = 0x0112  # the EXIF tag: how to turn the stored pixels for display, 1-8
SWAPS_AXES = frozenset({5, 6, 7, 8})  # orientations that turn the image by 90 degrees

# Images (by SHA-256) that decoded completely in this process, most recent last: an item is
# decoded when it settles, and its upload workers re-read the same bytes (verified against the
# version, which covers their hash) — one full decode of those bytes is enough.
_DECODED_MAX = 2048
_decoded: OrderedDict[str, tuple[str, int, int, int]] = OrderedDict()
_decoded_lock = threading.Lock()


def check_image(data: bytes, *, name: str, expected_format: str, max_pixels: int,
                sha256: str | None = None, check: str = "structure") -> tuple[str, int, int, int]:
    """Check image bytes; return ``(format, width, height, orientation)`` or raise ItemError.

    ``width`` and ``height`` are as the image is displayed: a JPEG's EXIF orientation
    (``orientation``, 1-8, see ``displayed_size``) that turns it by 90 degrees swaps them.

    ``check``: ``"decode"`` decodes the pixels completely; ``"structure"`` checks a JPEG's or
    a PNG's structure instead (a file cut anywhere fails; bits flipped inside a JPEG's
    compressed data do not, as they mostly do not in a decode either) and decodes other formats.

    ``sha256`` (the hash of ``data``): bytes with this hash that decoded completely before
    in this process are not decoded again.
    """
    if check == "structure":
        return _check_image(data, name=name, expected_format=expected_format, max_pixels=max_pixels,
                            structure_only=True)
    if sha256 is not None:
        with _decoded_lock:
            known = _decoded.get(sha256)
        if known is not None and known[0] == expected_format and known[1] * known[2] <= max_pixels:
            return known
    result = _check_image(data, name=name, expected_format=expected_format, max_pixels=max_pixels)
    if sha256 is not None:
        with _decoded_lock:
            _decoded[sha256] = result
            _decoded.move_to_end(sha256)
            while len(_decoded) > _DECODED_MAX:
                _decoded.popitem(last=False)
    return result


def displayed_size(image: Image.Image) -> tuple[int, int, int]:
    """``(width, height, orientation)`` of an open image as viewers display it.

    Only a JPEG's EXIF Orientation is read: it is what cameras write and what every viewer,
    browser (so every platform's web page) and pillow's ``ImageOps.exif_transpose`` apply.
    Other formats, and values outside 1-8 or an unreadable EXIF block, are taken as stored (1).
    """
    width, height = image.size
    orientation = 1
    if image.format == "JPEG" and "exif" in image.info:
        try:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # a damaged EXIF block does not make the pixels unreadable
            value = 1
        orientation = value if isinstance(value, int) and 1 <= value <= 8 else 1
    if orientation in SWAPS_AXES:
        width, height = height, width
    return width, height, orientation


def _check_image(data: bytes, *, name: str, expected_format: str, max_pixels: int,
                 structure_only: bool = False) -> tuple[str, int, int, int]:
    if not data:
        raise ItemError(f"{name}: the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ItemError(
                    f"{name}: {width}x{height} pixels exceeds max_image_pixels={max_pixels} "
                    "(a decompression bomb?): raise [daemon] max_image_pixels if it is genuine"
                )
            fmt = image.format or "?"
            shown_width, shown_height, orientation = displayed_size(image)
            if structure_only and fmt in STRUCTURE_CHECKS:
                STRUCTURE_CHECKS[fmt](image, data, name)
            else:
                if fmt == "JPEG":
                    # Decode at 1/8 scale: libjpeg still entropy-decodes every block (so a cut
                    # or corrupt file fails exactly as in a full decode: checked on 1,200
                    # fuzzed files) but skips most of the inverse DCT and colour work, which
                    # halves the cost of validating a camera frame.
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
    except ItemError:
        raise
    except UnidentifiedImageError:
        raise ItemError(
            f"{name}: not an image pillow can read (the content is not JPEG/PNG/TIFF/BMP/WebP): replace the file"
        ) from None
    except Image.DecompressionBombError as exc:  # only if something set pillow's limit again
        raise ItemError(f"{name}: refused as a possible decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ItemError(f"{name}: the image is truncated or corrupt: {exc}") from None
    except Exception as exc:  # pillow raises odd things on hostile input
        raise ItemError(f"{name}: the image cannot be decoded: {type(exc).__name__}: {exc}") from None
    if fmt != expected_format and not (expected_format == "TIFF" and fmt == "TIFF"):
        raise ItemError(
            f"{name}: the file is a {fmt} image but its name says {expected_format}: rename it with the right extension"
        )
    if fmt == "PNG":
        _png_end(data, name)
    return fmt, shown_width, shown_height, orientation


def _png_end(data: bytes, name: str) -> None:
    """pillow decodes a PNG that lacks its last bytes (the end chunk, even some of the pixel
    data's checksum): without this a file caught mid-write would be delivered."""
    if data.rfind(PNG_END) == -1:
        raise ItemError(f"{name}: the image is truncated or corrupt: the PNG file has no end chunk (IEND); "
                        "it is cut short or still being written")


def _jpeg_structure(image: Image.Image, data: bytes, name: str) -> None:
    """A JPEG's segments are whole, from the start through every scan to an end-of-image
    marker. Inside compressed data a 0xFF byte is followed by 0x00 (a stuffed byte), another
    0xFF (fill) or a restart marker; anything else is a marker: between the scans of a
    progressive JPEG only tables, comments and the next scan may come, and EOI ends the image.
    So a file cut anywhere lacks its EOI, and garbage in the compressed data shows as a stray
    marker (FF followed by a random byte is almost never a valid one). Bytes after EOI (some
    cameras append data) are not read."""
    corrupt = f"{name}: the image is truncated or corrupt: "
    at, end, scanning = 2, len(data), False
    while True:
        if scanning:  # compressed data: find the next marker that ends it
            found = _SCAN_END.search(data, at)
            if found is None:
                raise ItemError(corrupt + "the JPEG has no end-of-image marker after its image data; "
                                "it is cut short or still being written")
            at = found.start()
        if at + 2 > end or data[at] != 0xFF:
            raise ItemError(corrupt + "the JPEG's headers are cut short or damaged; replace the file")
        marker = data[at + 1]
        if marker == 0xD9:
            if not scanning:
                raise ItemError(corrupt + "the JPEG ends before its image data")
            return
        if scanning and marker not in _BETWEEN_SCANS:
            raise ItemError(corrupt + f"a stray marker (FF {marker:02X}) at byte {at} inside the JPEG's "
                            "image data; replace the file")
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        if at + 4 > end:
            raise ItemError(corrupt + "the JPEG's headers are cut short or damaged; replace the file")
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
        if marker == 0xDA:  # start of scan: compressed data follows its header
            scanning = True


# The end of a scan's compressed data: 0xFF followed by neither 0x00 (stuffing), 0xFF (fill)
# nor a restart marker (D0-D7).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# What may follow a scan besides EOI: DHT, DAC, DQT, DRI, DNL, SOS, APPn, COM.
_BETWEEN_SCANS = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xDC, 0xDA, 0xFE, *range(0xE0, 0xF0)})


def _png_structure(image: Image.Image, data: bytes, name: str) -> None:
    """Every chunk of a PNG is whole and matches its CRC, up to the end chunk (pillow's verify:
    no decompression)."""
    _png_end(data, name)
    image.verify()


# image_check = "structure": what is checked per format; other formats are decoded.
STRUCTURE_CHECKS = {"JPEG": _jpeg_structure, "PNG": _png_structure}


def image_header(data: bytes, *, name: str) -> tuple[str, int, int, int]:
    """Format, displayed size and orientation from an image's header (no decode): for bytes
    validated before."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return (image.format or "?", *displayed_size(image))
    except Exception as exc:  # the bytes hash to a validated version: this is not expected
        raise ItemError(f"{name}: the image cannot be read: {type(exc).__name__}: {exc}") from None
