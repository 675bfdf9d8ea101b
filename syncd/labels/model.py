"""The label schema: the pydantic models of syncd's labels, and their error messages.

Every label is a JSON object with a ``type``, a ``label`` (the class name) and optional
``attributes`` (name -> string, number, boolean or list of strings). Coordinates are pixels of
the image, origin top-left, x to the right, y down::

    {"type": "classification", "label": "daytime"}
    {"type": "box", "label": "car", "x": 10, "y": 20, "width": 100, "height": 50}
    {"type": "point", "label": "nose", "x": 5.5, "y": 7}
    {"type": "polygon", "label": "roof", "points": [[0, 0], [40, 0], [20, 30]]}
    {"type": "polyline", "label": "lane", "points": [[0, 100], [200, 90]]}
    {"type": "keypoints", "label": "person", "points": [{"name": "head", "x": 5, "y": 5},
        {"name": "hand", "visible": false}], "skeleton": [[0, 1]]}

``Label`` (one label, a union on ``type``) and ``LabelList`` are usable pydantic types.
``describe_error`` turns a pydantic error into one located sentence and ``LabelProblem`` carries
it; ``label_dict`` is the plain-dict form ``Upload.labels`` carries. Validating a sidecar's
labels against the image (ours or RedBrick's form, syncd.labels.redbrick) is
syncd.labels.validate; the JSON Schema of the sidecar is syncd.labels.sidecar. The schema is
documented for users in docs/labels-and-masks.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

LABEL_TYPES = ("classification", "box", "point", "polygon", "polyline", "keypoints")

Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _not_blank(name: str) -> str:
    if not name.strip():
        raise ValueError("the class name is empty")
    return name


ClassName = Annotated[str, Field(strict=True, min_length=1, max_length=256, description="the class name",
                                 examples=["car"]), AfterValidator(_not_blank)]
AttributeValue = Union[Annotated[str, Field(strict=True)], Annotated[bool, Field(strict=True)],
                       Annotated[int, Field(strict=True)], Coordinate, list[Annotated[str, Field(strict=True)]]]
Attributes = Annotated[dict[str, AttributeValue], Field(
    default_factory=dict,
    description="free attributes of the label: name -> string, number, boolean or list of strings")]
XY = tuple[Coordinate, Coordinate]


class _Label(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Classification(_Label):
    """The whole image belongs to a class."""

    type: Literal["classification"]
    label: ClassName
    attributes: Attributes


class Box(_Label):
    """An axis-aligned box: top-left corner and size, in pixels."""

    type: Literal["box"]
    label: ClassName
    x: Coordinate
    y: Coordinate
    width: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
    height: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
    attributes: Attributes


class Point(_Label):
    """One point, in pixels."""

    type: Literal["point"]
    label: ClassName
    x: Coordinate
    y: Coordinate
    attributes: Attributes


def _area2(points: list[tuple[float, float]]) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1])))


class Polygon(_Label):
    """A closed outline: at least 3 ``[x, y]`` points (the last joins the first)."""

    type: Literal["polygon"]
    label: ClassName
    points: list[XY] = Field(description="[[x, y], ...] in pixels, at least 3", json_schema_extra={"minItems": 3})
    attributes: Attributes

    @field_validator("points")
    @classmethod
    def _enough(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if len(points) < 3:
            raise ValueError(f"polygon needs at least 3 points, it has {len(points)}")
        if _area2(points) == 0:
            raise ValueError("polygon has no area: its points lie on one line")
        return points


class Polyline(_Label):
    """An open line through at least 2 ``[x, y]`` points."""

    type: Literal["polyline"]
    label: ClassName
    points: list[XY] = Field(description="[[x, y], ...] in pixels, at least 2", json_schema_extra={"minItems": 2})
    attributes: Attributes

    @field_validator("points")
    @classmethod
    def _enough(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if len(points) < 2:
            raise ValueError(f"polyline needs at least 2 points, it has {len(points)}")
        return points


class Keypoint(_Label):
    """One keypoint; an invisible one may leave out ``x`` and ``y``."""

    x: Coordinate | None = None
    y: Coordinate | None = None
    name: Annotated[str, Field(strict=True, min_length=1, max_length=256)] | None = None
    visible: Annotated[bool, Field(strict=True)] = True

    @model_validator(mode="after")
    def _placed(self) -> "Keypoint":
        if self.visible and (self.x is None or self.y is None):
            raise ValueError("a visible keypoint needs x and y (or set \"visible\": false)")
        return self


class Keypoints(_Label):
    """Named keypoints of one object, optionally joined by a skeleton of index pairs."""

    type: Literal["keypoints"]
    label: ClassName
    points: list[Keypoint] = Field(min_length=1)
    skeleton: list[tuple[Annotated[int, Field(strict=True, ge=0)], Annotated[int, Field(strict=True, ge=0)]]] = Field(
        default_factory=list, description="pairs of indices into points")
    attributes: Attributes

    @field_validator("points")
    @classmethod
    def _unique(cls, points: list[Keypoint]) -> list[Keypoint]:
        names = [p.name for p in points if p.name is not None]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"keypoint names must be unique; repeated: {', '.join(duplicates)}")
        return points

    @field_validator("skeleton")
    @classmethod
    def _pairs(cls, skeleton: list[tuple[int, int]], info: ValidationInfo) -> list[tuple[int, int]]:
        count = len(info.data.get("points") or [])
        for a, b in skeleton:
            if max(a, b) >= count:
                raise ValueError(f"pair [{a}, {b}] refers to a keypoint that does not exist (there are {count})")
        return skeleton


Label = Annotated[Union[Classification, Box, Point, Polygon, Polyline, Keypoints], Field(discriminator="type")]
LabelList = list[Label]
LABEL_ADAPTER: TypeAdapter = TypeAdapter(Label)


class LabelProblem(Exception):
    """One located problem with one label (``labels[2].points: ...``); callers collect them."""


def _field_path(where: str, loc: tuple) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def describe_error(exc: ValidationError, where: str, *, tagged: bool = True) -> str:
    """One short sentence for the first error of ``exc``, located under ``where``
    (``labels[2]``). With ``tagged`` the union tag pydantic puts first in ``loc`` is dropped."""
    first = exc.errors()[0]
    kind, loc, msg = first["type"], tuple(first["loc"]), first["msg"]
    if tagged and loc and isinstance(loc[0], str) and loc[0] in LABEL_TYPES:
        loc = loc[1:]
    path = _field_path(where, loc)
    if kind == "union_tag_not_found":
        return (f"{where}: a label needs a \"type\": one of {', '.join(LABEL_TYPES)} "
                "(or RedBrick's category/bbox2d/point/polygon/polyline form)")
    if kind == "union_tag_invalid":
        return f"{where}.type: unknown label type {first['ctx']['tag']!r}: use one of {', '.join(LABEL_TYPES)}"
    if kind == "model_attributes_type":
        return f"{path}: must be a JSON object"
    if kind == "missing":
        return f"{path}: field required"
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{path}: {msg}"


def label_dict(label: BaseModel) -> dict[str, Any]:
    """A validated label as the plain JSON-ready dict ``Upload.labels`` carries."""
    data = label.model_dump(mode="json")
    if "points" in data and isinstance(label, (Polygon, Polyline)):
        data["points"] = [list(p) for p in data["points"]]
    return data
