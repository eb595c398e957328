"""The Tinker surface in one place: connecting to a backend, the retry policy, and client creation.

`connect(contract)` returns a `Service` for the contract's backend: the real SDK
(`backend = "tinker"`, `tinker.ServiceClient` + `tinker.RestClient`) or the in-process client
(`"local"`). Every stage reaches the service through it, so the same code runs on both, and a test
hands a stage its own `Service` (a local client, or one wrapped in `loraexp.testing.faults`).

Every client a stage creates carries `user_metadata` {loraexp_stage, loraexp_run_id,
loraexp_git_commit} (plus condition and seed for training clients), so a run on the service
console can be traced back to the artifact that made it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from loraexp.artifacts import cache_root, git_state
from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.service.retry import DEFAULT_RETRY, Retry, resolve

if TYPE_CHECKING:
    from loraexp.contracts import LoraCondition

log = logging.getLogger(__name__)
API_KEY_ENV = "TINKER_API_KEY"


@dataclass(frozen=True)
class Service:
    """One Tinker-shaped endpoint: its service client, its REST client (made on first use) and the retry policy."""

    client: Any  # tinker.ServiceClient, LocalServiceClient, or a wrapper around either
    make_rest: Callable[[], Any]  # tinker.RestClient() talks to the network when constructed: only when needed
    backend: str  # "tinker" | "local"
    retry: Retry = DEFAULT_RETRY
    tags: tuple[tuple[str, str], ...] = ()  # user_metadata of every client made through this service
    _rest: list = field(default_factory=list, repr=False, compare=False)  # shared by tagged copies

    @property
    def rest(self) -> Any:
        if not self._rest:
            self._rest.append(self.make_rest())
        return self._rest[0]

    def tagged(self, stage: str, run_id: str) -> "Service":
        """The same service, tagging what it creates with the stage, the run and the loraexp commit."""
        commit = git_state()["commit"] or "unknown"
        return dataclasses.replace(self, tags=(("loraexp_stage", stage), ("loraexp_run_id", run_id), ("loraexp_git_commit", commit)))

    def metadata(self, **extra: object) -> dict[str, str]:
        return {**dict(self.tags), **{key: str(value) for key, value in extra.items()}}

    def call(self, request: Callable[[], Any], what: str) -> Any:
        """Submit a request and wait for its result, retrying transient failures (the request must be safe to redo)."""
        return self.retry.call(lambda: resolve(request()), what)

    def submit(self, request: Callable[[], Any], what: str) -> Any:
        """Submit a request (retrying a refused submission) and return its future without waiting."""
        return self.retry.call(request, what)

    def new_training_client(self, base_model: str, rank: int, seed: int, condition: "LoraCondition") -> Any:
        """A fresh LoRA training client for one condition (the same call on Tinker and on the local client)."""
        return self.call(lambda: self.client.create_lora_training_client(
            base_model=base_model, rank=rank, seed=seed, train_attn=condition.train_attn, train_mlp=condition.train_mlp,
            train_unembed=condition.train_unembed, user_metadata=self.metadata(loraexp_condition=condition.name, loraexp_seed=seed),
        ), f"create_lora_training_client ({condition.name}, seed {seed})")

    def resume_training_client(self, state_path: str) -> Any:
        """A training client at a `weights/` checkpoint with its optimizer state: the resume path."""
        return self.call(lambda: self.client.create_training_client_from_state_with_optimizer(state_path, user_metadata=self.metadata()),
                         f"load {state_path}")

    def weights_training_client(self, state_path: str) -> Any:
        """A training client at a `weights/` checkpoint, optimizer fresh (for exporting weights)."""
        return self.call(lambda: self.client.create_training_client_from_state(state_path, user_metadata=self.metadata()), f"load {state_path}")

    def sampling_client(self, model_path: str | None = None, base_model: str | None = None) -> Any:
        """A sampler on a checkpoint's sampler path (taken as the engine returned it), or on the base model."""
        if model_path is None:
            return self.call(lambda: self.client.create_sampling_client(base_model=base_model), "create_sampling_client (base model)")
        what = f"create_sampling_client {model_path} (it must be a sampler path: the sampler_path in exports.json)"
        return self.call(lambda: self.client.create_sampling_client(model_path=model_path), what)


def connect(contract: Contract) -> Service:
    """The service of the contract's backend: the in-process client, or the real SDK (needs TINKER_API_KEY)."""
    if contract.experiment.backend == "local":
        from loraexp.local_tinker import LocalServiceClient

        return local_service(LocalServiceClient(root=Path(contract.experiment.artifacts_dir) / "local_tinker", runtime=runtime_of(contract),
                                                resolve_model=base_model_resolver(cache_root(contract))))
    key = os.environ.get(API_KEY_ENV, "")
    if not key:
        raise UserError(f"{API_KEY_ENV} is not set: export {API_KEY_ENV}=tml-... (from the Tinker console), or set experiment.backend = \"local\"")
    if not key.startswith(("tml-", "eyJ")):
        raise UserError(f"{API_KEY_ENV} does not look like a Tinker key (it must start with 'tml-'); copy it again from the Tinker console")
    import tinker

    endpoint = {"base_url": contract.experiment.base_url} if contract.experiment.base_url else {}  # unset: TINKER_BASE_URL, else hosted
    return Service(tinker.ServiceClient(**endpoint), lambda: tinker.RestClient(**endpoint), "tinker")


def runtime_of(contract: Contract) -> Any:
    """The local client's Runtime from the contract's [local] section (absent: float32 on CPU, bfloat16 on CUDA, sdpa)."""
    from loraexp.local_tinker.model import Runtime

    if contract.local is None:
        return Runtime()
    return Runtime(**contract.local.model_dump(exclude={"memory_headroom"}))  # every other [local] field is a Runtime field


def local_service(local: Any) -> Service:
    """A Service on an in-process LocalServiceClient (and the REST client over its checkpoint store)."""
    from loraexp.local_tinker import LocalRestClient

    return Service(local, lambda: LocalRestClient(local.store), "local")


def base_model_resolver(cache_root: Path) -> Callable[[str], str]:
    """experiment.base_model -> what from_pretrained reads: the offline demo base is built (once) under the cache."""
    def resolve_base_model(name: str) -> str:
        from loraexp.demo.base_model import DEMO_BASE_MODEL, ensure_demo_base

        if name == DEMO_BASE_MODEL:
            return str(ensure_demo_base(cache_root))
        if Path(name).expanduser().is_dir():
            return str(Path(name).expanduser())
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise UserError(f"base model directory {name} does not exist; set experiment.base_model to an existing HF model dir, an HF id, or {DEMO_BASE_MODEL!r}")
        return name  # an HF id: from_pretrained reads the HF cache (or the Hub)

    return resolve_base_model
