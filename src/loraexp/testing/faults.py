"""Wrappers around any Tinker-shaped client: injected latency and failures, and a simulated service clock.

- `FaultyClient(inner, latency_s, failure_rate, seed, kinds)` wraps a service, training, sampling or
  REST client (and every client its futures resolve to). A request picked to fail is refused
  BEFORE the wrapped call runs: its future raises one of tinker's own exceptions and no work was
  done, so retrying it is safe. Results are delivered `latency_s` after the work finishes.
- `SimulatedService(inner, timing)` makes a fast local service look like the real one for
  throughput studies: each request reaches the server after half a round trip, the server runs
  requests one at a time in submission order for a fixed compute time (forward_backward in
  proportion to its datums, optim_step fixed), and the result comes back half a round trip later.
  The round trips of pipelined submissions overlap; the compute does not. Real time: results are held
  until their simulated delivery, and the real call's own duration does not stretch the simulated clock.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import tinker
from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture
from tinker.types import RequestErrorCategory

from loraexp.local_tinker.errors import connection_error, status_error
from loraexp.service import Service

FAULT_KINDS: tuple[type[Exception], ...] = (tinker.RateLimitError, tinker.InternalServerError, tinker.APIConnectionError, tinker.RequestFailedError)
NOT_REQUESTS = frozenset({"get_info", "get_base_model", "get_tokenizer", "get_console_url"})  # answered client-side


def injected_error(kind: type[Exception], method: str, number: int) -> Exception:
    """One of tinker's exceptions, constructed as the SDK constructs it."""
    message = f"injected {kind.__name__} on {method} (fault #{number})"
    if kind is tinker.RateLimitError:
        return status_error(tinker.RateLimitError, 429, message, method)
    if kind is tinker.InternalServerError:
        return status_error(tinker.InternalServerError, 500, message, method)
    if kind is tinker.APIConnectionError:
        return connection_error(message, method)
    if kind is tinker.RequestFailedError:
        return tinker.RequestFailedError(message, request_id=f"injected-{number}", category=RequestErrorCategory.Server)
    raise ValueError(f"no injected form for {kind.__name__}; choose from {[k.__name__ for k in FAULT_KINDS]}")


class _Courier:
    """One daemon thread that settles futures at given monotonic times (a heap of deliveries)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        threading.Thread(target=self._loop, daemon=True, name="loraexp-courier").start()

    def at(self, when: float, deliver: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._heap, (when, next(self._order), deliver))
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, deliver = heapq.heappop(self._heap)
            deliver()


def faulty_service(service: Service, latency_s: float = 0.0, failure_rate: float = 0.0, seed: int = 0) -> Service:
    """`service` with its service and REST clients wrapped in one FaultyClient plan."""
    faulty = FaultyClient(service.client, latency_s=latency_s, failure_rate=failure_rate, seed=seed)
    return dataclasses.replace(service, client=faulty, make_rest=lambda: faulty.sibling(service.rest), _rest=[])


def _settle(target: Future, source: Future, wrap: Callable[[Any], Any]) -> None:
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(wrap(source.result()))


def _is_client(value: Any) -> bool:
    return any(hasattr(value, name) for name in ("forward_backward", "sample", "list_checkpoints", "create_lora_training_client"))


@dataclass
class _FaultPlan:
    latency_s: float
    failure_rate: float
    kinds: tuple[type[Exception], ...]
    rng: random.Random
    courier: _Courier = field(default_factory=_Courier)
    lock: threading.Lock = field(default_factory=threading.Lock)
    injected: list[tuple[str, str]] = field(default_factory=list)  # (method, exception class) in order

    def draw(self, method: str) -> Exception | None:
        with self.lock:
            if self.rng.random() >= self.failure_rate:
                return None
            kind = self.rng.choice(self.kinds)
            self.injected.append((method, kind.__name__))
            return injected_error(kind, method, len(self.injected))


class FaultyClient:
    """`inner` with latency and failures injected per request (see the module docstring)."""

    def __init__(self, inner: Any, latency_s: float = 0.0, failure_rate: float = 0.0, seed: int = 0,
                 kinds: tuple[type[Exception], ...] = FAULT_KINDS, _plan: _FaultPlan | None = None):
        for kind in kinds:
            injected_error(kind, "check", 0)  # refuse an unknown kind now, not mid-run
        self._inner = inner
        self._plan = _plan or _FaultPlan(latency_s, failure_rate, tuple(kinds), random.Random(seed))

    @property
    def inner(self) -> Any:
        """The wrapped client."""
        return self._inner

    def sibling(self, other: Any) -> "FaultyClient":
        """`other` (e.g. the REST client beside this service) wrapped under the same fault plan."""
        return FaultyClient(other, _plan=self._plan)

    @property
    def injected(self) -> list[tuple[str, str]]:
        """Every failure injected so far, shared with the clients this one created."""
        return self._plan.injected

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name.startswith("_") or name in NOT_REQUESTS or not callable(attribute):
            return attribute

        def request(*args: Any, **kwargs: Any) -> Any:
            failure = self._plan.draw(name)
            if failure is not None:  # refused before the wrapped call runs: nothing was executed
                failed: Future = Future()
                failed.set_exception(failure)
                return self._delayed(failed)
            result = attribute(*args, **kwargs)
            return self._delayed(result.future()) if isinstance(result, APIFuture) else result

        return request

    def _delayed(self, source: Future) -> APIFuture:
        target: Future = Future()
        wrap = lambda value: FaultyClient(value, _plan=self._plan) if _is_client(value) else value  # noqa: E731
        source.add_done_callback(lambda done: self._plan.courier.at(time.monotonic() + self._plan.latency_s, lambda: _settle(target, done, wrap)))
        return AwaitableConcurrentFuture(target)


@dataclass(frozen=True)
class ServiceTiming:
    """The simulated service's clock: compute per request and the network round trip."""

    round_trip_s: float = 1.0  # submit -> server is half of it, server -> result the other half
    forward_backward_s_per_datum: float = 0.5 / 8  # 0.5 s per 8-row batch
    forward_s_per_datum: float = 0.5 / 8 / 3  # a forward pass is about a third of forward + backward
    optim_step_s: float = 0.1
    other_s: float = 0.0  # saves, client creation


class _SimulatedServer:
    """Keeps the service's clock: requests run one at a time in submission order for their simulated compute time.

    The clock is bookkeeping, not a thread that sleeps through each request: the wrapped call starts at
    submission on the inner client (whose own worker keeps submission order), so its real duration overlaps
    the simulated timeline instead of stretching it. A local forward_backward that takes 0.62 s on a loaded
    machine would otherwise make a 0.5 s simulated step 0.62 s long. A result is delivered half a round trip
    after its simulated finish, or when the real call finishes if that is later.
    """

    def __init__(self, timing: ServiceTiming):
        self.timing = timing
        self._free_at = 0.0  # monotonic time at which the server finishes everything submitted so far
        self._lock = threading.Lock()
        self._courier = _Courier()

    def submit(self, compute_s: float, start: Callable[[], Any], wrap: Callable[[Any], Any] = lambda value: value) -> APIFuture:
        """Schedule a request of `compute_s`; `start()` submits the real call and returns its APIFuture."""
        with self._lock:  # the schedule and the inner submission order agree
            arrives = time.monotonic() + self.timing.round_trip_s / 2
            self._free_at = max(arrives, self._free_at) + compute_s
            deliver_at = self._free_at + self.timing.round_trip_s / 2
            source = _started(start)
        target: Future = Future()
        source.add_done_callback(lambda done: self._courier.at(max(deliver_at, time.monotonic()), lambda: _settle(target, done, wrap)))
        return AwaitableConcurrentFuture(target)


def _started(start: Callable[[], Any]) -> Future:
    """The concurrent future of a real call; a call that raises at submission becomes a failed future."""
    try:
        return start().future()
    except Exception as exc:  # noqa: BLE001 - delivered to the caller through its future, on the simulated clock
        failed: Future = Future()
        failed.set_exception(exc)
        return failed


class SimulatedService:
    """A service client whose training clients answer on the simulated service's clock."""

    def __init__(self, inner: Any, timing: ServiceTiming = ServiceTiming()):
        self._inner = inner
        self.server = _SimulatedServer(timing)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not name.startswith("create_") or not callable(attribute):
            return attribute

        def create(*args: Any, **kwargs: Any) -> APIFuture:
            wrap = lambda client: SimulatedTrainingClient(client, self.server) if hasattr(client, "forward_backward") else client  # noqa: E731
            return self.server.submit(self.server.timing.other_s, lambda: attribute(*args, **kwargs), wrap)

        return create


class SimulatedTrainingClient:
    """A training client whose every request goes through the simulated server."""

    def __init__(self, inner: Any, server: _SimulatedServer):
        self._inner = inner
        self._server = server

    def forward_backward(self, data: list[tinker.Datum], loss_fn: str, loss_fn_config: Any = None) -> APIFuture:
        compute_s = len(data) * self._server.timing.forward_backward_s_per_datum
        return self._server.submit(compute_s, lambda: self._inner.forward_backward(data, loss_fn, loss_fn_config))

    def forward(self, data: list[tinker.Datum], loss_fn: str, loss_fn_config: Any = None) -> APIFuture:
        compute_s = len(data) * self._server.timing.forward_s_per_datum
        return self._server.submit(compute_s, lambda: self._inner.forward(data, loss_fn, loss_fn_config))

    def optim_step(self, optim_params: Any = None, *, adam_params: Any = None) -> APIFuture:
        return self._server.submit(self._server.timing.optim_step_s, lambda: self._inner.optim_step(optim_params, adam_params=adam_params))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not name.startswith("save_") or not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self._server.submit(self._server.timing.other_s, lambda: attribute(*args, **kwargs))
