"""Sizes written as people write them: ``"500MB"``, ``"1.5G"``, ``"512k"``, ``"10MiB"``, ``2048``.

Suffixes are powers of 1024, as in rclone and systemd: ``K``/``KB``/``KiB`` = 1024, ``M`` =
1024², ``G`` = 1024³, ``T`` = 1024⁴, ``P`` = 1024⁵; ``B`` = bytes; case does not matter. A
number without a suffix counts in ``bare_unit`` (bytes, unless the caller says otherwise:
rclone's ``--bwlimit`` counts a bare number in KiB). ``format_size`` prints one back.
"""

from __future__ import annotations

import math
import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(?:i?b?)?|(b))?\s*$", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: str | int | float, *, bare_unit: int = 1) -> int:
    """Bytes for ``value``; ``ValueError`` with a one-line reason when it is not a size."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a size (0 or more bytes)")
        return int(value * bare_unit)
    match = _SIZE.match(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a size: write a number with K, M, G or T (powers of 1024), "
                         'e.g. "500M"')
    number, power, byte = match.groups()
    if power:
        unit = 1024 ** _POWERS[power.lower()]
    elif byte:
        unit = 1
    else:
        unit = bare_unit
    return int(float(number) * unit)


def format_size(count: float) -> str:
    """``512 B``, ``1.5 KiB``, ``500.0 MiB``, ``2.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
