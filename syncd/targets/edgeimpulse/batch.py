"""Shared ingestion requests for the Edge Impulse project target (a mixin of
``EdgeImpulseTarget``): ``deliver_batch`` groups new items whose request headers would be
identical into one request with several ``data`` parts (``ingest.py`` says which may
share and builds the request), and settles each item from its own file result.

Why sharing is limited to identical headers: the ingestion service applies ``x-label``,
``x-metadata`` and ``x-bounding-boxes`` to every file of a request, and has no per-file
metadata. So a shared request carries the user metadata without syncd's per-item markers,
and a later lookup knows which image such a sample holds from Edge Impulse's own
``sha256Hash`` (``payload.holds_image``), which this module checks once per process
(``_check_hashes``) before relying on it.

The host class provides ``settings``, ``wanted``, ``_deliver`` (one item alone),
``_ingest`` (send one request), ``_outcome`` (one file's result), ``_update`` and
``_get_sample``.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from syncd.errors import FatalTargetError, SendAlone, SyncdError, TransientError
from syncd.targets.base import ItemResult, Receipt, Upload
from syncd.targets.edgeimpulse import ingest
from syncd.targets.edgeimpulse.ingest import Wanted


def _stops(result: ItemResult) -> bool:
    """Whether an item's result says the target as a whole must wait (no more requests)."""
    return isinstance(result, FatalTargetError) or (isinstance(result, TransientError) and result.throttled)


def _not_sent(cause: SyncdError) -> SyncdError:
    """The result of an item not sent because ``cause`` stopped the batch."""
    if isinstance(cause, FatalTargetError):
        return cause
    assert isinstance(cause, TransientError)
    return TransientError(f"not sent: {cause}", retry_after=cause.retry_after, throttled=cause.throttled,
                          outcome_unknown=False)


_CREATE = threading.Lock()  # creating a target's slots and pool


class SharedUploads:
    """``deliver_batch`` for the Edge Impulse project target (see the module docstring)."""

    #: Items one call may carry. Edge Impulse takes up to 1000 files per request; ten keeps
    #: a request's size and the lookups after a lost reply small (as Nucleus's ten).
    max_batch = 10
    #: Whether Edge Impulse's ``sha256Hash`` of a sample is the SHA-256 of the file sent
    #: (None: not checked yet in this process; False: requests are no longer shared).
    _hashes_match: bool | None = None
    _slots: threading.BoundedSemaphore | None = None
    _pool: ThreadPoolExecutor | None = None

    def deliver_batch(self, uploads: Sequence[Upload]) -> list[ItemResult]:
        """One attempt for each upload, in as few ingestion requests as their headers allow:
        new items whose label and user metadata are the same share one request
        (``ingest.share_key``); the rest (updates, image changes, converted images, large
        metadata, or sharing switched off by ``_check_hashes``) go alone through ``deliver``.
        Results per item: a file refused in a shared request goes through the duplicate
        check alone; a request that failed as a whole gives each of its items that error (a
        lost reply: outcome unknown, so the daemon looks each up; a refusal of the request:
        ``SendAlone``). After a pause or a throttle (``_stops``) nothing more is sent: the
        remaining items get a TransientError (not sent) or the FatalTargetError.

        The requests of one call are independent, so they go side by side (``_request_pool``,
        in the caller's context: rate limits see them as this target's), and never more than
        ``workers`` of this target's at once, whichever calls they belong to
        (``_request_slots``): a batch of ten items that share nothing takes as long as one
        item, not ten, and the platform sees the concurrency it was configured for."""
        results: list[ItemResult | None] = [None] * len(uploads)
        wanted: list[Wanted | None] = [None] * len(uploads)
        keys: list[str | None] = [None] * len(uploads)
        for index, upload in enumerate(uploads):
            try:
                wanted[index] = self.wanted(upload)
            except SyncdError as exc:
                results[index] = exc
                continue
            if self._hashes_match is not False:
                keys[index] = ingest.share_key(upload, wanted[index])
        sizes = [len(upload.image) for upload in uploads]
        groups = [[i for i in group if results[i] is None] for group in ingest.groups(keys, sizes)]
        groups = [group for group in groups if group]
        stopped: list[SyncdError] = []

        def send(group: list[int]) -> list[ItemResult]:
            with self._request_slots():
                if stopped:
                    return [_not_sent(stopped[0])] * len(group)
                if len(group) == 1:
                    try:
                        sent: list[ItemResult] = [self._deliver(uploads[group[0]], wanted[group[0]])]
                    except SyncdError as exc:
                        sent = [exc]
                else:
                    sent = self._create_shared([(uploads[i], wanted[i]) for i in group])
            cause = next((r for r in sent if _stops(r)), None)
            if cause is not None and not stopped:
                stopped.append(cause)
            return sent

        if len(groups) == 1:
            outcomes = [send(groups[0])]
        else:  # independent requests go side by side (the slots bound them for the whole target)
            pool = self._request_pool()
            futures = [pool.submit(contextvars.copy_context().run, send, group) for group in groups]
            outcomes = [future.result() for future in futures]
        for group, sent in zip(groups, outcomes):
            for index, item_result in zip(group, sent):
                results[index] = item_result
        return results

    def _request_slots(self) -> threading.BoundedSemaphore:
        """At most ``workers`` requests of this target at once, from every call together."""
        if self._slots is None:
            with _CREATE:
                if self._slots is None:
                    self._slots = threading.BoundedSemaphore(self.settings.workers)
        return self._slots

    def _request_pool(self) -> ThreadPoolExecutor:
        """The threads that send a call's independent requests side by side."""
        with _CREATE:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.settings.workers,
                                                thread_name_prefix=f"syncd-{self.name}-request")
            return self._pool

    def close_requests(self) -> None:
        """Stop the request threads (they are made again when needed)."""
        with _CREATE:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _create_shared(self, items: list[tuple[Upload, Wanted]]) -> list[ItemResult]:
        """Upload ``items`` (the same share key) as new samples in one request."""
        form = ingest.shared(items, allow_duplicates=self.settings.allow_duplicates)
        context = f"uploading {len(items)} items ({items[0][0].key!r} ...) in one request"
        try:
            outcomes = self._ingest(form, context=context)
        except (TransientError, FatalTargetError) as exc:
            return [exc] * len(items)
        except SyncdError as exc:  # the request refused as a whole: find the culprit alone
            return [SendAlone(f"{exc} (each item is sent again by itself)")] * len(items)
        results: list[ItemResult] = []
        for (upload, wanted), outcome, name in zip(items, outcomes, form.names):
            item_context = f"uploading {upload.key!r} as sample {name!r}"
            try:
                results.append(self._outcome(outcome, upload, wanted, form, context=item_context, gone=None))
            except SyncdError as exc:
                results.append(exc)
        return self._check_hashes(items, results)

    def _check_hashes(self, items: list[tuple[Upload, Wanted]], results: list[ItemResult]) -> list[ItemResult]:
        """Once per process, after the first shared upload: read one new sample back and
        compare Edge Impulse's ``sha256Hash`` with the image sent (documented only as "the
        data sample's SHA-256, including the CBOR envelope if applicable"). If they differ,
        the samples of this request get the markers through Studio now and no request is
        shared any more: a lookup could not tell their images apart otherwise."""
        if self._hashes_match is not None:
            return results
        made = [(index, r) for index, r in enumerate(results) if isinstance(r, Receipt)]
        if not made:
            return results
        index, receipt = made[0]
        try:
            sample = self._get_sample(int(receipt.remote_id))
        except SyncdError:
            return results  # checked on the next shared upload
        self._hashes_match = sample.get("sha256Hash") == items[index][0].image_sha256
        if self._hashes_match:
            return results
        for index, receipt in made:
            upload, wanted = items[index]
            try:
                results[index] = self._update(int(receipt.remote_id), upload, wanted)
            except SyncdError as exc:
                results[index] = TransientError(f"{exc} (sample {receipt.remote_id} holds the image; its metadata "
                                                "is set on the next attempt)")
        return results

