"""Tinker's own exception classes, built the way the SDK builds them (an httpx response behind each status error)."""

from __future__ import annotations

import concurrent.futures
from typing import Callable, TypeVar

import httpx
import tinker
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

T = TypeVar("T")
LOCAL_URL = "http://local-tinker.invalid/api/v1"


def status_error(cls: type[tinker.APIStatusError], status: int, message: str, endpoint: str = "") -> tinker.APIStatusError:
    """`cls(message, response, body)` with a real httpx.Response carrying `status`, as the SDK raises it."""
    request = httpx.Request("POST", f"{LOCAL_URL}/{endpoint}")
    body = {"detail": message}
    return cls(message, response=httpx.Response(status, request=request, json=body), body=body)


def bad_request(message: str, endpoint: str = "") -> tinker.BadRequestError:
    return status_error(tinker.BadRequestError, 400, message, endpoint)  # type: ignore[return-value]


def not_found(message: str, endpoint: str = "") -> tinker.NotFoundError:
    return status_error(tinker.NotFoundError, 404, message, endpoint)  # type: ignore[return-value]


def conflict(message: str, endpoint: str = "") -> tinker.ConflictError:
    return status_error(tinker.ConflictError, 409, message, endpoint)  # type: ignore[return-value]


def connection_error(message: str = "Connection error.", endpoint: str = "") -> tinker.APIConnectionError:
    return tinker.APIConnectionError(request=httpx.Request("POST", f"{LOCAL_URL}/{endpoint}"), message=message)


def completed_future(work: Callable[[], T]) -> AwaitableConcurrentFuture[T]:
    """Run `work` now and return its result (or its exception) as an already-resolved APIFuture."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    try:
        future.set_result(work())
    except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future, as the SDK does
        future.set_exception(exc)
    return AwaitableConcurrentFuture(future)
