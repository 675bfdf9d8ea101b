"""The Scale Nucleus client: the shared HttpClient with Nucleus' authentication and routes.

Authentication is what the official ``scale-nucleus`` SDK sends: HTTP Basic with the API key
as user name and an empty password (see docs/platforms/nucleus.md). Both the key and its
Basic header form are masked in messages: a server echoing headers must not leak either.
Routes are relative to ``base_url`` (``dataset/{id}/append``, ``job/{id}``...).

A 404 is classified by route (issue 10, item 16): only a dataset-level 404 means "the
dataset does not exist" and pauses the target. A 404 on a route below the dataset
(``add_taxonomy``, ``annotate``, ``refloc``, ``append``...) is checked with one
``GET dataset/{id}/is_scene``: if the dataset answers, the 404 is about that request only.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.targets.http import Credentials, HttpClient


class NucleusClient(HttpClient):
    """Requests to one Nucleus dataset; used by the target, its job waiter and its
    annotation writer."""

    def __init__(self, target: str, *, key_env: str, base_url: str, dataset_id: str, timeout: float, env=None):
        super().__init__(target, key_env=key_env, timeout=timeout, base_url=base_url.rstrip("/") + "/", env=env)
        self.dataset_id = dataset_id

    def credentials(self, key: str) -> Credentials:
        return Credentials(auth=(key, ""), secrets=(key, base64.b64encode(f"{key}:".encode()).decode()))

    @property
    def dataset_route(self) -> str:
        """``dataset/{id}``, the prefix of every route about the dataset."""
        return f"dataset/{quote(self.dataset_id, safe='')}"

    def missing_dataset(self) -> FatalTargetError:
        """The error for a dataset Nucleus does not know (or this key cannot see)."""
        return FatalTargetError(
            f"target {self.name!r}: Nucleus dataset {self.dataset_id!r} does not exist or this API key "
            "cannot see it; check dataset_id (NucleusClient.list_datasets() shows the ids) or create the dataset"
        )

    def dataset_exists(self, context: str) -> bool:
        """One cheap dataset-level read (``GET dataset/{id}/is_scene``, what ``check`` uses):
        False when Nucleus answers 404 (or 400: not a dataset id). Raises TransientError or
        FatalTargetError (bad key) when it cannot tell."""
        response = self.request("GET", f"{self.dataset_route}/is_scene", context=context)
        if response.status_code in (400, 404):
            return False
        self.raise_for_status(response, context)
        return True

    def not_found(self, response, context: str) -> PermanentError:
        """For a 404 on a route below the dataset: raise ``missing_dataset()`` when the
        dataset itself is gone; otherwise return the PermanentError describing the refusal
        of this one request (the caller decides what it means)."""
        if not self.dataset_exists(f"{context} (after a 404: does the dataset exist?)"):
            raise self.missing_dataset()
        return PermanentError(f"{self.context(context)}: {self.describe(response)}")

    def get_json(self, route: str, context: str) -> Any:
        """GET for job reads: every failure but bad credentials is transient (the append
        is committed; a re-send is safe), so a 404 never fails the item."""
        response = self.request("GET", route, context=context)
        try:
            self.raise_for_status(response, context)
        except PermanentError as exc:
            raise TransientError(str(exc)) from None
        return self.json(response, context)
