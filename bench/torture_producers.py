"""The producers of a torture run and the oracle of what they wrote.

Items are written in every way producers write them: plain writes, slow chunked writes
(pauses shorter than settle_seconds, as a camera streaming a file), copies (``cp``: the
file grows in place), atomic renames from a staging directory (``mv``), editor saves
through a temporary file (``.name.swp``, ``name.tmp``, ``.goutputstream-*``) and a rename,
and bursts of many files at once; sidecars arrive before or after their image; sidecars,
masks and images are edited again later, in place or atomically, often while an earlier
version is being delivered.

The ``Oracle`` records, after every completed file operation, the item's complete state
(its version as syncd computes it, image, metadata) in order. A state that does not
decode (a file half-written) is not a state: the daemon must never deliver it.
"""

from __future__ import annotations

import heapq
import io
import json
import os
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from syncd.errors import ItemError
from syncd.items.content import read_item
from syncd.items.convention import IgnoreRules, probe_item
from syncd.labels.validate import read_options

CLASS_MAP = {"car": [255, 0, 0], "person": [0, 0, 255]}
CREATE_METHODS = ("plain", "slow", "copy", "rename", "editor")
EDIT_KINDS = ("sidecar_editor", "sidecar_inplace", "mask", "image")
TEMP_NAMES = (".{name}.swp", "{name}.tmp", ".goutputstream-{token}", "{name}.part", ".{name}.XXXXXX")
PER_DIRECTORY = 60


def image_data(fmt: str, width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def mask_data(width: int, height: int, split: int) -> bytes:
    """Background left of ``split``, a car right of it, a person in the top rows."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, split % width:] = CLASS_MAP["car"]
    pixels[: 1 + split % 3, :] = CLASS_MAP["person"]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ItemPlan:
    key: str
    fmt: str
    ext: str
    width: int
    height: int
    method: str  # one of CREATE_METHODS, or "burst"
    sidecar: bool
    sidecar_first: bool
    mask: bool
    start: float  # seconds after the run started
    edits: list[tuple[float, str]]  # (delay after the previous step, one of EDIT_KINDS)
    seed: int
    rev: int = 0  # bumped by every change, so every state of an item is distinct

    @property
    def directory(self) -> str:
        return self.key.rsplit("/", 1)[0]

    @property
    def stem(self) -> str:
        return self.key.rsplit("/", 1)[1]


def make_plan(items: int, duration: float, seed: int, *, bursts: int = 2, burst_share: float = 0.2) -> list[ItemPlan]:
    """A seeded plan: who writes what, how and when (starts within the first 60 % of the run).

    ``burst_share`` of the items arrive in ``bursts`` bursts (all of a burst at one moment).
    """
    rng = random.Random(seed)
    burst_at = sorted(rng.uniform(0.05, 0.5) * duration for _ in range(bursts))
    plans = []
    for n in range(items):
        in_burst = bursts and (n * burst_share) % 1 + burst_share > 1 - 1e-9  # every 1/share-th item
        fmt, ext = rng.choice([("PNG", "png")] * 3 + [("JPEG", "jpg"), ("JPEG", "jpeg")])
        # Edits come late (the item was delivered long ago: an update) or right away (often
        # while the previous version is in flight); a tenth of the items are edited in rapid
        # succession, like a labeller saving again and again.
        hot = rng.random() < 0.1
        edits = [(rng.uniform(0.05, 0.6) if hot or rng.random() < 0.5 else rng.uniform(0.6, 0.35 * duration),
                  rng.choice(EDIT_KINDS))
                 for _ in range(rng.randint(4, 8) if hot else rng.choice([0, 0, 1, 1, 2, 3]))]
        has_mask = rng.random() < 0.4
        plans.append(ItemPlan(
            key=f"d{n // PER_DIRECTORY:02d}/i{n:05d}", fmt=fmt, ext=ext, width=rng.randint(24, 64),
            height=rng.randint(16, 48), method="burst" if in_burst else rng.choice(CREATE_METHODS),
            sidecar=has_mask or rng.random() < 0.8, sidecar_first=rng.random() < 0.3, mask=has_mask,
            start=burst_at[n % bursts] if in_burst else rng.uniform(0, 0.6 * duration),
            edits=[e for e in edits if e[1] != "mask" or has_mask], seed=seed * 1_000_003 + n * 101,
        ))
    return plans


@dataclass
class State:
    """One complete state of an item, in the order the producers made them."""

    version: str
    image: bytes
    image_sha: str
    metadata: dict


class Oracle:
    """What the producers wrote: ``key -> [State, ...]`` in order (thread-safe)."""

    def __init__(self, root: Path, max_pixels: int):
        self.root = root
        self.rules = IgnoreRules()
        self.options = read_options(max_pixels)
        self.states: dict[str, list[State]] = {}
        self.lock = threading.Lock()

    def record(self, plan: ItemPlan) -> None:
        files = probe_item(self.root, self.root / plan.directory, plan.stem, self.rules, "")
        if files is None:
            return  # no image yet: no item
        try:
            content = read_item(files, **self.options)
        except ItemError:
            return  # half-written: not a state
        with self.lock:
            states = self.states.setdefault(plan.key, [])
            if not states or states[-1].version != content.version:
                states.append(State(content.version, content.image, content.image_sha256, content.sidecar.metadata))

    def final(self) -> dict[str, State]:
        with self.lock:
            return {key: states[-1] for key, states in self.states.items()}


@dataclass
class Producers:
    """Runs a plan against ``root``: one scheduler thread, ``threads`` writer threads."""

    root: Path
    staging: Path
    plans: list[ItemPlan]
    oracle: Oracle
    threads: int = 4
    settle: float = 0.5
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        (self.root / "class_map.json").write_text(json.dumps(CLASS_MAP))
        self.done = threading.Event()
        self._lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    # -- how files are written ----------------------------------------------------------------
    def _write(self, path: Path, data: bytes, how: str, rng: random.Random) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if how in ("plain", "burst"):
            path.write_bytes(data)
        elif how == "slow":  # a few chunks, pauses well below settle_seconds
            with open(path, "wb") as handle:
                step = max(1, len(data) // 4)
                for start in range(0, len(data), step):
                    handle.write(data[start:start + step])
                    handle.flush()
                    time.sleep(rng.uniform(0.02, self.settle / 5))
        elif how == "copy":  # cp: the destination grows in place
            source = self.staging / f"{threading.get_ident()}-{path.name}"
            source.write_bytes(data)
            shutil.copyfile(source, path)
            source.unlink()
        elif how == "rename":  # mv from a staging directory on the same filesystem
            source = self.staging / f"{threading.get_ident()}-{path.name}"
            source.write_bytes(data)
            os.rename(source, path)
        elif how == "editor":  # a temporary file the daemon ignores, then a rename
            template = rng.choice(TEMP_NAMES)
            temp = path.with_name(template.format(name=path.name, token=f"{rng.randrange(16**6):06X}"))
            temp.write_bytes(data)
            os.replace(temp, path)
        else:
            raise ValueError(how)
        self._count(f"write:{how}")

    def _sidecar(self, plan: ItemPlan) -> bytes:
        metadata = {"key": plan.key, "rev": plan.rev, "site": "ABCD"[plan.rev % 4], "n": [plan.rev, plan.seed % 97]}
        return (json.dumps({"metadata": metadata}, indent=1) + "\n").encode()

    def _paths(self, plan: ItemPlan) -> tuple[Path, Path, Path]:
        base = self.root / plan.directory
        return base / f"{plan.stem}.{plan.ext}", base / f"{plan.stem}.json", base / f"{plan.stem}.mask.png"

    # -- steps ----------------------------------------------------------------------------------
    def _create(self, plan: ItemPlan, rng: random.Random) -> None:
        image, sidecar, mask = self._paths(plan)
        how = plan.method
        companions = []
        if plan.sidecar:
            companions.append((sidecar, self._sidecar(plan)))
        if plan.mask:
            companions.append((mask, mask_data(plan.width, plan.height, plan.seed)))
        if plan.sidecar_first:
            for path, data in companions:
                self._write(path, data, rng.choice(("plain", "editor")), rng)
                self.oracle.record(plan)
        self._write(image, image_data(plan.fmt, plan.width, plan.height, plan.seed), how, rng)
        self.oracle.record(plan)
        if not plan.sidecar_first:
            for path, data in companions:
                self._write(path, data, "plain" if how == "burst" else rng.choice(("plain", "editor", "rename")), rng)
                self.oracle.record(plan)

    def _edit(self, plan: ItemPlan, kind: str, rng: random.Random) -> None:
        image, sidecar, mask = self._paths(plan)
        plan.rev += 1
        if kind == "sidecar_editor":
            self._write(sidecar, self._sidecar(plan), "editor", rng)
        elif kind == "sidecar_inplace":  # truncate and rewrite: an empty file for a moment
            self._write(sidecar, self._sidecar(plan), "plain", rng)
        elif kind == "mask":
            data = mask_data(plan.width, plan.height, plan.seed + plan.rev)
            self._write(mask, data, rng.choice(("plain", "editor")), rng)
        elif kind == "image":
            data = image_data(plan.fmt, plan.width, plan.height, plan.seed + 7919 * plan.rev)
            self._write(image, data, rng.choice(("editor", "rename", "copy", "slow")), rng)
        self._count(f"edit:{kind}")
        self.oracle.record(plan)

    # -- the schedule --------------------------------------------------------------------------
    def run(self, started: float) -> None:
        """Execute the plan (blocking); each item's steps run in order, items in parallel."""
        queue: list[tuple[float, int, int]] = [(started + p.start, n, 0) for n, p in enumerate(self.plans)]
        heapq.heapify(queue)
        cond = threading.Condition()
        pending = len(self.plans)

        def step(n: int, index: int) -> None:
            nonlocal pending
            plan = self.plans[n]
            rng = random.Random(plan.seed + index)
            try:
                if index == 0:
                    self._create(plan, rng)
                else:
                    self._edit(plan, plan.edits[index - 1][1], rng)
            except Exception as exc:  # a producer bug must be reported, not hang the run
                self.errors.append(f"{plan.key} step {index}: {type(exc).__name__}: {exc}")
            with cond:
                if index < len(plan.edits):
                    heapq.heappush(queue, (time.monotonic() + plan.edits[index][0], n, index + 1))
                else:
                    pending -= 1
                cond.notify()

        with ThreadPoolExecutor(self.threads, thread_name_prefix="producer") as pool:
            with cond:
                while pending:
                    if queue and queue[0][0] <= time.monotonic():
                        _, n, index = heapq.heappop(queue)
                        pool.submit(step, n, index)
                        continue
                    cond.wait(timeout=0.05 if not queue else max(0.0, min(0.05, queue[0][0] - time.monotonic())))
        self.done.set()
