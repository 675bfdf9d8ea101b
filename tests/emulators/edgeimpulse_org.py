"""Organization data routes of the Edge Impulse emulator (a mixin of EdgeImpulseEmulator).

Under ``/v1/api/organizations/{oid}`` (platform reference, Part 1 §2.2-2.3):
``GET dataset/{name}``, ``POST data/add`` (multipart: name, dataset, metadata as a JSON
string, optional bucketId/bucketName/bucketPath, files[]), ``GET data`` (dataset, a small
SQL-WHERE ``filter`` subset, limit/offset), ``GET|POST|DELETE data/{id}``, ``POST
data/{id}/add`` (more files[]).

Files live in a bucket under the item's bucket path ``<dataset>/<name>/``, so two items with
one name share their files and deleting an item deletes the files under its path, as the
real service does for datasets with a bucket path. ``org_metadata_merge`` makes the update
route merge metadata instead of replacing it.
"""

from __future__ import annotations

import copy
import json
import re

from tests.emulators.base import Request, Response, json_response, route

OID = r"(?P<oid>\d+)"
DID = r"(?P<did>\d+)"
_CONDITION = re.compile(r"\s*(?P<field>name|dataset|bucket|metadata->[A-Za-z0-9_]+)\s*(?P<op>!=|=)\s*"
                        r"'(?P<value>(?:[^']|'')*)'\s*", re.IGNORECASE)


def fail(message: str, status: int) -> Response:
    return json_response({"success": False, "error": message}, status)


def parse_filter(text: str):
    """``[(field, op, value)]`` for conditions joined by AND; ValueError when unsupported."""
    conditions = []
    for piece in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE):
        match = _CONDITION.fullmatch(piece)
        if not match:
            raise ValueError(f"Unsupported filter near: {piece[:40]!r}")
        conditions.append((match["field"].lower(), match["op"], match["value"].replace("''", "'")))
    return conditions


def _field(item: dict, field: str) -> str | None:
    if field.startswith("metadata->"):
        return item["metadata"].get(field.split("->", 1)[1])
    return {"name": item["name"], "dataset": item["dataset"], "bucket": item["bucketName"]}[field]


class OrgDataRoutes:
    """Mixin: state is created by ``init_org_state``; the host provides lock, ids and error_status."""

    def init_org_state(self) -> None:
        self.orgs: dict[int, dict] = {}
        self.org_datasets: dict[tuple[int, str], dict] = {}
        self.data_items: dict[int, dict] = {}
        self.bucket_files: dict[tuple[int, str], bytes] = {}  # (bucket id, path) -> bytes
        self.org_metadata_merge = False

    # -- test-side helpers -------------------------------------------------------------------
    def add_org(self, name: str = "Emulated org") -> dict:
        with self.lock:
            org = {"id": 500 + next(self._ids), "name": name, "buckets": {1: "ei-default-bucket"}}
            self.orgs[org["id"]] = org
            return copy.deepcopy(org)

    def make_org_key(self, org_id: int) -> str:
        return self.make_key(org_id, kind="org")

    def add_org_dataset(self, org_id: int, dataset: str) -> dict:
        with self.lock:
            entry = {"dataset": dataset, "lastFileCreated": "2024-01-01T00:00:00.000Z", "totalFileSize": 0,
                     "totalFileCount": 0, "totalItemCount": 0, "totalItemCountChecklistOK": 0,
                     "totalItemCountChecklistFailed": 0, "tags": [], "category": "", "type": "clinical",
                     "bucket": {"id": 1, "bucket": "ei-default-bucket", "path": dataset, "fullBucketPath": f"s3://ei-default-bucket/{dataset}/",
                                "dataItemNamingLevelsDeep": 1}, "bucketPath": dataset}
            self.org_datasets[(org_id, dataset)] = entry
            return copy.deepcopy(entry)

    def items_in(self, org_id: int, dataset: str) -> list[dict]:
        with self.lock:
            return [self._item_json(i) for i in self.data_items.values()
                    if i["orgId"] == org_id and i["dataset"] == dataset]

    def files_of(self, data_id: int) -> dict[str, bytes]:
        with self.lock:
            item = self.data_items[data_id]
            return {path[len(item["bucketPath"]):]: data for (bucket, path), data in self.bucket_files.items()
                    if bucket == item["bucketId"] and path.startswith(item["bucketPath"])}

    # -- helpers -----------------------------------------------------------------------------------
    def _item_json(self, item: dict, *, with_files: bool = False) -> dict:
        files = [(path, data) for (bucket, path), data in sorted(self.bucket_files.items())
                 if bucket == item["bucketId"] and path.startswith(item["bucketPath"])]
        out = {k: copy.deepcopy(v) for k, v in item.items() if k != "orgId"}
        out.update(totalFileCount=len(files), totalFileSize=sum(len(d) for _, d in files))
        if with_files:
            out["files"] = [{"name": p[len(item["bucketPath"]):], "bucketPath": p, "size": len(d),
                             "lastModified": item["created"]} for p, d in files]
        else:
            out["fullBucketPath"] = f"s3://{item['bucketName']}/{item['bucketPath']}"
            out["metadataStringForCLI"] = json.dumps({**item["metadata"], "dataItemInfo": {"id": item["id"]}})
        return out

    def _item(self, request: Request) -> dict | None:
        item = self.data_items.get(int(request.params["did"]))
        if item is None or item["orgId"] != int(request.params["oid"]):
            return None
        return item

    def _no_item(self, request: Request) -> Response:
        return fail(f"Data item with ID {request.params['did']} not found", self.error_status)

    # -- routes ----------------------------------------------------------------------------------------
    @route("GET", rf"/v1/api/organizations/{OID}/dataset/(?P<dataset>[^/]+)")
    def org_get_dataset(self, request: Request) -> Response:
        with self.lock:
            entry = self.org_datasets.get((int(request.params["oid"]), request.params["dataset"]))
            if entry is None:
                return fail(f"Dataset '{request.params['dataset']}' does not exist", self.error_status)
            return json_response({"success": True, "dataset": copy.deepcopy(entry)})

    @route("POST", rf"/v1/api/organizations/{OID}/data/add")
    def org_add_item(self, request: Request) -> Response:
        try:
            parts = request.parts()
        except ValueError as exc:
            return fail(f"Expected a multipart/form-data body: {exc}", 400)
        fields = {p.name: p.text for p in parts if p.filename is None}
        files = [p for p in parts if p.name == "files[]" and p.filename]
        missing = [f for f in ("name", "dataset", "metadata") if not fields.get(f)]
        if missing or not files:
            return fail(f"Missing {', '.join(missing) or 'files[]'}", 400)
        try:
            metadata = json.loads(fields["metadata"])
        except ValueError:
            return fail("metadata is not valid JSON", 400)
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            return fail("metadata must be a JSON object with string values", 400)
        oid = int(request.params["oid"])
        with self.lock:
            dataset = self.org_datasets.get((oid, fields["dataset"]))
            if dataset is None:
                return fail(f"Dataset '{fields['dataset']}' does not exist", self.error_status)
            bucket_id = int(fields.get("bucketId") or dataset["bucket"]["id"])
            if bucket_id not in self.orgs[oid]["buckets"]:
                return fail(f"Bucket {bucket_id} not found", self.error_status)
            base = fields.get("bucketPath") or f"{dataset['bucketPath']}/{fields['name']}"
            item = {"id": next(self._ids), "orgId": oid, "name": fields["name"], "bucketId": bucket_id,
                    "bucketName": self.orgs[oid]["buckets"][bucket_id], "bucketPath": base.rstrip("/") + "/",
                    "dataset": fields["dataset"], "created": "2024-01-01T00:00:00.000Z", "metadata": metadata}
            self.data_items[item["id"]] = item
            for part in files:
                self.bucket_files[(bucket_id, item["bucketPath"] + part.filename)] = part.data
        return json_response({"success": True, "id": item["id"]})

    @route("POST", rf"/v1/api/organizations/{OID}/data/{DID}/add")
    def org_add_files(self, request: Request) -> Response:
        try:
            files = [p for p in request.parts() if p.name == "files[]" and p.filename]
        except ValueError as exc:
            return fail(f"Expected a multipart/form-data body: {exc}", 400)
        if not files:
            return fail("Missing files[]", 400)
        with self.lock:
            item = self._item(request)
            if item is None:
                return self._no_item(request)
            for part in files:
                self.bucket_files[(item["bucketId"], item["bucketPath"] + part.filename)] = part.data
        return json_response({"success": True})

    @route("GET", rf"/v1/api/organizations/{OID}/data")
    def org_list_items(self, request: Request) -> Response:
        try:
            conditions = parse_filter(request.arg("filter")) if request.arg("filter") else []
        except ValueError as exc:
            return json_response({"success": True, "filterParseError": str(exc), "data": [],
                                  "totalFileCount": 0, "totalDataItemCount": 0})
        try:
            limit, offset = int(request.arg("limit", "1000")), int(request.arg("offset", "0"))
        except ValueError:
            return fail("limit and offset must be integers", 400)
        dataset = request.arg("dataset")
        with self.lock:
            found = [i for i in sorted(self.data_items.values(), key=lambda i: i["id"])
                     if i["orgId"] == int(request.params["oid"]) and (not dataset or i["dataset"] == dataset)
                     and all((_field(i, f) == v) == (op == "=") for f, op, v in conditions)]
            page = [self._item_json(i) for i in found[offset:offset + limit]]
            total_files = sum(i["totalFileCount"] for i in (self._item_json(x) for x in found))
        return json_response({"success": True, "data": page, "totalFileCount": total_files,
                              "totalDataItemCount": len(found)})

    @route("GET", rf"/v1/api/organizations/{OID}/data/{DID}")
    def org_get_item(self, request: Request) -> Response:
        with self.lock:
            item = self._item(request)
            if item is None:
                return self._no_item(request)
            return json_response({"success": True, "data": self._item_json(item, with_files=True)})

    @route("POST", rf"/v1/api/organizations/{OID}/data/{DID}")
    def org_update_item(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return fail("The body is not valid JSON", 400)
        if not isinstance(body, dict) or set(body) - {"name", "dataset", "metadata"}:
            return fail("Body may only have name, dataset and metadata", 400)
        if "metadata" in body and not (isinstance(body["metadata"], dict)
                                       and all(isinstance(v, str) for v in body["metadata"].values())):
            return fail("metadata must be an object with string values", 400)
        with self.lock:
            item = self._item(request)
            if item is None:
                return self._no_item(request)
            if "metadata" in body:
                new = dict(body["metadata"])
                item["metadata"] = {**item["metadata"], **new} if self.org_metadata_merge else new
            if "name" in body:
                item["name"] = body["name"]
            if "dataset" in body:
                if (item["orgId"], body["dataset"]) not in self.org_datasets:
                    return fail(f"Dataset '{body['dataset']}' does not exist", self.error_status)
                item["dataset"] = body["dataset"]
        return json_response({"success": True})

    @route("DELETE", rf"/v1/api/organizations/{OID}/data/{DID}")
    def org_delete_item(self, request: Request) -> Response:
        with self.lock:
            item = self._item(request)
            if item is None:
                return self._no_item(request)
            del self.data_items[item["id"]]
            # Files under the item's path go with it (they may be shared by a same-named item).
            under = [k for k in self.bucket_files if k[0] == item["bucketId"] and k[1].startswith(item["bucketPath"])]
            for key in under:
                del self.bucket_files[key]
        return json_response({"success": True})
