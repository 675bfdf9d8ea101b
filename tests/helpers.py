"""Test helpers: images made with pillow/numpy, uploads, and small file-writing utilities."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from syncd.targets.base import Receipt, Upload


def image_bytes(width: int = 32, height: int = 24, *, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A small deterministic image with pixel noise, so different seeds differ in content."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def mask_bytes(width: int = 32, height: int = 24, colours=((0, 0, 0), (255, 0, 0))) -> bytes:
    """An RGB mask whose left half is the first colour and right half the second."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = colours[0]
    pixels[:, width // 2 :] = colours[1]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def write_item(
    folder: Path,
    stem: str,
    *,
    metadata: dict[str, Any] | None = None,
    labels: list | None = None,
    seed: int = 0,
    fmt: str = "PNG",
    mask: bytes | None = None,
    old: bool = True,
    size: tuple[int, int] = (32, 24),
) -> Path:
    """Write ``<stem>.<ext>`` (+ sidecar, + mask) under ``folder``; return the image path.

    With ``old`` the files' mtimes are set 1 hour back so they count as settled at once.
    ``size``: the image's width and height.
    """
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    image = write_atomic(folder / f"{stem}.{ext}", image_bytes(*size, seed=seed, fmt=fmt))
    paths = [image]
    if metadata is not None or labels is not None:
        sidecar = {"metadata": metadata or {}}
        if labels is not None:
            sidecar["labels"] = labels
        paths.append(write_atomic(folder / f"{stem}.json", json.dumps(sidecar)))
    if mask is not None:
        paths.append(write_atomic(folder / f"{stem}.mask.png", mask))
    if old:
        age_files(*paths)
    return image


def age_files(*paths: Path, seconds: float = 3600) -> None:
    for path in paths:
        st = path.stat()
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def make_upload(
    key: str = "cam1/frame_0001",
    *,
    metadata: dict[str, Any] | None = None,
    labels: list[dict[str, Any]] | None = None,
    seed: int = 0,
    fmt: str = "PNG",
    mask: bytes | None = None,
    class_map: dict | None = None,
    previous: Receipt | None = None,
    source_dir: Path | None = None,
) -> Upload:
    """An Upload as the daemon would build it, for driving targets directly."""
    data = image_bytes(seed=seed, fmt=fmt)
    ext = {"PNG": ".png", "JPEG": ".jpg"}[fmt]
    metadata = {} if metadata is None else metadata
    labels = [] if labels is None else labels
    digest = hashlib.sha256()
    digest.update(data)
    digest.update(json.dumps({"metadata": metadata, "labels": labels}, sort_keys=True).encode())
    if mask:
        digest.update(mask)
    name = key.rsplit("/", 1)[-1] + ext
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
    return Upload(
        key=key,
        version=digest.hexdigest(),
        image_name=name,
        image=data,
        image_sha256=hashlib.sha256(data).hexdigest(),
        image_format=fmt,
        width=width,
        height=height,
        metadata=metadata,
        labels=labels,
        source_path=(source_dir or Path("/nonexistent")) / name,
        mask=mask,
        class_map=class_map,
        previous=previous,
    )
