"""The job routes of the Nucleus emulator (``NucleusEmulator``, tests/emulators/nucleus.py):
``GET job/{id}`` (a poll moves the job along, ``NucleusState.poll``), ``job/{id}/errors``
(one JSON-encoded record per refused row, ``nucleus_state.job_error_row``),
``job/{id}/info`` and ``POST jobs/`` (the SDK's ``list_jobs``/``Dataset.jobs``)."""

from __future__ import annotations

from tests.emulators.base import Request, Response, json_response, route
from tests.emulators.nucleus_state import BadRequest, Job, json_object

API = "/v1/nucleus"


class JobRoutes:
    """Mixin: the host provides ``state`` (a NucleusState) and ``_call``."""

    def _job(self, request: Request) -> Job:
        job = self.state.jobs.get(request.params["job"])
        if job is None:
            raise LookupError(f"Job {request.params['job']} not found")
        return job

    @route("GET", r"/v1/nucleus/job/(?P<job>[^/]+)")
    def job_status(self, request: Request) -> Response:
        return self._call(lambda r: json_response(self.state.poll(self._job(r)).status_json()), request)

    @route("POST", f"{API}/jobs/?")
    def list_jobs(self, request: Request) -> Response:
        """``POST jobs/`` (the SDK's ``list_jobs``/``Dataset.jobs``): AsyncJob JSON of the
        jobs matching ``dataset_id`` and ``job_types``, Completed ones only with
        ``show_completed``, at most ``limit``."""
        def handle(request):
            body = json_object(request)
            limit = body.get("limit") or 50_000
            types = body.get("job_types")
            if not isinstance(limit, int) or limit < 1 or not (types is None or isinstance(types, list)):
                raise BadRequest("limit must be a positive integer and job_types a list")
            jobs = (sorted(self.state.jobs.values(), key=lambda j: j.seq) if body.get("show_completed")
                    else self.state.unfinished(None, None))
            jobs = [j for j in jobs
                    if body.get("dataset_id") in (None, j.dataset_id) and (not types or j.job_type in types)]
            return json_response([j.info_json() for j in jobs[:limit]])
        return self._call(handle, request)

    @route("GET", r"/v1/nucleus/job/(?P<job>[^/]+)/errors")
    def job_errors(self, request: Request) -> Response:
        return self._call(lambda r: json_response(list(self._job(r).errors)), request)

    @route("GET", r"/v1/nucleus/job/(?P<job>[^/]+)/info")
    def job_info(self, request: Request) -> Response:
        return self._call(lambda r: json_response(self._job(r).info_json()), request)

