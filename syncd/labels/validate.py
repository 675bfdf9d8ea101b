"""How items are validated when read: labels against the image, masks against the class map.

``parse_labels`` validates a sidecar's ``labels`` list against the image size and returns
plain dicts in syncd's schema (syncd.labels.model; defaults filled in, numbers as floats),
the form ``Upload.labels`` carries. Label objects in RedBrick's format (no ``type``;
``category``, normalised ``bbox2d``, ``point``, ``polygon``/``polyline``, ``attributes`` as
``[{"name", "value"}]``) are accepted too and converted (syncd.labels.redbrick). Problems are
one ``ItemError`` naming the file, the label's position and the field, e.g.
``cam1/a.json: labels[2].points: polygon needs at least 3 points``.

``read_options`` builds the keyword arguments ``syncd.items.content.read_item`` takes, so the
coordinator (at settle time) and the upload workers (at send time) validate the same way:

- labels: ``validate_labels`` (our schema, or RedBrick's label objects, normalised to our
  schema in pixel coordinates);
- masks: ``syncd.labels.masks.check_mask`` (size, 8-bit, every colour/index in the class map);
  the class map travels with the upload as a plain dict.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from syncd.errors import ItemError
from syncd.labels.model import (
    LABEL_ADAPTER,
    Box,
    Keypoint,
    Keypoints,
    LabelProblem,
    Point,
    Polygon,
    Polyline,
    describe_error,
    label_dict,
)
from syncd.labels.redbrick import from_redbrick, looks_like_redbrick

MAX_REPORTED = 3  # problems spelled out in one error message
EPS = 1e-6  # pixels of slack for coordinates on the image's edge (float rounding)


def _check_x(value: float | None, where: str, width: int) -> None:
    if value is not None and not -EPS <= value <= width + EPS:
        raise LabelProblem(f"{where}: x={value:g} is outside the image (0..{width})")


def _check_y(value: float | None, where: str, height: int) -> None:
    if value is not None and not -EPS <= value <= height + EPS:
        raise LabelProblem(f"{where}: y={value:g} is outside the image (0..{height})")


def check_bounds(label: BaseModel, where: str, width: int, height: int) -> None:
    """Raise LabelProblem when a coordinate of ``label`` lies outside a ``width`` x ``height`` image."""
    if isinstance(label, (Box, Point)):
        _check_x(label.x, f"{where}.x", width)
        _check_y(label.y, f"{where}.y", height)
    if isinstance(label, Box):
        if label.x + label.width > width + EPS:
            raise LabelProblem(f"{where}.width: the box ends at x={label.x + label.width:g}, "
                               f"past the image's width {width}")
        if label.y + label.height > height + EPS:
            raise LabelProblem(f"{where}.height: the box ends at y={label.y + label.height:g}, "
                           f"past the image's height {height}")
    if isinstance(label, (Polygon, Polyline, Keypoints)):
        for i, point in enumerate(label.points):
            x, y = (point.x, point.y) if isinstance(point, Keypoint) else point
            _check_x(x, f"{where}.points[{i}]", width)
            _check_y(y, f"{where}.points[{i}]", height)


def parse_label(raw: Any, *, width: int, height: int, where: str) -> dict[str, Any]:
    """Validate one label (ours or RedBrick's form); raise LabelProblem with a located message."""
    try:
        if looks_like_redbrick(raw):
            label = from_redbrick(raw, width=width, height=height, where=where)
        else:
            label = LABEL_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise LabelProblem(describe_error(exc, where)) from None
    check_bounds(label, where, width, height)
    return label_dict(label)


def parse_labels(raw: Any, *, width: int, height: int, source: str) -> list[dict[str, Any]]:
    """Validate a sidecar's ``labels`` against a ``width`` x ``height`` image.

    Returns the labels as plain dicts in syncd's schema (RedBrick objects converted). Raises
    one ``ItemError`` prefixed with ``source`` that spells out up to three problems.
    """
    if not isinstance(raw, list):
        raise ItemError(f"{source}: labels: must be a list of label objects, not {type(raw).__name__}")
    out, problems = [], []
    for i, item in enumerate(raw):
        try:
            out.append(parse_label(item, width=width, height=height, where=f"labels[{i}]"))
        except LabelProblem as problem:
            problems.append(str(problem))
    if problems:
        more = len(problems) - MAX_REPORTED
        raise ItemError(f"{source}: " + "; ".join(problems[:MAX_REPORTED])
                        + (f" (and {more} more)" if more > 0 else ""))
    return out


def validate_labels(labels: list, width: int, height: int, name: str) -> list[dict[str, Any]]:
    """The item-validation hook (``syncd.items.content.read_item(validate_labels=...)``)."""
    return parse_labels(labels, width=width, height=height, source=name)


def read_options(max_pixels: int, image_check: str = "structure") -> dict[str, Any]:
    return {"max_pixels": max_pixels, "image_check": image_check, "validate_labels": validate_labels,
            "validate_mask": _check_mask}


def _check_mask(*args, **kwargs):
    """``syncd.labels.masks.check_mask``, imported on first use: numpy (a tenth of a second
    and a pool of BLAS threads at import) is only needed once an item has a mask."""
    from syncd.labels.masks import check_mask

    return check_mask(*args, **kwargs)
