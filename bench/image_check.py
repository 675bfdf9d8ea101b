"""Benchmark: what each ``[daemon] image_check`` costs per frame, and what damage it finds.

    .venv/bin/python -m bench.image_check                 # 300 damaged copies per kind
    .venv/bin/python -m bench.image_check --copies 50     # a quick look

The frames: the camera-like 640x480 JPEG of the throughput benchmark (93 KB) and a PNG of
the same pixels. Cost: the median time of ``syncd.items.image.check_image`` per frame, for
``"structure"`` and ``"decode"``. Damage: ``--copies`` copies per kind, each damaged at a
random place after the headers (seeded), and the share of them each check refuses:

- **cut**: the file ends at a random byte (caught mid-write, a partial copy);
- **1 bit** / **16 bits**: flipped bits (a failing card or bus);
- **zeroed 512 B** / **zeroed 4 KB**: a sector or a page read back as zeros;
- **garbage tail**: everything from a random byte on replaced by random bytes.

A check that refuses a damaged file makes the item fail with its name; one that does not
delivers the file as it is.
"""

from __future__ import annotations

import argparse
import io
import random
import time

from bench.common import Report, base_jpeg, median

DAMAGE = ("cut", "1 bit", "16 bits", "zeroed 512 B", "zeroed 4 KB", "garbage tail")


def damaged(data: bytes, kind: str, rng: random.Random, start: int) -> bytes:
    """A copy of ``data`` with ``kind`` of damage at or after byte ``start``."""
    out = bytearray(data)
    at = rng.randrange(start, len(data) - 1)
    if kind == "cut":
        return bytes(out[:at])
    if kind in ("1 bit", "16 bits"):
        for _ in range(1 if kind == "1 bit" else 16):
            spot = rng.randrange(start, len(data))
            out[spot] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind.startswith("zeroed"):
        size = 512 if "512" in kind else 4096
        at = min(at, len(data) - size)
        out[at:at + size] = bytes(size)
        return bytes(out)
    return bytes(out[:at]) + rng.randbytes(len(data) - at)


def png_of(jpeg: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> Report:
    from syncd.errors import ItemError
    from syncd.items.image import check_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=300, help="damaged copies per kind of damage")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="image_check", help="name of the saved report (bench/out/NAME.json)")
    args = parser.parse_args(argv)

    jpeg = base_jpeg()
    frames = {"JPEG": jpeg, "PNG": png_of(jpeg)}
    checks = ("structure", "decode")
    report = Report(args.name, ["format", "check", "ms/frame", *(f"refuses {kind}" for kind in DAMAGE)])
    for fmt, data in frames.items():
        name = f"frame.{fmt.lower()}"

        def refused(blob: bytes, check: str) -> bool:
            try:
                check_image(blob, name=name, expected_format=fmt, max_pixels=10**9, check=check)
            except ItemError:
                return True
            return False

        for check in checks:
            assert not refused(data, check), f"{check} refuses the intact {fmt} frame"
            times = []
            for _ in range(50):
                started = time.perf_counter()
                refused(data, check)
                times.append(time.perf_counter() - started)
            rng = random.Random(args.seed)  # the same damaged copies for both checks
            shares = []
            for kind in DAMAGE:
                copies = [damaged(data, kind, rng, start=min(1000, len(data) // 4)) for _ in range(args.copies)]
                shares.append(f"{sum(refused(copy, check) for copy in copies) / len(copies):.0%}")
            report.add(fmt, check, median(times) * 1000, *shares)
    report.facts.update(copies=args.copies, seed=args.seed, jpeg_bytes=len(frames["JPEG"]),
                        png_bytes=len(frames["PNG"]))
    report.notes.append(f"{args.copies} damaged copies per kind, seed {args.seed}; JPEG {len(frames['JPEG'])} B, "
                        f"PNG {len(frames['PNG'])} B (640x480)")
    report.finish()
    return report


if __name__ == "__main__":
    main()
