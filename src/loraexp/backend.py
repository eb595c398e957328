"""Connecting to a Tinker-shaped service: the real SDK (`backend = "tinker"`) or the in-process one (`"local"`).

Everything downstream calls the same methods on what `connect` returns; this is the only module
that constructs real tinker clients, and it stays a thin pass-through.

Testing aid: `LORAEXP_FAULT_RATE` (0..1), `LORAEXP_FAULT_SEED` and `LORAEXP_FAULT_LATENCY_S` wrap the
service in `faults.FaultyClient`, so a whole CLI run can be driven through injected rate limits,
5xx, connection errors and failed requests. It is off unless set, and logged as a warning when on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.faults import FaultyClient
from loraexp.local_tinker import LocalRestClient, LocalServiceClient

log = logging.getLogger(__name__)
API_KEY_ENV = "TINKER_API_KEY"
FAULT_RATE_ENV, FAULT_SEED_ENV, FAULT_LATENCY_ENV = "LORAEXP_FAULT_RATE", "LORAEXP_FAULT_SEED", "LORAEXP_FAULT_LATENCY_S"


def connect(contract: Contract) -> Any:
    """A service client for the contract's backend (tinker.ServiceClient or LocalServiceClient), fault-injected if asked."""
    return with_injected_faults(_service(contract))


def _env_number(name: str, default: str, kind: type) -> Any:
    try:
        return kind(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"{name}={os.environ[name]!r} is not a number; unset it or give e.g. {name}={default}") from None


def with_injected_faults(service: Any) -> Any:
    """`service` wrapped in FaultyClient when LORAEXP_FAULT_RATE > 0 (a testing aid; never set it for real runs)."""
    rate = _env_number(FAULT_RATE_ENV, "0", float)
    latency = _env_number(FAULT_LATENCY_ENV, "0", float)
    if rate <= 0 and latency <= 0:
        return service
    if not 0 <= rate < 1:
        raise UserError(f"{FAULT_RATE_ENV} must be in [0, 1), got {rate}")
    seed = _env_number(FAULT_SEED_ENV, "0", int)
    log.warning("FAULT INJECTION ACTIVE (%s=%g, %s=%d, %s=%g): a testing aid; unset them for real runs",
                FAULT_RATE_ENV, rate, FAULT_SEED_ENV, seed, FAULT_LATENCY_ENV, latency)
    return FaultyClient(service, latency_s=latency, failure_rate=rate, seed=seed)


def _service(contract: Contract) -> Any:
    artifacts = Path(contract.experiment.artifacts_dir)
    if contract.experiment.backend == "local":
        return LocalServiceClient(root=artifacts / "local_tinker", cache_root=artifacts / "cache")
    key = os.environ.get(API_KEY_ENV, "")
    if not key:
        raise UserError(f"{API_KEY_ENV} is not set: export {API_KEY_ENV}=tml-... (from the Tinker console), or set experiment.backend = \"local\"")
    if not key.startswith(("tml-", "eyJ")):
        raise UserError(f"{API_KEY_ENV} does not look like a Tinker key (it must start with 'tml-'); copy it again from the Tinker console")
    import tinker

    return tinker.ServiceClient()


def rest_client(service: Any) -> Any:
    """The REST client beside a service client: tinker.RestClient() or a LocalRestClient on the same store."""
    if isinstance(service, FaultyClient):
        return service.sibling(rest_client(service.inner))
    if isinstance(service, LocalServiceClient):
        return LocalRestClient(service.store)
    import tinker

    return tinker.RestClient()


def backend_name(service: Any) -> str:
    if isinstance(service, FaultyClient):
        return backend_name(service.inner)
    return "local" if isinstance(service, LocalServiceClient) else "tinker"
