"""`LocalServiceClient` and `LocalRestClient`: tinker.ServiceClient / tinker.RestClient, in process.

Same method names, arguments and return types as tinker 0.38: `create_*_client` return a future of
the client (call `.result()` or `await` it), REST calls return resolved futures, and refusals are
tinker's own exceptions (BadRequestError for a sampler pointed at a `weights/` path, NotFoundError
for a missing or expired checkpoint).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture

from loraexp.local_tinker import model as lora
from loraexp.local_tinker.errors import bad_request, completed_future
from loraexp.local_tinker.numerics import warm_up_vector_math
from loraexp.local_tinker.sampling import LocalSamplingClient
from loraexp.local_tinker.store import METADATA, CheckpointStore, Clock, utc_now
from loraexp.local_tinker.training import LocalTrainingClient

EXTERNAL_URL_SECONDS = 3600  # how long get_external_weights_urls' links are declared valid


class LocalServiceClient:
    """The in-process service: training runs and checkpoints under `root`.

    `resolve_model` maps a base model name to what `from_pretrained` reads (default: the name itself,
    a local dir or an HF id); the caller uses it to build models the client should not know about.
    """

    def __init__(self, root: Path | str, clock: Clock = utc_now, runtime: lora.Runtime = lora.Runtime(),
                 resolve_model: Callable[[str], str] | None = None):
        warm_up_vector_math()  # before any worker thread runs the model (see local_tinker/numerics.py)
        self.root = Path(root)
        self.store = CheckpointStore(self.root, clock)
        self.runtime = runtime
        self.device = runtime.torch_device
        self.session_id = uuid.uuid4().hex[:8]
        self._run_numbers = itertools.count()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-tinker-loader")
        self._resolve_model = resolve_model or (lambda name: name)  # base model name -> what from_pretrained reads
        self._sources: dict[str, str] = {}
        self._sources_lock = threading.Lock()

    def __enter__(self) -> "LocalServiceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self._loader.shutdown(wait=False)

    # ---- training clients ------------------------------------------------------------------------
    def create_lora_training_client(self, base_model: str, rank: int = 32, seed: int | None = None, train_mlp: bool = True,
                                    train_attn: bool = True, train_unembed: bool = True, user_metadata: dict[str, str] | None = None,
                                    optimizer: types.OptimizerConfig | None = None) -> APIFuture[LocalTrainingClient]:
        """A fresh LoRA run; its init is seeded from `seed` (a random seed when None)."""
        if not (train_mlp or train_attn or train_unembed):
            raise ValueError("At least one of train_mlp, train_attn, or train_unembed must be True")

        def create() -> LocalTrainingClient:
            if optimizer is not None and optimizer.type != "adamw":
                raise bad_request(f"the local backend implements AdamW only, got optimizer {optimizer.type!r}", "create_model")
            spec = lora.LoraSpec(base_model, self._source(base_model), rank, seed if seed is not None else int.from_bytes(os.urandom(4), "big"),
                                 train_mlp, train_attn, train_unembed)
            return self._new_client(spec, user_metadata)._build()

        return AwaitableConcurrentFuture(self._loader.submit(create))

    def create_training_client_from_state(self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None,
                                          weights_access_token: str | None = None, optimizer: types.OptimizerConfig | None = None) -> APIFuture[LocalTrainingClient]:
        """A new run starting from a `weights/` checkpoint's adapter, with a fresh optimizer."""
        return AwaitableConcurrentFuture(self._loader.submit(self._from_state, path, user_metadata, False))

    def create_training_client_from_state_with_optimizer(self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None,
                                                         weights_access_token: str | None = None) -> APIFuture[LocalTrainingClient]:
        """A new run resuming a `weights/` checkpoint exactly: adapter and AdamW state (step counts included)."""
        return AwaitableConcurrentFuture(self._loader.submit(self._from_state, path, user_metadata, True))

    def _from_state(self, path: str, user_metadata: dict[str, str] | None, with_optimizer: bool) -> LocalTrainingClient:
        parsed, directory, meta = self.store.resolve(path)
        if parsed.checkpoint_type != "training":
            raise bad_request(f"path must point to a weights checkpoint (save_state), got {parsed.checkpoint_id.split('/')[0]}", "load_weights")
        spec = lora.LoraSpec(**{field.name: meta[field.name] for field in dataclasses.fields(lora.LoraSpec)})
        return self._new_client(spec, user_metadata)._build(directory, with_optimizer)

    def _new_client(self, spec: lora.LoraSpec, user_metadata: dict[str, str] | None) -> LocalTrainingClient:
        run_id = f"{self.session_id}:train:{next(self._run_numbers)}"
        self.store.write_run(run_id, {**dataclasses.asdict(spec), "user_metadata": user_metadata})
        return LocalTrainingClient(self, run_id, spec)

    def _source(self, base_model: str) -> str:
        with self._sources_lock:
            if base_model not in self._sources:
                self._sources[base_model] = self._resolve_model(base_model)
            return self._sources[base_model]

    # ---- sampling clients ------------------------------------------------------------------------
    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None, retry_config: Any = None,
                               record_stability_info: bool = False) -> APIFuture[LocalSamplingClient]:
        """A sampler on a `sampler_weights/` checkpoint, or on the bare base model."""
        if (model_path is None) == (base_model is None):
            raise ValueError("Exactly one of model_path or base_model must be provided")
        if model_path is not None and not model_path.startswith("tinker://"):
            raise ValueError(f"model_path must start with 'tinker://', got {model_path!r}")
        return AwaitableConcurrentFuture(self._loader.submit(self._sampler, model_path, base_model))

    def _sampler(self, model_path: str | None, base_model: str | None) -> LocalSamplingClient:
        if model_path is None:
            source = self._source(base_model)
            return LocalSamplingClient(lora.load_base_model(source, self.runtime), base_model, source, None, self.runtime.sample_token_budget)
        parsed, directory, meta = self.store.resolve(model_path)
        if parsed.checkpoint_type != "sampler":
            segment = parsed.checkpoint_id.split("/")[0]
            raise bad_request(f"model_path must point to a sampler_weights checkpoint, got {segment}", "create_sampling_session")
        spec = lora.LoraSpec(**{field.name: meta[field.name] for field in dataclasses.fields(lora.LoraSpec)})
        return self._sampling_client(spec, lambda model: lora.load_adapter_weights(model, directory), model_path)

    def _sampler_from_adapter_state(self, spec: lora.LoraSpec, state: dict[str, torch.Tensor]) -> LocalSamplingClient:
        from peft.utils import set_peft_model_state_dict

        return self._sampling_client(spec, lambda model: set_peft_model_state_dict(model, state), None)

    def _sampling_client(self, spec: lora.LoraSpec, load: Callable[[torch.nn.Module], Any], model_path: str | None) -> LocalSamplingClient:
        model = lora.build_lora_model(spec, self.runtime, training=False)
        load(model)
        # merging is faster to decode; a LoRA on a *tied* lm_head would also change the input embedding
        if not (spec.train_unembed and getattr(model.config, "tie_word_embeddings", False)):
            model = model.merge_and_unload()
        return LocalSamplingClient(model, spec.base_model, spec.base_source, model_path, self.runtime.sample_token_budget)


class LocalRestClient:
    """tinker.RestClient's checkpoint and run methods over the same store; every call returns a resolved future."""

    def __init__(self, store: CheckpointStore):
        self.store = store

    def list_checkpoints(self, training_run_id: str) -> APIFuture[types.CheckpointsListResponse]:
        return completed_future(lambda: types.CheckpointsListResponse(
            checkpoints=[self._checkpoint(meta) for meta in self.store.list(training_run_id)], cursor=None))

    def get_training_run(self, training_run_id: str, access_scope: str = "owned") -> APIFuture[types.TrainingRun]:
        return completed_future(lambda: self._training_run(training_run_id))

    def get_training_run_by_tinker_path(self, tinker_path: str, access_scope: str = "owned") -> APIFuture[types.TrainingRun]:
        return completed_future(lambda: self._training_run(self.store.resolve(tinker_path)[0].training_run_id))

    def get_weights_info_by_tinker_path(self, tinker_path: str) -> APIFuture[types.WeightsInfoResponse]:
        def info() -> types.WeightsInfoResponse:
            meta = self.store.resolve(tinker_path)[2]
            return types.WeightsInfoResponse(base_model=meta["base_model"], is_lora=True, lora_rank=meta["rank"],
                                             train_mlp=meta["train_mlp"], train_attn=meta["train_attn"], train_unembed=meta["train_unembed"])

        return completed_future(info)

    def set_checkpoint_ttl_from_tinker_path(self, tinker_path: str, ttl_seconds: int | None) -> APIFuture[None]:
        return completed_future(lambda: self.store.set_ttl(tinker_path, ttl_seconds))

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> APIFuture[None]:
        return completed_future(lambda: self.store.delete(tinker_path))

    def get_server_capabilities(self) -> APIFuture[types.GetServerCapabilitiesResponse]:
        """The local client serves any HF causal LM it can load: it lists none (the probe then checks by creating a client)."""
        return completed_future(lambda: types.GetServerCapabilitiesResponse(supported_models=[]))

    def get_external_weights_urls(self, tinker_path: str) -> APIFuture[types.ExternalWeightsUrlsResponse]:
        """`file://` URLs of an external_weights checkpoint's files (the service hands out signed HTTPS URLs)."""
        def urls() -> types.ExternalWeightsUrlsResponse:
            parsed, directory, _ = self.store.resolve(tinker_path)
            if parsed.checkpoint_type != "external":
                raise bad_request(f"get_external_weights_urls accepts external_weights paths only, got {tinker_path}", "external_weights_urls")
            files = {path.relative_to(directory).as_posix(): path.resolve().as_uri()
                     for path in sorted(directory.rglob("*")) if path.is_file() and path.name != METADATA}
            return types.ExternalWeightsUrlsResponse(urls=files, expires=self.store.clock() + dt.timedelta(seconds=EXTERNAL_URL_SECONDS))

        return completed_future(urls)

    def _checkpoint(self, meta: dict[str, Any]) -> types.Checkpoint:
        directory = self.store.root / meta["training_run_id"] / meta["tinker_path"].split("/", 3)[3]
        expires = meta.get("expires_at")
        return types.Checkpoint(
            checkpoint_id=meta["tinker_path"].split("/", 3)[3], checkpoint_type=meta["checkpoint_type"],
            time=dt.datetime.fromisoformat(meta["created_at"]), tinker_path=meta["tinker_path"],
            size_bytes=sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()),
            user_metadata=meta.get("user_metadata"), expires_at=dt.datetime.fromisoformat(expires) if expires else None,
        )

    def _training_run(self, run_id: str) -> types.TrainingRun:
        info = self.store.read_run(run_id)
        checkpoints = [self._checkpoint(meta) for meta in self.store.list(run_id)]
        last = {kind: next((c for c in reversed(checkpoints) if c.checkpoint_type == kind), None) for kind in ("training", "sampler")}
        times = [dt.datetime.fromisoformat(info["created_at"])] + [c.time for c in checkpoints]
        return types.TrainingRun(training_run_id=run_id, base_model=info["base_model"], model_owner="local", is_lora=True,
                                 lora_rank=info["rank"], last_request_time=max(times), last_checkpoint=last["training"],
                                 last_sampler_checkpoint=last["sampler"], user_metadata=info.get("user_metadata"))
