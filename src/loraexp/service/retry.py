"""The one retry policy for service calls: which failures are worth another try, and the backoff.

Transient: rate limits (429), server errors (5xx), connection errors, the SDK's 410 "promise
expired", requests that complete failed for a server-side reason, and `InFlightFailure` (a
pipelined request failed after later ones were queued on top of it: the caller's unit of work is
redone from its last safe point). The real SDK already retries transient *submits* for up to 5
minutes; nothing retries a request that completed failed, and the local client retries nothing,
so loraexp retries both. Permanent failures (bad request, auth, billing, not found) stop the stage
at once with the service's message.

`Retry.call` and its async twin `Retry.acall` share the policy; `progress` turns "N tries" into
"N tries without progress" for long units (a training run rolled back to its last checkpoint).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import tinker
from tinker.lib.retryable_exception import RetryableException
from tinker.types import RequestErrorCategory

from loraexp.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
# what a service call can raise: the SDK's errors, and its 410 "promise expired" (not a TinkerError)
SERVICE_ERRORS: tuple[type[BaseException], ...] = (tinker.TinkerError, RetryableException)


class InFlightFailure(Exception):
    """A submitted request completed failed for a transient reason; later requests may already have run
    on top of it, so the only safe recovery is to redo the unit from its last safe point."""


def resolve(value: Any) -> Any:
    """The result of a Tinker future (or the value itself when it is not one)."""
    return value.result() if hasattr(value, "result") and callable(value.result) else value


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (InFlightFailure, tinker.RateLimitError, tinker.InternalServerError, tinker.APIConnectionError, RetryableException)):
        return True
    if isinstance(exc, tinker.RequestFailedError):
        return exc.category != RequestErrorCategory.User
    return False


class ServiceRefused(UserError):
    """A request the service refused for good (bad request, auth, not found, ...); `cause` is the SDK's exception."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


def permanent_error(exc: BaseException, what: str) -> ServiceRefused:
    """A one-line error for a failure that retrying cannot fix."""
    hints = {
        tinker.AuthenticationError: "check TINKER_API_KEY (it must start with tml-)",
        tinker.PermissionDeniedError: "check the key's project and permissions",
        tinker.NotFoundError: "the model or checkpoint does not exist (expired or deleted?)",
        tinker.BadRequestError: "the request is invalid for this service; see the message",
    }
    hint = next((text for kind, text in hints.items() if isinstance(exc, kind)), "see the message")
    return ServiceRefused(f"{what} failed permanently ({type(exc).__name__}: {exc}); {hint}", exc)


def await_or_raise(value: Any, what: str) -> Any:
    """The result of a request already in flight: a transient failure is an InFlightFailure, a permanent one a UserError."""
    try:
        return resolve(value)
    except SERVICE_ERRORS as exc:
        if is_transient(exc):
            raise InFlightFailure(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise permanent_error(exc, what) from None


def settle(*futures: Any) -> None:
    """Wait until every future has finished, successfully or not (its result is read later). Before a failure
    is raised the client's queue must be idle: work still queued on an abandoned client would run beside its
    replacement's, on the same cores (local client) or the same quota (service), for results nobody reads."""
    for future in futures:
        try:
            resolve(future)
        except Exception:  # noqa: BLE001 - only waiting; the caller reads each result and raises. Ctrl-C is not caught.
            pass


@dataclass(frozen=True)
class Retry:
    attempts: int = 8  # tries without progress; with the 2**n backoff below that is ~2 minutes of waiting
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds before retry number `attempt` (1-based): base * 2**(attempt-1), capped."""
        return min(self.base_delay_s * 2 ** (attempt - 1), self.max_delay_s)

    def _next(self, exc: BaseException, what: str, failures: int) -> float:
        """The delay before the next try, or the error that ends the unit."""
        if not is_transient(exc):
            raise permanent_error(exc, what) from None
        if failures >= self.attempts:
            raise UserError(f"{what} still failing after {failures} tries without progress ({type(exc).__name__}: {exc}); "
                            "rerun the same command later to resume") from None
        delay = self.delay(failures)
        log.warning("%s: %s: %s; retry %d/%d in %.1f s", what, type(exc).__name__, exc, failures, self.attempts - 1, delay)
        return delay

    def call(self, work: Callable[[], T], what: str, progress: Callable[[], Any] | None = None) -> T:
        """`work()`, retried on transient failures; a permanent one raises UserError at once.

        With `progress`, a try that moved it (e.g. the run's last checkpoint step) resets the count.
        """
        failures, mark = 0, progress() if progress else None
        while True:
            try:
                return work()
            except (*SERVICE_ERRORS, InFlightFailure) as exc:
                now = progress() if progress else None
                failures = 1 if now != mark else failures + 1
                mark = now
                time.sleep(self._next(exc, what, failures))

    async def acall(self, work: Callable[[], Awaitable[T]], what: str) -> T:
        """The async twin of `call`: awaits `work()` and sleeps without blocking the event loop."""
        failures = 0
        while True:
            try:
                return await work()
            except (*SERVICE_ERRORS, InFlightFailure) as exc:
                failures += 1
                await asyncio.sleep(self._next(exc, what, failures))


DEFAULT_RETRY = Retry()
