"""Which service failures are worth retrying, and the backoff between tries.

Transient: rate limits (429), server errors (5xx), connection errors and requests that complete
failed for a server-side reason. The real SDK already retries transient *submits* for up to 5
minutes; nothing retries a request that completed failed, and the local client retries nothing,
so loraexp retries both. Permanent failures (bad request, auth, billing, not found) stop the stage
at once with the service's message.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, TypeVar

import tinker
from tinker.lib.retryable_exception import RetryableException
from tinker.types import RequestErrorCategory

from loraexp.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
# what a service call can raise: the SDK's errors, and its 410 "promise expired" (not a TinkerError)
SERVICE_ERRORS: tuple[type[BaseException], ...] = (tinker.TinkerError, RetryableException)

MAX_ATTEMPTS = 8  # 1 + 7 retries; with the 2**n backoff below that is ~2 minutes of waiting
BASE_DELAY_S = float(os.environ.get("LORAEXP_RETRY_BASE_DELAY_S", "1.0"))  # tests set it near 0
MAX_DELAY_S = 30.0


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (tinker.RateLimitError, tinker.InternalServerError, tinker.APIConnectionError, RetryableException)):
        return True
    if isinstance(exc, tinker.RequestFailedError):
        return exc.category != RequestErrorCategory.User
    return False


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): base * 2**(attempt-1), capped."""
    return min(BASE_DELAY_S * 2 ** (attempt - 1), MAX_DELAY_S)


def permanent_error(exc: BaseException, what: str) -> UserError:
    """A one-line error for a failure that retrying cannot fix."""
    hints = {
        tinker.AuthenticationError: "check TINKER_API_KEY (it must start with tml-)",
        tinker.PermissionDeniedError: "check the key's project and permissions",
        tinker.NotFoundError: "the model or checkpoint does not exist (expired or deleted?)",
        tinker.BadRequestError: "the request is invalid for this service; see the message",
    }
    hint = next((text for kind, text in hints.items() if isinstance(exc, kind)), "see the message")
    return UserError(f"{what} failed permanently ({type(exc).__name__}: {exc}); {hint}")


def call_with_retries(call: Callable[[], T], what: str, attempts: int = MAX_ATTEMPTS) -> T:
    """Run `call`; retry transient service failures with exponential backoff; raise permanent ones as UserError."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except SERVICE_ERRORS as exc:
            if not is_transient(exc):
                raise permanent_error(exc, what) from None
            if attempt == attempts:
                raise UserError(f"{what} still failing after {attempts} tries ({type(exc).__name__}: {exc}); rerun the same command later to resume") from None
            delay = backoff_delay(attempt)
            log.warning("%s: %s (%s); retry %d/%d in %.1f s", what, type(exc).__name__, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
