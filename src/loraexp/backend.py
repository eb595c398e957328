"""Connecting to a Tinker-shaped service: the real SDK (`backend = "tinker"`) or the in-process one (`"local"`).

Everything downstream calls the same methods on what `connect` returns; this is the only module
that constructs real tinker clients, and it stays a thin pass-through.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.local_tinker import LocalRestClient, LocalServiceClient

API_KEY_ENV = "TINKER_API_KEY"


def connect(contract: Contract) -> Any:
    """A service client for the contract's backend: tinker.ServiceClient or LocalServiceClient."""
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
    if isinstance(service, LocalServiceClient):
        return LocalRestClient(service.store)
    import tinker

    return tinker.RestClient()


def backend_name(service: Any) -> str:
    return "local" if isinstance(service, LocalServiceClient) else "tinker"
