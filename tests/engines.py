"""Test-only engines that misbehave the way self-hosted Tinker engines were measured to (shared/reference/self-hosted-tinker-engines.md):
each wraps the local client and changes one thing."""

from __future__ import annotations

from typing import Any

import tinker

from loraexp.local_tinker import LocalRestClient, LocalServiceClient
from loraexp.local_tinker.errors import bad_request, status_error
from loraexp.service import Service


class Ready:
    """A resolved future of a client."""

    def __init__(self, value: Any):
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value


class Engine:
    """Passes everything to the local service client; subclasses change one behaviour. Training clients are wrapped too."""

    def __init__(self, inner: LocalServiceClient):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def wrap(self, client: Any) -> Any:
        return client

    def create_lora_training_client(self, **kwargs: Any) -> Ready:
        return Ready(self.wrap(self.inner.create_lora_training_client(**kwargs).result()))

    def create_training_client_from_state_with_optimizer(self, path: str, **kwargs: Any) -> Ready:
        return Ready(self.wrap(self.inner.create_training_client_from_state_with_optimizer(path, **kwargs).result()))

    def create_training_client_from_state(self, path: str, **kwargs: Any) -> Ready:
        return Ready(self.wrap(self.inner.create_training_client_from_state(path, **kwargs).result()))


class ClientWrapper:
    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class IgnoresFlags(Engine):
    """SkyRL 0.4.0: accepts train_attn/train_mlp/train_unembed and trains q,k,v,o,gate,up,down whatever they say."""

    def create_lora_training_client(self, **kwargs: Any) -> Ready:
        return super().create_lora_training_client(**{**kwargs, "train_attn": True, "train_mlp": True, "train_unembed": False})


class IgnoresTtl(Engine):
    """SkyRL 0.4.0: save_state(ttl_seconds=...) works, the checkpoint never expires."""

    def wrap(self, client: Any) -> Any:
        wrapper = ClientWrapper(client)
        wrapper.save_state = lambda name, ttl_seconds=None, **kwargs: client.save_state(name, ttl_seconds=None, **kwargs)
        return wrapper


class RefusesTtl(Engine):
    """An engine whose save_state refuses any TTL."""

    def wrap(self, client: Any) -> Any:
        wrapper = ClientWrapper(client)

        def save_state(name: str, ttl_seconds: int | None = None, **kwargs: Any):
            if ttl_seconds is not None:
                raise bad_request("ttl_seconds is not supported", "save_weights")
            return client.save_state(name, **kwargs)

        wrapper.save_state = save_state
        return wrapper


class LacksRestoreWithOptimizer(Engine):
    """SkyRL 0.4.0 with SDK 0.38: create_training_client_from_state_with_optimizer answers 422."""

    def create_training_client_from_state_with_optimizer(self, path: str, **kwargs: Any) -> Ready:
        raise status_error(tinker.UnprocessableEntityError, 422, "model_id: Field required", "load_weights")


class Nondeterministic(Engine):
    """Greedy sampling that answers a prompt differently the second time it is asked."""

    def create_sampling_client(self, **kwargs: Any) -> Ready:
        sampler, seen = self.inner.create_sampling_client(**kwargs).result(), set()
        wrapper = ClientWrapper(sampler)

        def sample(prompt: tinker.ModelInput, num_samples: int, sampling_params: tinker.SamplingParams, **rest: Any):
            key = tuple(prompt.to_ints())
            params = sampling_params if key not in seen else sampling_params.model_copy(update={"max_tokens": 1})
            seen.add(key)
            return sampler.sample(prompt=prompt, num_samples=num_samples, sampling_params=params, **rest)

        wrapper.sample = sample
        return Ready(wrapper)


class ShortSamplerPaths(Engine):
    """SkyRL 0.4.0: sampler paths come back as tinker://<run>/<name>, without the sampler_weights/ segment."""

    def wrap(self, client: Any) -> Any:
        wrapper = ClientWrapper(client)

        def save_weights_for_sampler(name: str, **kwargs: Any) -> Ready:
            path = client.save_weights_for_sampler(name, **kwargs).result().path
            return Ready(tinker.types.SaveWeightsForSamplerResponse(path=path.replace("/sampler_weights/", "/")))

        wrapper.save_weights_for_sampler = save_weights_for_sampler
        return wrapper

    def create_sampling_client(self, model_path: str | None = None, **kwargs: Any) -> Any:
        if model_path is not None:
            run, name = model_path.removeprefix("tinker://").split("/", 1)
            assert "/" not in name, f"loraexp rebuilt or changed the engine's sampler path: {model_path}"
            model_path = f"tinker://{run}/sampler_weights/{name}"
        return self.inner.create_sampling_client(model_path=model_path, **kwargs)


def engine_service(engine_class: type[Engine], root, resolve_model=None) -> Service:
    local = LocalServiceClient(root, resolve_model=resolve_model)
    return Service(engine_class(local), lambda: LocalRestClient(local.store), "local")
