"""The Dataloop client: the shared HttpClient with Dataloop's key (a JWT sent as a Bearer
token, checked for expiry before every request) and the dataset it writes to
(docs/platforms/dataloop.md)."""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from urllib.parse import quote

from syncd.errors import FatalTargetError
from syncd.targets.http import Credentials, HttpClient

EXPIRY_MARGIN = 60.0  # seconds; the official SDK refuses a token this close to its expiry


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (seconds since the epoch) of a JWT, read without checking the
    signature; None when ``token`` is not a JWT with a numeric ``exp``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(_b64url(parts[1]))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class DataloopClient(HttpClient):
    """Requests to one Dataloop dataset, named by id or by project and dataset names;
    used by the target and its annotation sync."""

    def __init__(self, target: str, *, key_env: str, base_url: str, timeout: float, dataset_id: str | None,
                 project: str | None, dataset: str | None, env=None):
        super().__init__(target, key_env=key_env, timeout=timeout, base_url=base_url, env=env)
        self._wanted = (dataset_id, project, dataset)
        self._dataset_lock = threading.Lock()
        self._dataset_id: str | None = None
        self.key_expiry: float = 0.0  # the key's ``exp``, once read

    def credentials(self, key: str) -> Credentials:
        """The key must be a JWT whose ``exp`` can be read (checked locally, before any request)."""
        exp = jwt_expiry(key)
        if exp is None:
            raise FatalTargetError(
                f"target {self.name!r}: the value of {self.key_env} is not a Dataloop API key "
                "(expected a JWT with an 'exp' claim); create one in the Dataloop console"
            )
        self.key_expiry = exp
        return Credentials(headers={"authorization": f"Bearer {key}"})

    def key(self) -> str:
        """The API key; a key whose ``exp`` is a minute away or past is refused before any
        request (Dataloop would refuse it; fail loudly instead)."""
        key = super().key()
        if self.key_expiry - time.time() <= EXPIRY_MARGIN:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.key_expiry))
            raise FatalTargetError(
                f"target {self.name!r}: the Dataloop API key in {self.key_env} expired "
                f"(or expires within a minute) at {when}; create a new API key and restart"
            )
        return key

    # -- the dataset ----------------------------------------------------------------------------
    def forget_dataset(self) -> None:
        """Resolve the dataset again on next use (``check()``: the moment to notice a rename)."""
        with self._dataset_lock:
            self._dataset_id = None

    @property
    def known_dataset_id(self) -> str | None:
        """The dataset id if it was resolved (no request)."""
        return self._dataset_id

    def dataset_id(self) -> str:
        """The dataset id, resolved once (by id, or project name + dataset name) and cached."""
        if self._dataset_id is not None:
            return self._dataset_id
        dataset_id, project, dataset = self._wanted
        if dataset_id:
            response = self.request("GET", f"/datasets/{quote(dataset_id, safe='')}", context="reading the dataset")
            if response.status_code in (400, 404):  # a malformed id is answered with 400
                raise FatalTargetError(f"target {self.name!r}: no Dataloop dataset with id {dataset_id!r}")
            self.raise_for_status(response, "reading the dataset")
            found = self.json(response, "reading the dataset")["id"]
        else:
            found = self._dataset_by_names(project, dataset)
        self._dataset_id = str(found)
        return self._dataset_id

    def _dataset_by_names(self, project: str, dataset: str) -> str:
        context = f"finding project {project!r}"
        response = self.request("GET", f"/projects/{quote(project, safe='')}/name", context=context)
        # The gate answers a missing project with an arbitrary 4xx (the SDK maps all to 404).
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 408, 425, 429):
            raise FatalTargetError(
                f"target {self.name!r}: no Dataloop project named {project!r} is visible to this API key")
        self.raise_for_status(response, context)
        projects = self.json(response, context)
        projects = projects if isinstance(projects, list) else [projects]
        if len(projects) != 1:
            raise FatalTargetError(
                f"target {self.name!r}: {len(projects)} Dataloop projects are named {project!r}; set dataset_id instead"
            )
        body = {"filter": {"$and": [{"name": dataset}]}, "page": 0, "pageSize": 1000, "resource": "datasets",
                "context": {"projects": [projects[0]["id"]]}}
        context = f"finding dataset {dataset!r} in project {project!r}"
        response = self.request("POST", "/datasets/query", context=context, check=True, json=body,
                                headers={"user_query": "true"})
        found = [d for d in self.json(response, context).get("items", []) if d.get("name") == dataset]
        if len(found) != 1:
            what = "no dataset" if not found else f"{len(found)} datasets"
            raise FatalTargetError(
                f"target {self.name!r}: {what} named {dataset!r} in Dataloop project {project!r}; "
                "create it in the Dataloop console or set dataset_id"
            )
        return found[0]["id"]
