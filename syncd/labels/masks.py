"""Segmentation masks ``<stem>.mask.png``: read, validate and convert, vectorised (numpy/pillow).

A mask is one PNG the size of its image, read through the item's class map
(syncd.labels.classmap):

- RGB class map: the pixel's colour is its class (RGB, RGBA with alpha ignored, or a palette
  PNG). Black without a class-map entry is background.
- index class map: the pixel's value is its class (8-bit greyscale, 1-bit, or a palette PNG's
  indices). 0 without a class-map entry is background.

``read_mask`` turns PNG bytes into a ``Mask``: a ``(H, W)`` uint8 *class-index* array (index
form: the map's own indices; RGB form: the class's position in the map + 1, 0 = background)
and per-class facts. Every failure is an ``ItemError`` naming the mask file: not a PNG,
16-bit, wrong size, channels that do not fit the class map, or colours/indices the class map
lacks (the error lists them with their pixel counts, largest first).

The converters only read the given bytes and return bytes or plain data, for the platform
targets: ``index_png`` (Nucleus), ``binary_rgba_pngs`` (Dataloop), ``nifti_instances``
(RedBrick, needs the optional ``nibabel``); Edge Impulse's boxes are
``syncd.labels.regions.region_boxes``. No per-pixel Python loops: a 4K mask with 20 classes
is read and converted in well under a second, except for Dataloop, whose format is one
full-size PNG per class (about 80 ms per class at 4K; bench/masks.py, docs/benchmarks.md).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from syncd.errors import ItemError, LocalError
from syncd.labels.classmap import CLASS_MAP_NAME, ClassMap, Colour, parse_class_map

if TYPE_CHECKING:  # numpy is imported by the functions that handle a mask: a tenth of a second and
    import numpy as np  # a pool of BLAS threads that a daemon whose items have no mask never pays

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_LISTED = 8  # unknown colours named in one error message
UNKNOWN = 255  # lookup-table marker; RGB class maps have at most 254 classes (classmap.MAX_RGB_CLASSES)


@dataclass(frozen=True)
class Mask:
    """A validated mask. ``index[y, x]`` is the class index of a pixel.

    ``names`` maps every class index of the class map to its name; ``colours`` maps it to an
    RGB colour (the map's colour, or a stable colour derived from the name for index maps);
    ``counts`` holds the pixel count of each class present (background excluded);
    ``background`` is the index of unclassified pixels, or None when every index is a class.
    """

    index: np.ndarray
    names: dict[int, str]
    colours: dict[int, Colour]
    counts: dict[int, int]
    background: int | None = 0
    kind: str = "rgb"

    @property
    def height(self) -> int:
        return int(self.index.shape[0])

    @property
    def width(self) -> int:
        return int(self.index.shape[1])

    @property
    def present(self) -> list[int]:
        """Class indices that occur in the mask, ascending."""
        return sorted(self.counts)


def name_colour(name: str) -> Colour:
    """A stable, not-too-dark colour for a class that has none (index class maps)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return (64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192)


def _png_header(data: bytes, source: str) -> tuple[int, int, int, int]:
    """``(width, height, bit_depth, colour_type)`` from the IHDR chunk, read directly: pillow
    silently reduces 16-bit RGB to 8 bits, and a mask must not lose classes that way."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        raise ItemError(f"{source}: not a PNG file: save the mask as PNG")
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour_type


def _describe(values: np.ndarray, counts: np.ndarray, rgb: bool) -> str:
    import numpy as np
    order = np.argsort(-counts, kind="stable")[:MAX_LISTED]
    parts = []
    for i in order:
        value = int(values[i])
        shown = f"[{value & 255}, {(value >> 8) & 255}, {value >> 16}]" if rgb else str(value)
        parts.append(f"{shown} ({int(counts[i])} px)")
    more = len(values) - len(order)
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def _rgb_to_index(image: Image.Image, class_map: ClassMap, source: str) -> tuple[np.ndarray, int | None]:
    """Class indices of an RGB(A) image: colours packed into uint32 (alpha dropped) and mapped
    through a 2^24-entry lookup table (16 MiB, one gather; no per-pixel Python)."""
    import numpy as np
    rgba = np.array(image.convert("RGBA") if image.mode != "RGBA" else image)  # a writable copy
    packed = rgba.view("<u4")[..., 0]
    packed &= np.uint32(0xFFFFFF)  # in place (r | g << 8 | b << 16): one 4-byte array per pixel, not two
    lut = np.full(1 << 24, UNKNOWN, dtype=np.uint8)
    background: int | None = 0
    lut[0] = 0  # black without a class is background
    for k, (r, g, b) in class_map.index_colours().items():
        key = r | (g << 8) | (b << 16)
        lut[key] = k
        if key == 0:
            background = None
    index = lut[packed]
    unknown = index == UNKNOWN
    if unknown.any():
        values, counts = np.unique(packed[unknown], return_counts=True)
        raise ItemError(
            f"{source}: {len(values)} colour(s) are not in the class map: {_describe(values, counts, True)}; "
            "add them to class_map.json or repaint those pixels"
        )
    return index, background


def _index_values(image: Image.Image, source: str) -> np.ndarray:
    import numpy as np
    if image.mode in ("L", "P"):
        return np.asarray(image)
    if image.mode == "LA":
        return np.asarray(image.getchannel("L"))
    if image.mode == "1":
        return np.asarray(image).astype(np.uint8)
    raise ItemError(
        f"{source}: the mask has colours ({image.mode}) but the class map gives class indices: "
        "save the mask as 8-bit greyscale class indices, or map class names to [r, g, b] colours"
    )


def read_mask(data: bytes, class_map: ClassMap, *, width: int, height: int, source: str) -> Mask:
    """Decode and validate mask bytes against the image size and the class map."""
    import numpy as np
    mask_w, mask_h, depth, colour_type = _png_header(data, source)
    if depth == 16:
        raise ItemError(f"{source}: the mask is 16-bit; masks must be 8-bit: save it with 8 bits per channel")
    if colour_type == 0 and depth in (2, 4):
        raise ItemError(f"{source}: the mask is {depth}-bit greyscale; save it as 8-bit greyscale")
    if (mask_w, mask_h) != (width, height):
        raise ItemError(f"{source}: the mask is {mask_w}x{mask_h} but the image is {width}x{height}: "
                        "a mask must have its image's size")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if class_map.kind == "rgb":
                if image.mode in ("L", "LA", "1", "I", "I;16"):
                    raise ItemError(
                        f"{source}: the mask is single-channel ({image.mode}) but the class map gives colours: "
                        "map class names to indices ({\"road\": 1}) or save the mask in RGB"
                    )
                index, background = _rgb_to_index(image, class_map, source)
            else:
                index = _index_values(image, source)
                background = None
    except ItemError:
        raise
    except Exception as exc:  # pillow raises many kinds on broken files
        raise ItemError(f"{source}: the mask cannot be decoded: {type(exc).__name__}: {exc}") from None
    names = class_map.index_names()
    counts = np.bincount(index.ravel(), minlength=256)
    if class_map.kind == "index":
        background = None if 0 in names else 0
        known = np.zeros(256, dtype=bool)
        known[list(names)] = True
        if background is not None:
            known[background] = True
        unknown = np.flatnonzero((counts > 0) & ~known)
        if unknown.size:
            raise ItemError(
                f"{source}: {unknown.size} index value(s) are not in the class map: "
                f"{_describe(unknown, counts[unknown], False)}; add them to class_map.json or fix the mask"
            )
    colours = class_map.index_colours() or {k: name_colour(n) for k, n in names.items()}
    present = {int(k): int(counts[k]) for k in np.flatnonzero(counts) if int(k) in names}
    return Mask(index=np.ascontiguousarray(index, dtype=np.uint8), names=names, colours=colours, counts=present,
                background=background, kind=class_map.kind)


def check_mask(mask: bytes, class_map_bytes: bytes | None, width: int, height: int, name: str,
               *, class_map_name: str | None = None) -> dict:
    """The item-validation hook (``syncd.items.content.read_item(validate_mask=...)``).

    Validates the mask and returns the class map as a plain dict for ``Upload.class_map``.
    A mask without a class map is an ItemError that says where to put one.
    """
    if class_map_bytes is None:
        raise ItemError(
            f"{name}: no {CLASS_MAP_NAME} in the mask's folder or a parent folder up to the watched root: "
            "add one mapping class names to [r, g, b] colours or to indices"
        )
    class_map = parse_class_map(class_map_bytes, source=class_map_name or f"{CLASS_MAP_NAME} (for {name})")
    read_mask(mask, class_map, width=width, height=height, source=name)
    return class_map.to_json()


def mask_of(upload) -> Mask | None:
    """The upload's mask decoded with its class map, or None when it has no mask."""
    if upload.mask is None:
        return None
    source = f"{upload.key}.mask.png"
    if upload.class_map is None:
        raise ItemError(f"{source}: the mask has no class map: add {CLASS_MAP_NAME} next to it")
    class_map = parse_class_map(upload.class_map, source=CLASS_MAP_NAME)
    return read_mask(upload.mask, class_map, width=upload.width, height=upload.height, source=source)


def _png(image: Image.Image, compress_level: int = 6) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def index_png(mask: Mask) -> bytes:
    """An 8-bit greyscale PNG of the class indices (Nucleus: pixel value = segment index)."""
    return _png(Image.fromarray(mask.index, "L"))


def segments(mask: Mask) -> list[dict]:
    """``[{"label", "index"}]`` for the classes present, ascending by index (Nucleus)."""
    return [{"label": mask.names[k], "index": k} for k in mask.present]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def binary_rgba_png(inside: np.ndarray, colour: Colour) -> bytes:
    """A full-size RGBA PNG: ``colour`` with alpha 255 where ``inside``, (0, 0, 0, 0) elsewhere.

    Encoded here rather than by pillow because it is 2x faster for this one shape of data:
    the rows are "Up"-filtered with one numpy subtraction (a binary mask differs little from
    the row above) and deflated with zlib's run-length strategy, which suits the long zero
    runs. Any PNG decoder reads it (tests decode it with pillow).
    """
    import numpy as np
    h, w = inside.shape
    r, g, b = colour
    pixels = np.where(inside, np.uint32(r | g << 8 | b << 16 | 255 << 24), np.uint32(0)).astype("<u4", copy=False)
    rows = pixels.view(np.uint8).reshape(h, w * 4)
    raw = np.empty((h, w * 4 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up (the first row: "Up" from an implicit zero row = its own bytes)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    deflate = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = deflate.compress(raw) + deflate.flush()
    return (PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def binary_rgba_pngs(mask: Mask, colours: Mapping[str, Colour] | None = None) -> list[tuple[str, bytes]]:
    """``[(class name, RGBA PNG)]``, one per class present, ascending by index: the class colour
    with alpha 255 inside, all zero outside (Dataloop's "binary" annotation; the same pixels
    dtlpy's Segmentation encodes). ``colours`` (class name -> RGB, e.g. from the platform's
    ontology) overrides the mask's own colours."""
    colours = colours or {}
    return [(mask.names[k], binary_rgba_png(mask.index == k, colours.get(mask.names[k], mask.colours[k])))
            for k in mask.present]


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def nifti_instances(mask: Mask) -> tuple[bytes, list[tuple[int, str]]]:
    """A gzipped NIfTI-1 instance map for RedBrick and its ``[(instance_id, class name)]``.

    One instance id per class present (1..N in index order); shape ``(W, H, 1)`` (the PNG
    transposed, as RedBrick's SDK writes it), uint8, affine ``diag(-1, -1, 1, 1)``. The gzip
    header carries no timestamp, so the same mask gives the same bytes.
    """
    import numpy as np
    try:
        import nibabel  # optional extra: pip install 'syncd[redbrick]'
    except ImportError:
        raise LocalError("RedBrick masks need the nibabel package: pip install 'syncd[redbrick]'") from None
    present = mask.present
    lut = np.zeros(256, dtype=np.uint8)
    for instance, k in enumerate(present, start=1):
        lut[k] = instance
    volume = np.ascontiguousarray(lut[mask.index].T)[:, :, np.newaxis]
    image = nibabel.Nifti1Image(volume, np.diag([-1.0, -1.0, 1.0, 1.0]))
    image.header.set_data_dtype(np.uint8)
    data = gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)
    return data, [(instance, mask.names[k]) for instance, k in enumerate(present, start=1)]
