"""An item's content: versions, stat signatures, and precise errors for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from syncd.errors import ItemError
from syncd.items.content import read_item, stat_signature
from syncd.items.convention import IgnoreRules, walk
from tests.helpers import image_bytes, write_item

MAX = 200_000_000


def items_of(root: Path, prefix: str = "", rules: IgnoreRules | None = None):
    return {i.key: i for i in walk(root, rules or IgnoreRules(), prefix)}


def test_version_ignores_sidecar_formatting_but_not_content(tmp_path):
    write_item(tmp_path, "a", metadata={"x": 1, "y": 2})
    item = items_of(tmp_path)["a"]
    v1 = read_item(item, max_pixels=MAX).version
    item.sidecar.write_text(json.dumps({"metadata": {"y": 2, "x": 1}}, indent=4))
    assert read_item(item, max_pixels=MAX).version == v1
    item.sidecar.write_text(json.dumps({"metadata": {"y": 3, "x": 1}}))
    assert read_item(item, max_pixels=MAX).version != v1


def test_stat_signature_changes_with_content(tmp_path):
    write_item(tmp_path, "a", metadata={})
    item = items_of(tmp_path)["a"]
    sig1, _ = stat_signature(item)
    assert stat_signature(item)[0] == sig1
    item.sidecar.write_text('{"metadata": {"k": 1}}')
    assert stat_signature(item)[0] != sig1


def _png_truncated() -> bytes:
    data = image_bytes(64, 64)
    return data[: len(data) // 2]


BAD_IMAGES = {
    "random bytes named .jpg": ("a.jpg", os.urandom(2000), "not an image pillow can read"),
    "truncated PNG": ("a.png", _png_truncated(), "truncated or corrupt"),
    "zero-byte file": ("a.png", b"", r"empty \(0 bytes\)"),
    "PNG named .jpg": ("a.jpg", image_bytes(fmt="PNG"), "is a PNG image but its name says JPEG"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_get_precise_errors(tmp_path, case):
    name, data, expected = BAD_IMAGES[case]
    (tmp_path / name).write_bytes(data)
    item = items_of(tmp_path)["a"]
    with pytest.raises(ItemError, match=expected) as caught:
        read_item(item, max_pixels=MAX)
    assert name in str(caught.value)


def test_decompression_bomb_is_refused(tmp_path):
    from PIL import Image

    Image.new("1", (5000, 5000)).save(tmp_path / "bomb.png")
    item = items_of(tmp_path)["bomb"]
    with pytest.raises(ItemError, match="max_image_pixels"):
        read_item(item, max_pixels=1_000_000)


BAD_SIDECARS = {
    "broken JSON": (b'{"metadata": {', "not valid JSON at line 1"),
    "wrong type": (b'{"metadata": [1, 2]}', "metadata: Input should be a valid dictionary"),
    "unknown key": (b'{"metadata": {}, "lables": []}', "unknown key 'lables'"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
    "non-UTF-8": (b'{"metadata": {"a": "\xff\xfe"}}', "not UTF-8"),
    "empty": (b"", "the sidecar is empty"),
    "deep nesting": (b'{"metadata": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
    "huge number": (b'{"metadata": {"n": ' + b"9" * 5000 + b"}}", "invalid JSON value"),
}


@pytest.mark.parametrize("case", sorted(BAD_SIDECARS))
def test_bad_sidecars_get_precise_errors(tmp_path, case):
    data, expected = BAD_SIDECARS[case]
    write_item(tmp_path, "a")
    (tmp_path / "a.json").write_bytes(data)
    item = items_of(tmp_path)["a"]
    with pytest.raises(ItemError, match=expected) as caught:
        read_item(item, max_pixels=MAX)
    assert "a.json" in str(caught.value)


def test_two_images_with_one_stem_are_an_error(tmp_path):
    write_item(tmp_path, "a")
    (tmp_path / "a.jpg").write_bytes(image_bytes(fmt="JPEG"))
    with pytest.raises(ItemError, match="other images share its stem"):
        read_item(items_of(tmp_path)["a"], max_pixels=MAX)


def test_symlink_leading_outside_is_refused(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(image_bytes())
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.png").symlink_to(outside)
    with pytest.raises(ItemError, match="symlink leading outside"):
        read_item(items_of(root)["link"], max_pixels=MAX)


def test_unreadable_file_is_reported(tmp_path, monkeypatch):
    write_item(tmp_path, "a")
    path = tmp_path / "a.png"
    path.chmod(0)
    if os.geteuid() == 0:
        # root reads mode-000 files anyway; only here do we fake the kernel's refusal.
        import builtins

        real_open, real_os_open = builtins.open, os.open

        def refusing_open(file, *args, **kwargs):
            if not isinstance(file, int) and Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        def refusing_os_open(file, *args, **kwargs):  # the read path opens with os.open (O_NOFOLLOW)
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_os_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
        monkeypatch.setattr(os, "open", refusing_os_open)
    with pytest.raises(ItemError, match="a.png: permission denied"):
        read_item(items_of(tmp_path)["a"], max_pixels=MAX)
