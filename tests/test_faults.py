"""Injected latency and failures around the local client, and the simulated service's clock."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

from loraexp.service.datums import datum_from_row
from loraexp.testing.faults import FAULT_KINDS, FaultyClient, ServiceTiming, SimulatedService, SimulatedTrainingClient, injected_error
from loraexp.local_tinker import LocalRestClient, LocalServiceClient
from tiny_qwen3 import fixture_rows, make_tiny_qwen3

ADAM = tinker.AdamParams(learning_rate=1e-2)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture()
def service(tmp_path) -> LocalServiceClient:
    return LocalServiceClient(tmp_path / "local_tinker")


@pytest.fixture(scope="module")
def data() -> list[tinker.Datum]:
    return [datum_from_row(row) for row in fixture_rows(8)]


def logprobs(client, data) -> list[np.ndarray]:
    return [output["logprobs"].to_numpy() for output in client.forward(data, "cross_entropy").result().loss_fn_outputs]


def with_retries(submit, attempts=50):
    """What a caller does with a refused request: submit it again."""
    for _ in range(attempts):
        try:
            return submit().result()
        except FAULT_KINDS:
            continue
    raise AssertionError("never succeeded")


def test_injected_errors_are_tinker_exceptions_built_like_the_sdk():
    errors = [injected_error(kind, "forward_backward", 1) for kind in FAULT_KINDS]
    assert [type(e) for e in errors] == list(FAULT_KINDS)
    assert errors[0].status_code == 429 and errors[0].response.status_code == 429
    assert errors[1].status_code == 500 and isinstance(errors[1], tinker.APIStatusError)
    assert errors[2].request.url.path.endswith("forward_backward")
    assert errors[3].category == tinker.types.RequestErrorCategory.Server and errors[3].request_id == "injected-1"
    with pytest.raises(ValueError, match="no injected form"):
        FaultyClient(object(), kinds=(tinker.BadRequestError,))


def test_a_refused_request_ran_nothing(service, base_dir, data):
    inner = service.create_lora_training_client(str(base_dir), rank=4, seed=0).result()
    before = logprobs(inner, data)
    faulty = FaultyClient(inner, failure_rate=1.0, kinds=(tinker.RateLimitError,))
    with pytest.raises(tinker.RateLimitError):
        faulty.forward_backward(data, "cross_entropy").result()
    with pytest.raises(tinker.RateLimitError):
        faulty.optim_step(ADAM).result()
    assert faulty.injected == [("forward_backward", "RateLimitError"), ("optim_step", "RateLimitError")]
    inner.optim_step(ADAM).result()  # had the refused forward_backward run, this step would move the weights
    for a, b in zip(before, logprobs(inner, data)):
        assert np.array_equal(a, b)


def test_retrying_refused_requests_reaches_the_same_weights(service, base_dir, data):
    clean = service.create_lora_training_client(str(base_dir), rank=4, seed=1).result()
    faulty_service = FaultyClient(service, failure_rate=0.4, seed=7)
    faulty = with_retries(lambda: faulty_service.create_lora_training_client(str(base_dir), rank=4, seed=1))
    assert isinstance(faulty, FaultyClient)  # clients made through the wrapper are wrapped too
    for _ in range(3):
        clean.forward_backward(data, "cross_entropy").result()
        clean.optim_step(ADAM).result()
        with_retries(lambda: faulty.forward_backward(data, "cross_entropy"))
        with_retries(lambda: faulty.optim_step(ADAM))
    kinds = {kind for _, kind in faulty.injected}
    assert len(faulty.injected) >= 3 and len(kinds) >= 2
    for a, b in zip(logprobs(clean, data), logprobs(faulty._inner, data)):
        assert np.array_equal(a, b)


def test_the_same_seed_injects_the_same_failures(service):
    def pattern(seed):
        rest = FaultyClient(LocalRestClient(service.store), failure_rate=0.5, seed=seed)
        return [type(rest.list_checkpoints("no-such-run").future().exception()).__name__ for _ in range(20)]

    assert pattern(3) == pattern(3) != pattern(4)
    assert "NotFoundError" in pattern(3) and len(set(pattern(3))) >= 3  # real answers between injected failures


def test_latency_overlaps_for_pipelined_requests(service, base_dir, data):
    client = FaultyClient(service.create_lora_training_client(str(base_dir), rank=4, seed=0).result(), latency_s=0.3)
    started = time.monotonic()
    futures = [client.forward(data[:2], "cross_entropy") for _ in range(4)]
    submitted = time.monotonic() - started
    [future.result() for future in futures]
    elapsed = time.monotonic() - started
    assert submitted < 0.1  # futures come back at once
    assert 0.3 <= elapsed < 1.15  # four round trips in flight together, not 4 x 0.3 s = 1.2 s (slack for a loaded CI machine)


def test_simulated_service_pipelining_approaches_the_server_bound(service, base_dir, data):
    timing = ServiceTiming(round_trip_s=0.2, forward_backward_s_per_datum=0.05 / 8, optim_step_s=0.02)
    simulated = SimulatedService(service, timing)
    sequential = simulated.create_lora_training_client(str(base_dir), rank=4, seed=2).result()
    pipelined = simulated.create_lora_training_client(str(base_dir), rank=4, seed=2).result()
    steps = 3
    server_bound = steps * (len(data) * timing.forward_backward_s_per_datum + timing.optim_step_s)

    started = time.monotonic()
    for _ in range(steps):
        sequential.forward_backward(data, "cross_entropy").result()
        sequential.optim_step(ADAM).result()
    sequential_s = time.monotonic() - started

    started = time.monotonic()
    futures = [f for _ in range(steps) for f in (pipelined.forward_backward(data, "cross_entropy"), pipelined.optim_step(ADAM))]
    [future.result() for future in futures]
    pipelined_s = time.monotonic() - started

    assert sequential_s >= steps * 2 * timing.round_trip_s + server_bound  # every request pays a full round trip
    # well under the sequential time (>= 1.31 s); the 0.5 s slack absorbs a loaded CI machine's real compute
    assert server_bound + timing.round_trip_s <= pipelined_s < server_bound + timing.round_trip_s + 0.5
    for a, b in zip(logprobs(sequential, data), logprobs(pipelined, data)):
        assert np.array_equal(a, b)


class _SlowFirstCall:
    """A training client whose first optim_step takes 0.3 s of real time and every later call none."""

    def __init__(self):
        self.calls = 0

    def optim_step(self, optim_params=None, *, adam_params=None):
        self.calls += 1
        delay = 0.3 if self.calls == 1 else 0.0
        worker = ThreadPoolExecutor(max_workers=1)
        return AwaitableConcurrentFuture(worker.submit(lambda: time.sleep(delay) or tinker.OptimStepResponse(metrics={})))


def test_a_slow_real_call_does_not_stretch_the_simulated_clock():
    # 6 pipelined requests of 0.1 s simulated compute behind a 0.1 s round trip: 0.7 s on the simulated clock.
    # Before the fix the server slept through the real call, so a 0.3 s first call made it 0.3 + 5 x 0.1 + 0.1 = 0.9 s.
    simulated = SimulatedService(None, ServiceTiming(round_trip_s=0.1, optim_step_s=0.1))
    client = SimulatedTrainingClient(_SlowFirstCall(), simulated.server)
    started = time.monotonic()
    futures = [client.optim_step(ADAM) for _ in range(6)]
    first_done = futures[0].result()
    first_s = time.monotonic() - started
    [future.result() for future in futures]
    elapsed = time.monotonic() - started
    assert first_done.metrics == {}
    assert first_s >= 0.3  # a result is never delivered before its real call has finished
    assert 0.7 <= elapsed < 0.82
