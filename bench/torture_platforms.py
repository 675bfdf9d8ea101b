"""The platforms of a torture run: each starts its emulator (or the local dataset), gives
the target table for the configuration, reads back what the platform holds, and records
every write the platform receives (its *write history*) without changing the emulator.

Write histories are recorded by wrapping the emulator instance's own entry points (its
``_route``, a GraphQL operation, the Nucleus job runner's ``apply_row``) — after the state
was changed, under the emulator's lock — so they also see writes whose reply was lost.
Each ``Write`` names the item key and what identifies the version that reached the
platform: syncd's version marker where the platform stores one, otherwise the content
(image hash and metadata as the platform keeps it).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCAL_ROOT = "synced"


def sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def as_strings(metadata: dict) -> dict[str, str]:
    """Metadata as string-only platforms keep it (Edge Impulse, RedBrick)."""
    return {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            for k, v in metadata.items()}


@dataclass(frozen=True)
class Write:
    """One write of one item that reached a platform."""

    key: str
    marker: str | None  # syncd's version marker, where the platform stores one
    content: str | None  # otherwise: what identifies the content (see Platform.content_of)
    at: float


@dataclass
class Remote:
    """What the platform holds for one item."""

    key: str
    marker: str | None
    image: bytes | None
    metadata: Any  # as the platform keeps it (compared with Platform.metadata_view)


@dataclass
class Platform:
    """Base: one target of the run. Subclasses implement start/remote/the hooks."""

    name: str
    keys: list[str]
    emulator: Any = None
    env: dict[str, str] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    marker_kind = "version"  # or "content" (no marker stored remotely)

    def start(self, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()

    def table(self, workers: int) -> dict[str, Any]:
        raise NotImplementedError

    def remote(self) -> dict[str, list[Remote]]:
        """``key -> remote items`` (exactly one each when all is well; unknown keys included)."""
        raise NotImplementedError

    def metadata_view(self, metadata: dict) -> Any:
        """The local metadata as this platform keeps it."""
        return metadata

    def content_of(self, image_sha: str | None, metadata: dict) -> str:
        return f"{image_sha}|{canonical(self.metadata_view(metadata))}"

    @property
    def faults(self):
        return None if self.emulator is None else self.emulator.faults

    def _record(self, key: str | None, marker: str | None, content: str | None = None) -> None:
        if key is not None:
            with self.lock:
                self.writes.append(Write(key, marker, content, time.monotonic()))

    def history(self) -> list[Write]:
        with self.lock:
            return list(self.writes)


class LocalPlatform(Platform):
    """The local dataset directory; its delivery log is the write history."""

    def start(self, workdir: Path) -> None:
        self.root = workdir / LOCAL_ROOT

    def table(self, workers: int) -> dict[str, Any]:
        return {"platform": "local", "path": LOCAL_ROOT, "log_deliveries": True, "fsync": False, "workers": workers}

    def remote(self) -> dict[str, list[Remote]]:
        out: dict[str, list[Remote]] = {}
        for record_path in self.root.rglob("*.json"):
            if record_path.name.startswith("."):
                continue
            record = json.loads(record_path.read_text())
            image = (record_path.parent / record["image"]).read_bytes()
            remote = Remote(record["key"], record["version"], image, record["metadata"])
            out.setdefault(record["key"], []).append(remote)
        return out

    def history(self) -> list[Write]:
        log = self.root / ".syncd-deliveries.jsonl"
        if not log.exists():
            return []
        return [Write(d["key"], d["version"], None, d["at"]) for d in map(json.loads, log.read_text().splitlines())]


class DataloopPlatform(Platform):
    ROOT = "/t/"

    def start(self, workdir: Path) -> None:
        from tests.emulators.dataloop import DataloopEmulator

        self.emulator = DataloopEmulator(seed=21).start()
        project = self.emulator.add_project("Torture")
        self.dataset = self.emulator.add_dataset(project["id"], "frames")
        self.env = {"DATALOOP_API_KEY": self.emulator.make_token()}
        original = self.emulator._route

        def route(request):
            with self.emulator.lock:  # the write and its record in one step
                response = original(request)
                self._observe(request, response)
            return response

        self.emulator._route = route

    def _key(self, filename: str) -> str | None:
        if not filename.startswith(self.ROOT):
            return None
        return os.path.splitext(filename[len(self.ROOT):])[0]

    def _observe(self, request, response) -> None:
        body = response.body
        if response.status != 200 or not isinstance(body, dict) or "filename" not in body:
            return
        writes = (request.method == "POST" and request.path.endswith("/items")
                  and response.headers.get("x-item-op") in ("created", "overwrite"))
        if writes or request.method == "PATCH":
            marker = ((body.get("metadata") or {}).get("user") or {}).get("syncd") or {}
            self._record(self._key(body["filename"]), marker.get("version"))

    def table(self, workers: int) -> dict[str, Any]:
        return {"platform": "dataloop", "project": "Torture", "dataset": "frames", "remote_root": self.ROOT,
                "base_url": f"{self.emulator.url}/api/v1", "timeout": 5.0, "workers": workers}

    def remote(self) -> dict[str, list[Remote]]:
        out: dict[str, list[Remote]] = {}
        for item in self.emulator.items_in(self.dataset["id"]):
            user = dict(item["metadata"].get("user") or {})
            marker = (user.pop("syncd", None) or {}).get("version")
            key = self._key(item["filename"]) or item["filename"]
            out.setdefault(key, []).append(Remote(key, marker, self.emulator.binaries.get(item["id"]), user))
        return out


class NucleusPlatform(Platform):
    marker_kind = "content"  # syncd stores nothing in Nucleus metadata

    def start(self, workdir: Path) -> None:
        from tests.emulators.nucleus import NucleusEmulator

        self.emulator = NucleusEmulator(seed=23).start()
        self.dataset = self.emulator.add_dataset("frames")
        self.env = {"NUCLEUS_API_KEY": self.emulator.api_key}
        state = self.emulator.state
        original = state.apply_row

        def apply_row(dataset_id, row):  # runs when a job runs, under the emulator's lock
            kind, error = original(dataset_id, row)
            if kind in ("new", "updated"):
                payload = row.payload
                content = self.content_of(sha(row.image), payload.get("metadata") or {})
                self._record(payload["reference_id"], None, content)
            return kind, error

        state.apply_row = apply_row

    def table(self, workers: int) -> dict[str, Any]:
        # A worker waits for its upload job (several polls), so Nucleus gets twice the workers.
        return {"platform": "nucleus", "dataset_id": self.dataset, "base_url": self.emulator.endpoint, "timeout": 5.0,
                "workers": 2 * workers, "job_poll_interval": 0.05, "job_timeout": 20.0}

    def remote(self) -> dict[str, list[Remote]]:
        return {item["reference_id"]: [Remote(item["reference_id"], None,
                                              self.emulator.image(self.dataset, item["reference_id"]),
                                              item["metadata"])]
                for item in self.emulator.items(self.dataset)}


class EdgeImpulsePlatform(Platform):
    def start(self, workdir: Path) -> None:
        from syncd.targets.edgeimpulse.payload import sample_name
        from tests.emulators.edgeimpulse import EdgeImpulseEmulator

        self.emulator = EdgeImpulseEmulator(seed=25).start()
        self.project = self.emulator.add_project("Torture")
        self.env = {"EI_API_KEY": self.emulator.make_key(self.project["id"])}
        self.by_name = {sample_name(key): key for key in self.keys}
        original = self.emulator._route

        def route(request):
            with self.emulator.lock:
                response = original(request)
                self._observe(request, response)
            return response

        self.emulator._route = route

    def _observe(self, request, response) -> None:
        from syncd.targets.edgeimpulse.payload import VERSION_KEY

        body = response.body
        if response.status != 200 or not isinstance(body, dict) or not body.get("success"):
            return
        sample_ids = []
        if request.method == "POST" and request.path.endswith("/files"):
            sample_ids = [f["sampleId"] for f in body.get("files", []) if f.get("success")]
        elif request.method == "POST" and request.path.endswith("/metadata"):
            sample_ids = [int(request.path.split("/")[-2])]
        for sample_id in sample_ids:
            sample = self.emulator.samples.get(sample_id)
            if sample is not None:
                marker = sample["metadata"].get(VERSION_KEY)
                content = None if marker else f"{sha(self.emulator.sample_data.get(sample_id))}|*"
                self._record(self.by_name.get(sample["filename"], sample["filename"]), marker, content)

    def metadata_view(self, metadata: dict) -> Any:
        return as_strings(metadata)

    def table(self, workers: int) -> dict[str, Any]:
        url = self.emulator.url
        return {"platform": "edgeimpulse", "project_id": self.project["id"], "ingestion_url": url,
                "api_url": f"{url}/v1", "label_source": "folder", "timeout": 5.0, "workers": workers}

    def remote(self) -> dict[str, list[Remote]]:
        from syncd.targets.edgeimpulse.payload import VERSION_KEY, user_metadata

        out: dict[str, list[Remote]] = {}
        for sample in self.emulator.samples_in(self.project["id"]):
            key = self.by_name.get(sample["filename"], sample["filename"])
            out.setdefault(key, []).append(Remote(key, sample["metadata"].get(VERSION_KEY),
                                                  self.emulator.sample_data.get(sample["id"]),
                                                  user_metadata(sample["metadata"])))
        return out


class RedBrickPlatform(Platform):
    def start(self, workdir: Path) -> None:
        from tests.emulators.redbrick import RedBrickEmulator

        self.emulator = RedBrickEmulator(seed=27).start()
        self.org = str(uuid.uuid4())
        self.project = self.emulator.add_project(self.org, name="Torture")["projectId"]
        self.env = {"REDBRICK_API_KEY": self.emulator.add_api_key(self.org)}
        for op in ("createDatapointSDK", "updateTaskItemsSDK"):
            self._hook(op)

    def _hook(self, op: str) -> None:
        from syncd.targets.redbrick.target import VERSION_KEY

        original = getattr(self.emulator, f"op_{op}")

        def handler(variables, key_org):  # GraphQL operations run under the emulator's lock
            result = original(variables, key_org)
            created = result.get("createDatapoint") or {}
            task = self.emulator.tasks.get(variables.get("taskId") or created.get("taskId"))
            if task is None and variables.get("dpId"):
                task = next((t for t in self.emulator.tasks.values() if t["dpId"] == variables["dpId"]), None)
            if task is not None:
                meta = json.loads(task["metaData"]) if task["metaData"] else {}
                self._record(task["name"], meta.get(VERSION_KEY))
            return result

        setattr(self.emulator, f"op_{op}", handler)

    def metadata_view(self, metadata: dict) -> Any:
        return as_strings(metadata)

    def table(self, workers: int) -> dict[str, Any]:
        return {"platform": "redbrick", "org_id": self.org, "project_id": self.project,
                "url": f"http://localhost:{self.emulator.port}", "timeout": 5.0, "workers": workers}

    def remote(self) -> dict[str, list[Remote]]:
        from syncd.targets.redbrick.target import VERSION_KEY

        out: dict[str, list[Remote]] = {}
        for task in self.emulator.tasks_in(self.org, self.project):
            meta = dict(task["meta"])
            marker = meta.pop(VERSION_KEY, None)
            blob = self.emulator.blobs.get(task["items"][0]) if len(task["items"]) == 1 else None
            out.setdefault(task["name"], []).append(Remote(task["name"], marker, blob and blob["data"], meta))
        return out


PLATFORMS: dict[str, type[Platform]] = {
    "local": LocalPlatform,
    "dataloop": DataloopPlatform,
    "nucleus": NucleusPlatform,
    "edgeimpulse": EdgeImpulsePlatform,
    "redbrick": RedBrickPlatform,
}
