"""``class_map.json``: which mask colour or index means which class.

Two forms, told apart by their values (one form per file)::

    {"road": [128, 64, 128], "car": [0, 0, 142]}   # RGB: RedBrick's export format
    {"road": 1, "car": 2}                          # index: single-channel masks, 0..255

Rules (each broken rule is an ``ItemError`` naming the file and the class):

- keys are class names (non-empty text); values are all ``[r, g, b]`` with 0..255 integers,
  or all integers 0..255;
- no two classes share a colour or an index;
- black ``[0, 0, 0]`` (RGB form) and ``0`` (index form) are *background* unless the map
  gives them a class: RedBrick's coloured exports leave unlabelled pixels black without a
  class-map entry, so such pixels are "no class", not an error.

``find_class_map(item_dir, root)`` finds the nearest file from the item's directory up to the
watched root. ``ClassMap.to_json()`` is the plain-dict form carried in ``Upload.class_map``;
``ClassMap.from_json`` reads it back (converters call it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from syncd.errors import ItemError

CLASS_MAP_NAME = "class_map.json"
# The second file of a RedBrick export folder (syncd.items.redbrick_export); named here so
# that both reserved file names are defined once.
DATAPOINT_MAP_NAME = "datapoint_map.json"
MAX_CLASS_MAP_BYTES = 1024 * 1024
# Class indices are stored in uint8 masks: in the RGB form index 0 is background and 255 marks
# unknown colours while converting (syncd.labels.masks), which leaves 254 classes.
MAX_RGB_CLASSES = 254

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class ClassMap:
    """A validated class map. ``classes`` keeps the file's order: ``(name, value)`` where value
    is an RGB tuple (``kind == "rgb"``) or an int (``kind == "index"``)."""

    kind: Literal["rgb", "index"]
    classes: tuple[tuple[str, Colour | int], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.classes]

    def to_json(self) -> dict[str, Any]:
        """The file form: ``{name: [r, g, b]}`` or ``{name: index}`` (JSON-serialisable)."""
        return {name: (list(value) if isinstance(value, tuple) else value) for name, value in self.classes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, source: str = CLASS_MAP_NAME) -> "ClassMap":
        return parse_class_map(data, source=source)

    def index_names(self) -> dict[int, str]:
        """Class index (the value in a class-index array, see syncd.labels.masks) -> class name.

        Index form: the map's own indices. RGB form: the class's position in the file + 1, so
        that 0 stays "background" (black without an entry).
        """
        if self.kind == "index":
            return {int(value): name for name, value in self.classes}  # type: ignore[arg-type]
        return {position + 1: name for position, (name, _) in enumerate(self.classes)}

    def index_colours(self) -> dict[int, Colour]:
        """Class index -> RGB colour (RGB form only; empty for the index form)."""
        if self.kind != "rgb":
            return {}
        return {position + 1: value for position, (_, value) in enumerate(self.classes)}  # type: ignore[misc]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_class_map(data: bytes | Mapping[str, Any], *, source: str) -> ClassMap:
    """Validate class-map bytes (the file) or an already-decoded mapping.

    ``source`` is the file name as the user knows it; it prefixes every error.
    """
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_CLASS_MAP_BYTES:
            raise ItemError(f"{source}: the class map is larger than 1 MiB")
        try:
            raw = json.loads(bytes(data).decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise ItemError(f"{source}: not UTF-8 text: save the class map as UTF-8 JSON") from None
        except json.JSONDecodeError as exc:
            raise ItemError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise ItemError(f"{source}: JSON is nested too deeply") from None
    else:
        raw = data
    if not isinstance(raw, Mapping):
        raise ItemError(f"{source}: a class map is a JSON object of class name -> [r, g, b] or index, "
                        f"not {type(raw).__name__}")
    if not raw:
        raise ItemError(f"{source}: the class map is empty: map each class name to [r, g, b] or an index")
    rgb = [name for name, value in raw.items() if isinstance(value, list)]
    kind: Literal["rgb", "index"] = "rgb" if rgb else "index"
    classes: list[tuple[str, Colour | int]] = []
    seen: dict[Colour | int, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise ItemError(f"{source}: a class name is empty: give every class a name")
        if kind == "rgb":
            if not (isinstance(value, list) and len(value) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in value)):
                raise ItemError(
                    f"{source}: class {name!r}: {json.dumps(value)} is not an RGB colour: write [r, g, b] with "
                    "integers 0..255 (one form per file: all colours or all indices)"
                )
            key: Colour | int = (value[0], value[1], value[2])
        else:
            if not (_is_int(value) and 0 <= value <= 255):
                raise ItemError(f"{source}: class {name!r}: {json.dumps(value)} is not a class index: write an "
                                "integer 0..255 (masks are 8-bit)")
            key = value
        if key in seen:
            shown = list(key) if isinstance(key, tuple) else key
            raise ItemError(f"{source}: classes {seen[key]!r} and {name!r} share {shown}: give each class its own")
        seen[key] = name
        classes.append((name, key))
    if kind == "rgb" and len(classes) > MAX_RGB_CLASSES:
        raise ItemError(f"{source}: {len(classes)} classes; at most {MAX_RGB_CLASSES} are supported")
    return ClassMap(kind=kind, classes=tuple(classes))


def load_class_map(path: Path, *, source: str | None = None) -> ClassMap:
    """Read and validate ``path``; an unreadable file is an ItemError naming it."""
    name = source or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ItemError(f"{name}: the class map vanished; it is read again on the next scan") from None
    except PermissionError:
        raise ItemError(f"{name}: permission denied: make it readable by the syncd user") from None
    except IsADirectoryError:
        raise ItemError(f"{name}: is a directory, not a class map file") from None
    return parse_class_map(data, source=name)


def find_class_map(item_dir: Path, root: Path) -> Path | None:
    """The nearest ``class_map.json`` in ``item_dir`` or a parent, up to ``root`` inclusive.

    Never looks above ``root`` (a folder outside the watched tree is not the user's intent),
    and returns None when ``item_dir`` is not inside ``root``.
    """
    current = Path(item_dir)
    root = Path(root)
    if current != root and root not in current.parents:
        return None
    while True:
        candidate = current / CLASS_MAP_NAME
        if candidate.is_file():
            return candidate
        if current == root:
            return None
        current = current.parent
