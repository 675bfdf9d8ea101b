"""The emulators' service-cost knobs: a rate limit shared by every client (429 +
Retry-After beyond it, served and refused counted), a per-request latency, fault injection
alongside them, and Nucleus jobs that stay Running for ``job_seconds``.

Clocks are replaced by a hand-moved one wherever an outcome depends on time, so nothing
here depends on how fast the machine is."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.emulators.dataloop import DataloopEmulator
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.emulators.knobs import RateLimit
from tests.emulators.nucleus import NucleusEmulator
from tests.emulators.redbrick import RedBrickEmulator
from tests.helpers import image_bytes

EMULATORS = [NucleusEmulator, EdgeImpulseEmulator, DataloopEmulator, RedBrickEmulator]


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the rate limit --------------------------------------------------------------------------
def test_rate_limit_serves_per_second_in_a_sliding_window_and_counts():
    clock = Clock()
    limit = RateLimit(clock)
    assert all(limit.admit("/x") for _ in range(10))  # off: everything served
    limit.reset_counts()
    limit.set(3)
    assert [limit.admit("/x") for _ in range(5)] == [True, True, True, False, False]
    clock.now += 0.5
    assert not limit.admit("/x")  # the three served half a second ago still count
    clock.now += 0.5
    assert [limit.admit("/x") for _ in range(4)] == [True, True, True, False]
    assert limit.counts() == {"served": 6, "refused": 4}


def test_rate_limit_can_cover_some_paths_only():
    limit = RateLimit(Clock())
    limit.set(1, path=r"/append$")
    assert [limit.admit("/ds/append") for _ in range(2)] == [True, False]
    assert all(limit.admit("/job/1") for _ in range(5))
    assert limit.counts() == {"served": 6, "refused": 1}


@pytest.mark.parametrize("emulator_class", EMULATORS, ids=lambda c: c.name)
def test_every_emulator_refuses_beyond_its_limit_across_clients(emulator_class):
    with emulator_class() as emulator:
        emulator.rate_limit.clock = Clock()  # frozen: the window never moves on
        emulator.rate_limit.set(4)
        clients = [requests.Session() for _ in range(2)]  # two connections share the limit
        replies = [clients[n % 2].get(f"{emulator.url}/no/such/route") for n in range(7)]
        for client in clients:
            client.close()
    assert [r.status_code for r in replies] == [404] * 4 + [429] * 3
    assert {r.headers["Retry-After"] for r in replies[4:]} == {"1"}
    assert "rate limit" in replies[-1].json()["error"]
    assert emulator.rate_limit.counts() == {"served": 4, "refused": 3}


def test_a_refused_request_touches_no_state_and_gets_no_fault():
    with NucleusEmulator() as emulator:
        http = requests.Session()
        http.auth = (emulator.api_key, "")
        emulator.rate_limit.clock = Clock()
        emulator.rate_limit.set(1)
        emulator.faults.set_rate(1.0, ("500",))
        first = http.post(f"{emulator.endpoint}/dataset/create", json={"name": "a"})
        second = http.post(f"{emulator.endpoint}/dataset/create", json={"name": "b"})
        http.close()
        assert (first.status_code, second.status_code) == (500, 429)  # served (then faulted), refused
        assert emulator.state.datasets == {}
        assert emulator.faults.injected == [("500", "POST", "/v1/nucleus/dataset/create")]
        assert emulator.rate_limit.counts() == {"served": 1, "refused": 1}


def test_faults_keep_working_without_a_rate_limit():
    with EdgeImpulseEmulator() as emulator:
        emulator.faults.next("503", path="/no/such")
        assert requests.get(f"{emulator.url}/no/such").status_code == 503
        assert requests.get(f"{emulator.url}/no/such").status_code == 404
        emulator.faults.outage(True)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{emulator.url}/no/such")
        emulator.faults.outage(False)
        # The outage's request never reached the service: not counted.
        assert emulator.rate_limit.counts() == {"served": 2, "refused": 0}


def test_latency_delays_every_served_request():
    with DataloopEmulator() as emulator:
        emulator.latency = 0.2
        started = time.monotonic()
        assert requests.get(f"{emulator.url}/no/such").status_code == 404
        # A lower bound only (sleep never returns early): cannot fail on a loaded machine.
        assert time.monotonic() - started >= 0.2


# -- Nucleus jobs that take time -----------------------------------------------------------
@pytest.fixture
def nucleus():
    clock = Clock()
    with NucleusEmulator(job_seconds=1.0) as emulator:
        emulator.state.clock = clock
        http = requests.Session()
        http.auth = (emulator.api_key, "")
        yield emulator, emulator.add_dataset("d"), http, clock
        http.close()


def append(emulator, http, dataset_id, ref, **metadata) -> dict:
    items = [{"reference_id": ref, "image_url": "1.png", "metadata": metadata, "update": True}]
    reply = http.post(f"{emulator.endpoint}/dataset/{dataset_id}/append", params={"async": "1"},
                      files=[("items", (None, json.dumps(items), "application/json")),
                             ("image", ("1.png", image_bytes(), "image/png"))])
    assert reply.status_code == 200, reply.text
    return reply.json()


def status(emulator, http, job_id) -> dict:
    return http.get(f"{emulator.endpoint}/job/{job_id}").json()


def test_a_job_stays_running_for_job_seconds_however_often_polled(nucleus):
    emulator, dataset_id, http, clock = nucleus
    job = append(emulator, http, dataset_id, "a/1")
    assert job["job_last_known_status"] == "Running"
    for _ in range(5):
        assert status(emulator, http, job["job_id"])["status"] == "Running"
    clock.now += 0.99
    assert status(emulator, http, job["job_id"])["status"] == "Running"
    assert emulator.item(dataset_id, "a/1") is None  # rows land when the job runs
    clock.now += 0.01
    done = status(emulator, http, job["job_id"])
    assert done["status"] == "Completed" and done["message"]["new_items"] == 1
    assert http.get(f"{emulator.endpoint}/job/{job['job_id']}/errors").json() == []
    assert emulator.item(dataset_id, "a/1")["width"] == 32


def test_a_job_completes_on_time_without_being_polled(nucleus):
    emulator, dataset_id, http, clock = nucleus
    append(emulator, http, dataset_id, "a/1")
    clock.now += 1.0
    assert [item["reference_id"] for item in emulator.items(dataset_id)] == ["a/1"]
    refloc = http.get(f"{emulator.endpoint}/dataset/{dataset_id}/refloc/a%2F1")
    assert refloc.status_code == 200


def test_timed_jobs_end_in_creation_order_and_keep_scripted_failures(nucleus):
    emulator, dataset_id, http, clock = nucleus
    first = append(emulator, http, dataset_id, "same", n=1)
    clock.now += 0.5
    emulator.fail_next_job("Errored_Server", "scripted")
    failing = append(emulator, http, dataset_id, "other")
    second = append(emulator, http, dataset_id, "same", n=2)
    clock.now += 0.6  # the first is due, the others not yet
    assert [status(emulator, http, j["job_id"])["status"] for j in (first, failing, second)] == \
        ["Completed", "Running", "Running"]
    clock.now += 0.5
    assert status(emulator, http, second["job_id"])["status"] == "Completed"
    assert status(emulator, http, failing["job_id"])["status"] == "Errored_Server"
    assert emulator.item(dataset_id, "same")["metadata"] == {"n": 2}
    assert emulator.item(dataset_id, "other") is None


def test_without_job_seconds_jobs_follow_the_poll_script():
    with NucleusEmulator(job_script=("Running",)) as emulator:
        dataset_id = emulator.add_dataset("d")
        http = requests.Session()
        http.auth = (emulator.api_key, "")
        job = append(emulator, http, dataset_id, "a/1")
        assert [status(emulator, http, job["job_id"])["status"] for _ in range(2)] == ["Running", "Completed"]
        http.close()
