"""max_image_pixels is syncd's limit, per call, above and below pillow's own default of 89.5 MP
(issue 10, item 10)."""

from __future__ import annotations

import io
import threading
import warnings

import pytest
from PIL import Image

from syncd.errors import ItemError
from syncd.items.content import read_item
from syncd.items.convention import IgnoreRules, walk
from syncd.items.image import check_image
from tests.daemon_harness import run_once, write_config

SIDE = 12000  # 144 MP: over pillow's 89.5 MP default, under syncd's default of 200 MP


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (SIDE, SIDE), 128).save(buffer, "JPEG", quality=50)  # ~1.7 MB
    return buffer.getvalue()


def item_of(tmp_path, data: bytes):
    (tmp_path / "big.jpg").write_bytes(data)
    return next(walk(tmp_path, IgnoreRules(), ""))


@pytest.mark.parametrize("limit", [300_000_000, 200_000_000, SIDE * SIDE])
def test_a_frame_above_pillows_default_is_accepted_under_the_configured_limit(tmp_path, big_jpeg, limit):
    content = read_item(item_of(tmp_path, big_jpeg), max_pixels=limit)
    assert (content.width, content.height, content.image_format) == (SIDE, SIDE, "JPEG")


def test_a_frame_above_the_configured_limit_is_refused_with_syncds_message(tmp_path, big_jpeg):
    with pytest.raises(ItemError, match=rf"{SIDE}x{SIDE} pixels exceeds max_image_pixels=100000000"):
        read_item(item_of(tmp_path, big_jpeg), max_pixels=100_000_000)


def test_limits_are_per_call_in_concurrent_threads_and_leave_warnings_alone(big_jpeg):
    filters = list(warnings.filters)
    verdicts: dict[int, list[str]] = {}

    def decode(index: int) -> None:
        limit = 300_000_000 if index % 2 else 1_000_000
        out = verdicts.setdefault(index, [])
        for _ in range(3):
            try:
                check_image(big_jpeg, name="big.jpg", expected_format="JPEG", max_pixels=limit, check="decode")
                out.append("ok")
            except ItemError as exc:
                out.append("refused" if "max_image_pixels=1000000" in str(exc) else str(exc))

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verdicts == {0: ["refused"] * 3, 1: ["ok"] * 3, 2: ["refused"] * 3, 3: ["ok"] * 3}
    assert warnings.filters == filters


def test_once_delivers_a_144_megapixel_frame_with_the_limit_raised(tmp_path, big_jpeg):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          daemon={"max_image_pixels": 300_000_000, "settle_seconds": 0})
    (tmp_path / "inbox" / "big.jpg").write_bytes(big_jpeg)
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "synced" / "big.jpg").read_bytes() == big_jpeg
