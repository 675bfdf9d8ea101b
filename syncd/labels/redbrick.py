"""RedBrick's label objects in a sidecar -> syncd's labels (syncd.labels.model).

RedBrick's label objects (its import format and what its exports contain) carry no
``type``; the geometry key says what they are and coordinates are normalised to 0..1::

    {"category": "car", "attributes": [{"name": "occluded", "value": true}],
     "bbox2d": {"xnorm": 0.1, "ynorm": 0.2, "wnorm": 0.3, "hnorm": 0.4}}
    {"category": "nose", "point": {"xnorm": 0.5, "ynorm": 0.5}}
    {"category": "roof", "polygon": [{"xnorm": 0, "ynorm": 0}, ...]}      # and "polyline"
    {"category": "daytime", "seriesclassify": true}                       # a classification

``category`` may be a string, RedBrick's legacy ``[["object", "car"]]`` (-> ``car``) or a
hierarchy ``["vehicle", "car"]`` (-> ``vehicle::car``, RedBrick's own separator).
``labelid``, ``classid``, ``linkid``, ``readonly``, ``color`` and ``volumeindex: 0`` are
accepted and dropped. Geometry syncd cannot hold (ellipse, cuboid, dicom, pixel, 3D) is an
error that says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from syncd.labels.model import (
    AttributeValue,
    Box,
    Classification,
    ClassName,
    LabelProblem,
    Point,
    Polygon,
    Polyline,
    describe_error,
)

GEOMETRY = ("bbox2d", "point", "polygon", "polyline")
CLASSIFY_FLAGS = ("studyclassify", "seriesclassify", "tasklevelclassify", "multiclassify", "classify")
UNSUPPORTED = ("ellipse", "cuboid", "dicom", "pixel", "point3d", "length3d", "angle3d", "bbox3d",
               "instanceclassify", "rotatedbbox")
SLACK = 1e-9



def _unit_range(value: float) -> float:
    if not -SLACK <= value <= 1 + SLACK:
        raise ValueError(f"{value:g} is not a normalised coordinate: RedBrick coordinates are 0..1")
    return value


def _size_range(value: float) -> float:
    if not 0 < value <= 1 + SLACK:
        raise ValueError(f"{value:g} is not a normalised size: RedBrick sizes are above 0 and at most 1")
    return value


Norm = Annotated[float, Field(strict=True, allow_inf_nan=False), AfterValidator(_unit_range)]
NormSize = Annotated[float, Field(strict=True, allow_inf_nan=False), AfterValidator(_size_range)]


class _RB(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NormPoint(_RB):
    xnorm: Norm
    ynorm: Norm


class NormBox(_RB):
    xnorm: Norm
    ynorm: Norm
    wnorm: NormSize
    hnorm: NormSize

    @model_validator(mode="after")
    def _inside(self) -> "NormBox":
        if self.xnorm + self.wnorm > 1 + SLACK:
            raise ValueError(f"xnorm + wnorm = {self.xnorm + self.wnorm:g} is past the image's right edge (1)")
        if self.ynorm + self.hnorm > 1 + SLACK:
            raise ValueError(f"ynorm + hnorm = {self.ynorm + self.hnorm:g} is past the image's bottom edge (1)")
        return self


class NameValue(_RB):
    name: Annotated[str, Field(strict=True, min_length=1)]
    value: AttributeValue


class RedBrickLabel(_RB):
    """A RedBrick label object (normalised coordinates); see the module docstring."""

    model_config = ConfigDict(extra="forbid", title="RedBrickLabel")

    category: Union[ClassName, list[ClassName], list[list[ClassName]]]
    attributes: Union[list[NameValue], dict[str, AttributeValue]] = Field(default_factory=list)
    bbox2d: NormBox | None = None
    point: NormPoint | None = None
    polygon: list[NormPoint] | None = None
    polyline: list[NormPoint] | None = None
    studyclassify: bool | None = None
    seriesclassify: bool | None = None
    tasklevelclassify: bool | None = None
    multiclassify: bool | None = None
    classify: bool | None = None
    labelid: str | None = None
    classid: int | None = None
    linkid: str | None = None
    readonly: bool | None = None
    color: str | None = None
    volumeindex: Annotated[int, Field(ge=0, le=0, description="2D images have one volume: 0")] | None = None

    @model_validator(mode="after")
    def _one_geometry(self) -> "RedBrickLabel":
        present = [key for key in GEOMETRY if getattr(self, key) is not None]
        if len(present) > 1:
            raise ValueError(f"one geometry per label, this one has {' and '.join(present)}")
        return self


def looks_like_redbrick(raw: Any) -> bool:
    """A dict without ``type`` that has a RedBrick key (category or a geometry)."""
    return isinstance(raw, dict) and "type" not in raw and any(
        key in raw for key in ("category", *GEOMETRY, *CLASSIFY_FLAGS, *UNSUPPORTED))


def category_name(category: Any) -> str:
    """RedBrick's category forms -> one class name (``[["object", "car"]]`` -> ``car``)."""
    if isinstance(category, str):
        return category
    if category and isinstance(category[0], list):
        path = category[0]
        return "::".join(path[1:]) if len(path) > 1 else path[0]
    return "::".join(category)


def _attributes(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return dict(raw)
    out: dict[str, Any] = {}
    for i, pair in enumerate(raw):
        if pair.name in out:
            raise LabelProblem(f"{where}.attributes[{i}].name: attribute {pair.name!r} is given twice")
        out[pair.name] = pair.value
    return out


def from_redbrick(raw: dict[str, Any], *, width: int, height: int, where: str) -> BaseModel:
    """Convert one RedBrick label object to syncd's label model, in pixels of a ``width`` x
    ``height`` image. Raises pydantic's ValidationError (located by the caller) or LabelProblem."""
    for key in UNSUPPORTED:
        if key in raw:
            raise LabelProblem(f"{where}.{key}: RedBrick {key!r} labels are not supported: use bbox2d, point, polygon, "
                           "polyline, a classification or a mask")
    try:
        label = RedBrickLabel.model_validate(raw)
    except ValidationError as exc:
        raise LabelProblem(describe_error(exc, where, tagged=False)) from None
    common = {"label": category_name(label.category), "attributes": _attributes(label.attributes, where)}
    if not common["label"].strip():
        raise LabelProblem(f"{where}.category: the category is empty")

    def px(p: NormPoint) -> tuple[float, float]:
        return _unit(p.xnorm) * width, _unit(p.ynorm) * height

    try:
        if label.bbox2d is not None:
            b = label.bbox2d
            return Box(type="box", x=_unit(b.xnorm) * width, y=_unit(b.ynorm) * height,
                       width=min(b.wnorm, 1 - _unit(b.xnorm)) * width, height=min(b.hnorm, 1 - _unit(b.ynorm)) * height,
                       **common)
        if label.point is not None:
            return Point(type="point", x=px(label.point)[0], y=px(label.point)[1], **common)
        if label.polygon is not None:
            return Polygon(type="polygon", points=[px(p) for p in label.polygon], **common)
        if label.polyline is not None:
            return Polyline(type="polyline", points=[px(p) for p in label.polyline], **common)
        return Classification(type="classification", **common)
    except ValidationError as exc:
        # Located at RedBrick's key: "points" of our model is "polygon"/"polyline" there.
        geometry = next((key for key in GEOMETRY if getattr(label, key) is not None), "category")
        first = exc.errors()[0]
        raise LabelProblem(f"{where}.{geometry}: {first['msg'].removeprefix('Value error, ')}") from None


def _unit(value: float) -> float:
    """Clamp float noise just outside 0..1 (e.g. 1.0000000001 from an export) onto the edge."""
    return min(max(value, 0.0), 1.0)
