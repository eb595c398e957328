"""`LocalTrainingClient`: tinker.TrainingClient's surface on one worker thread per client.

Every call returns an APIFuture at once and runs on the client's single worker, in submission
order, so pipelined submission behaves as on the service: a save issued after N submitted steps
snapshots the weights after all N. Gradients add up over forward_backward calls until optim_step.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture

from loraexp.local_tinker import model as lora
from loraexp.local_tinker.errors import bad_request

if TYPE_CHECKING:
    from loraexp.local_tinker.sampling import LocalSamplingClient
    from loraexp.local_tinker.service import LocalServiceClient

T = TypeVar("T")


class LocalTrainingClient:
    """One LoRA training run: model, AdamW state and accumulated gradients live on its worker thread."""

    def __init__(self, service: "LocalServiceClient", run_id: str, spec: lora.LoraSpec):
        self.service = service
        self.model_id = run_id
        self.spec = spec
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"local-tinker-{run_id}")
        self._model: torch.nn.Module | None = None
        self._optimizer: torch.optim.AdamW | None = None

    # ---- construction (runs on the worker; see LocalServiceClient) --------------------------------
    def _build(self, state_dir: Path | None = None, with_optimizer: bool = False) -> "LocalTrainingClient":
        self._model = lora.build_lora_model(self.spec, self.service.runtime)
        if state_dir is not None:
            lora.load_adapter_weights(self._model, state_dir)
        # lr and betas are set from AdamParams on every optim_step
        self._optimizer = torch.optim.AdamW(lora.trainable_parameters(self._model), lr=0.0)
        if with_optimizer:
            saved = torch.load(state_dir / lora.OPTIMIZER_STATE, map_location=self.service.device, weights_only=True)
            self._optimizer.load_state_dict(saved)
        return self

    def _submit(self, work: Callable[..., T], *args: Any) -> APIFuture[T]:
        return AwaitableConcurrentFuture(self._worker.submit(work, *args))

    # ---- training --------------------------------------------------------------------------------
    def forward_backward(self, data: list[types.Datum], loss_fn: types.LossFnType,
                         loss_fn_config: Mapping[str, float | str] | None = None) -> APIFuture[types.ForwardBackwardOutput]:
        """Summed cross-entropy over tokens and datums; gradients accumulate until optim_step."""
        return self._submit(self._cross_entropy, list(data), loss_fn, True)

    def forward(self, data: list[types.Datum], loss_fn: types.LossFnType,
                loss_fn_config: Mapping[str, float | str] | None = None) -> APIFuture[types.ForwardBackwardOutput]:
        """Same loss and outputs as forward_backward, without gradients (validation NLL)."""
        return self._submit(self._cross_entropy, list(data), loss_fn, False)

    def optim_step(self, optim_params: types.OptimParams | None = None, *,
                   adam_params: types.AdamParams | None = None) -> APIFuture[types.OptimStepResponse]:
        params = adam_params or optim_params or types.AdamParams()
        return self._submit(self._adamw_step, params)

    def _cross_entropy(self, data: list[types.Datum], loss_fn: str, backward: bool) -> types.ForwardBackwardOutput:
        if loss_fn != "cross_entropy":
            raise bad_request(f"the local backend implements loss_fn 'cross_entropy' only, got {loss_fn!r}", "forward_backward")
        batch = lora.batch_datums(data, self.service.device)
        with torch.set_grad_enabled(backward):
            logprobs = lora.target_logprobs(self._model, batch)
            loss = -(logprobs * batch.weights).sum()
            if backward:
                loss.backward()
        return lora.cross_entropy_output(logprobs, loss, batch)

    def _adamw_step(self, params: types.OptimParams) -> types.OptimStepResponse:
        if not isinstance(params, types.AdamParams):
            raise bad_request(f"the local backend implements AdamW only (AdamParams), got {type(params).__name__}", "optim_step")
        for group in self._optimizer.param_groups:
            group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps, weight_decay=params.weight_decay)
        if params.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self._optimizer.param_groups[0]["params"], params.grad_clip_norm)
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return types.OptimStepResponse(metrics={})

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_state(self, name: str, ttl_seconds: int | None = None, overwrite: bool = False,
                   user_metadata: dict[str, str] | None = None) -> APIFuture[types.SaveWeightsResponse]:
        """Adapter + AdamW state (step counts included), full precision: the resume path."""
        def write(directory: Path) -> None:
            lora.save_adapter(self._model, directory)
            torch.save(self._optimizer.state_dict(), directory / lora.OPTIMIZER_STATE)

        return self._submit(lambda: types.SaveWeightsResponse(
            path=self._save("training", name, write, ttl_seconds, overwrite, user_metadata), type="save_weights"))

    def save_weights_for_sampler(self, name: str, ttl_seconds: int | None = None,
                                 user_metadata: dict[str, str] | None = None) -> APIFuture[types.SaveWeightsForSamplerResponse]:
        return self._submit(lambda: types.SaveWeightsForSamplerResponse(
            path=self._save("sampler", name, self._write_adapter, ttl_seconds, True, user_metadata)))

    def save_weights_external(self, name: str, ttl_seconds: int | None = None,
                              age_encryption_recipients: list[str] | None = None) -> APIFuture[types.SaveWeightsExternalResponse]:
        """A PEFT adapter dir (adapter_config.json + adapter_model.safetensors) at external_weights/<name>."""
        if age_encryption_recipients:
            raise bad_request("the local backend does not encrypt external weights; pass age_encryption_recipients=None", "save_weights_external")
        return self._submit(lambda: types.SaveWeightsExternalResponse(
            path=self._save("external", name, self._write_adapter, ttl_seconds, True, None)))

    def save_weights_and_get_sampling_client(self, name: str | None = None, retry_config: Any = None,
                                             record_stability_info: bool = False, kind: str = "snapshot") -> APIFuture["LocalSamplingClient"]:
        """An ephemeral sampler on a snapshot of the weights after every request submitted so far."""
        if kind != "snapshot":
            raise bad_request(f"the local backend supports kind='snapshot' only, got {kind!r}")
        from peft.utils import get_peft_model_state_dict

        def snapshot() -> "LocalSamplingClient":
            state = {key: value.detach().clone() for key, value in get_peft_model_state_dict(self._model, save_embedding_layers=False).items()}
            return self.service._sampler_from_adapter_state(self.spec, state)

        return self._submit(snapshot)

    def create_sampling_client(self, model_path: str, retry_config: Any = None,
                               record_stability_info: bool = False) -> APIFuture["LocalSamplingClient"]:
        return self.service.create_sampling_client(model_path=model_path)

    def _write_adapter(self, directory: Path) -> None:
        lora.save_adapter(self._model, directory)

    def _save(self, kind: str, name: str, write: Callable[[Path], None], ttl_seconds: int | None,
              overwrite: bool, user_metadata: dict[str, str] | None) -> str:
        meta = {**dataclasses.asdict(self.spec), "user_metadata": user_metadata}
        return self.service.store.save(self.model_id, kind, name, write, meta, ttl_seconds, overwrite)

    # ---- info ------------------------------------------------------------------------------------
    def get_info(self) -> types.GetInfoResponse:
        return types.GetInfoResponse(
            type="get_info", model_id=self.model_id, is_lora=True, lora_rank=self.spec.rank, model_name=self.spec.base_model,
            model_data=types.ModelData(model_name=self.spec.base_model, tokenizer_id=self.spec.base_source),
        )

    def get_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.spec.base_source)
