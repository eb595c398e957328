"""`python -m loraexp.testing.cli <command> ...`: the loraexp CLI with injected service faults (a testing aid).

Reads LORAEXP_FAULT_RATE (0..1), LORAEXP_FAULT_SEED, LORAEXP_FAULT_LATENCY_S and LORAEXP_RETRY_BASE_DELAY_S,
wraps the service every stage connects to in `faults.FaultyClient`, and runs the real commands, so a
whole `run` can be driven through rate limits, 5xx, connection errors and requests that complete failed.
The production CLI never reads these variables.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from loraexp.cli import CliContext, app
from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.service import Service, connect
from loraexp.service.retry import Retry
from loraexp.testing.faults import faulty_service

log = logging.getLogger("loraexp.testing")
FAULT_RATE_ENV, FAULT_SEED_ENV, FAULT_LATENCY_ENV, RETRY_DELAY_ENV = "LORAEXP_FAULT_RATE", "LORAEXP_FAULT_SEED", "LORAEXP_FAULT_LATENCY_S", "LORAEXP_RETRY_BASE_DELAY_S"


def _env_number(name: str, default: str, kind: type) -> Any:
    try:
        return kind(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"{name}={os.environ[name]!r} is not a number; unset it or give e.g. {name}={default}") from None


def connect_with_faults(contract: Contract) -> Service:
    """The contract's service, wrapped under the fault plan of the environment."""
    rate, latency = _env_number(FAULT_RATE_ENV, "0", float), _env_number(FAULT_LATENCY_ENV, "0", float)
    if not 0 <= rate < 1:
        raise UserError(f"{FAULT_RATE_ENV} must be in [0, 1), got {rate}")
    seed, delay = _env_number(FAULT_SEED_ENV, "0", int), _env_number(RETRY_DELAY_ENV, "1.0", float)
    log.warning("FAULT INJECTION ACTIVE (%s=%g, %s=%d, %s=%g): a testing aid", FAULT_RATE_ENV, rate, FAULT_SEED_ENV, seed, FAULT_LATENCY_ENV, latency)
    service = dataclasses.replace(connect(contract), retry=Retry(base_delay_s=delay))
    return faulty_service(service, latency_s=latency, failure_rate=rate, seed=seed)


def main() -> None:
    app(obj=CliContext(connect=connect_with_faults))


if __name__ == "__main__":
    main()
