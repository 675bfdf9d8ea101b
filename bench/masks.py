"""Benchmark: validate and convert large segmentation masks (4K, 20 classes).

Run from the repository root::

    .venv/bin/python bench/masks.py            # 3840x2160, 20 classes, best of 5
    .venv/bin/python bench/masks.py --size 1920x1080 --classes 8 --repeat 3

The mask is a deterministic Voronoi partition (20 classes over 60 cells, plus black
background), saved as an RGB PNG like RedBrick exports it. Every step is timed on the same
file and reported in milliseconds and milliseconds per megapixel, next to pillow's own
decode of that file (``Image.open(...).load()`` + ``numpy.asarray``), the floor any reader
pays. The figures go into docs/benchmarks.md ("Masks").
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncd.labels.classmap import parse_class_map  # noqa: E402
from syncd.labels.masks import binary_rgba_pngs, index_png, nifti_instances, read_mask  # noqa: E402
from syncd.labels.regions import region_boxes  # noqa: E402


def make_mask(width: int, height: int, classes: int, seed: int = 0) -> tuple[bytes, dict]:
    """An RGB mask PNG of Voronoi cells coloured by class, and its class map."""
    rng = np.random.default_rng(seed)
    cells = classes * 3
    centres = rng.uniform(0, 1, size=(cells, 2)) * (width, height)
    cell_class = np.arange(cells) % (classes + 1)  # class 0 = black background
    colours = rng.integers(1, 256, size=(classes + 1, 3), dtype=np.uint8)
    colours[0] = 0
    nearest = np.zeros((height, width), dtype=np.int32)
    best = np.full((height, width), np.inf, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    for i, (cx, cy) in enumerate(centres):
        distance = (xs - cx) ** 2 + (ys - cy) ** 2
        closer = distance < best
        best[closer] = distance[closer]
        nearest[closer] = i
    pixels = colours[cell_class[nearest]]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    class_map = {f"class_{k:02d}": [int(c) for c in colours[k]] for k in range(1, classes + 1)}
    return buffer.getvalue(), class_map


def best_of(repeat: int, func):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="3840x2160")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    data, raw_map = make_mask(width, height, args.classes)
    class_map = parse_class_map(raw_map, source="class_map.json")
    megapixels = width * height / 1e6

    def pillow_decode():
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image)

    steps = [("pillow decode (reference)", pillow_decode),
             ("read_mask: decode + validate + RGB -> class index",
              lambda: read_mask(data, class_map, width=width, height=height, source="bench.mask.png"))]
    _, mask = best_of(1, steps[1][1])
    steps += [("index_png (Nucleus)", lambda: index_png(mask)),
              ("region_boxes (Edge Impulse)", lambda: region_boxes(mask)),
              ("binary_rgba_pngs (Dataloop, one per class)", lambda: binary_rgba_pngs(mask)),
              ("nifti_instances (RedBrick)", lambda: nifti_instances(mask))]
    print(f"mask {width}x{height} ({megapixels:.1f} MP), {args.classes} classes, {len(mask.present)} present, "
          f"PNG {len(data) / 1e6:.2f} MB; best of {args.repeat}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, pillow {Image.__version__}, "
          f"{platform.machine()}, {platform.processor() or platform.system()}")
    print("| step | ms | ms/MP |\n| --- | ---: | ---: |")
    for name, func in steps:
        seconds, result = best_of(args.repeat, func)
        extra = f" ({len(result)} boxes)" if name.startswith("region") else ""
        print(f"| {name}{extra} | {seconds * 1000:.0f} | {seconds * 1000 / megapixels:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
