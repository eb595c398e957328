"""The local client against Tinker's semantics, checked on a random tiny Qwen3 (no demo base, no network)."""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tinker
import torch

from loraexp.service.datums import datum_from_row, mean_nll
from loraexp.local_tinker import LocalRestClient, LocalServiceClient
from loraexp.service.adapters import inspect_adapter
from tiny_qwen3 import EOS_ID, ManualClock, fixture_rows, make_tiny_qwen3

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
ADAM = tinker.AdamParams(learning_rate=1e-2)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture()
def service(tmp_path, clock) -> LocalServiceClient:
    return LocalServiceClient(tmp_path / "local_tinker", clock=clock)


@pytest.fixture(scope="module")
def data() -> list[tinker.Datum]:
    return [datum_from_row(row) for row in fixture_rows(6)]


def new_client(service, base_dir, seed=0, **flags):
    return service.create_lora_training_client(str(base_dir), rank=4, seed=seed, **flags).result()


def train(client, data, steps, pipelined=False):
    futures = []
    for _ in range(steps):
        futures += [client.forward_backward(data, "cross_entropy"), client.optim_step(ADAM)]
        if not pipelined:
            [future.result() for future in futures[-2:]]
    return [future.result() for future in futures]


def logprobs(client, data) -> list[np.ndarray]:
    return [output["logprobs"].to_numpy() for output in client.forward(data, "cross_entropy").result().loss_fn_outputs]


def assert_same(left: list[np.ndarray], right: list[np.ndarray]) -> None:
    assert all(np.array_equal(a, b) for a, b in zip(left, right, strict=True))


def direct_logprobs(model, data) -> list[np.ndarray]:
    """Per-datum log p(target) from a plain transformers forward, one datum at a time (no padding)."""
    with torch.no_grad():
        result = []
        for datum in data:
            logits = model(input_ids=torch.tensor([datum.model_input.to_ints()])).logits[0]
            targets = datum.loss_fn_inputs["target_tokens"].to_torch()
            result.append(torch.log_softmax(logits.float(), -1).gather(1, targets[:, None])[:, 0].numpy())
        return result


def test_forward_nll_equals_a_direct_transformers_computation(service, base_dir, data):
    from transformers import AutoModelForCausalLM

    client = new_client(service, base_dir)  # LoRA B starts at zero, so the model is the base model
    output = client.forward(data, "cross_entropy").result()
    expected = direct_logprobs(AutoModelForCausalLM.from_pretrained(base_dir).eval(), data)
    for got, want in zip(output.loss_fn_outputs, expected, strict=True):
        assert got["logprobs"].dtype == "float32"
        np.testing.assert_allclose(got["logprobs"].to_numpy(), want, atol=1e-5)
    nll_sum, weight_sum = mean_nll(output, data)
    weights = [d.loss_fn_inputs["weights"].to_numpy() for d in data]
    assert weight_sum == sum(w.sum() for w in weights)
    assert nll_sum == pytest.approx(-sum(float(w @ lp) for w, lp in zip(weights, expected)), rel=1e-5)
    assert output.metrics["loss:sum"] == pytest.approx(nll_sum, rel=1e-5)  # a sum over tokens and datums


@pytest.mark.parametrize("flags,targets", [
    ({"train_attn": True, "train_mlp": False, "train_unembed": False}, ATTN),
    ({"train_attn": True, "train_mlp": True, "train_unembed": False}, ATTN + MLP),
    ({"train_attn": False, "train_mlp": False, "train_unembed": True}, ["lm_head"]),
])
def test_trainable_parameters_equal_peft_for_the_flagged_modules(service, base_dir, flags, targets):
    import peft
    from transformers import AutoModelForCausalLM

    client = new_client(service, base_dir, **flags)
    reference = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), peft.LoraConfig(r=4, lora_alpha=32, target_modules=targets))
    facts = exported_adapter(service, client)
    assert facts.parameters == sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert set(facts.modules) == set(targets) and facts.ranks == (4,) and facts.lora_alpha == 32 and facts.lora_dropout == 0.0
    assert facts.untrained_kinds == facts.kinds  # B starts at zero: nothing trained yet
    assert client.get_info().lora_rank == 4 and client.get_info().model_id == client.model_id


def exported_adapter(service, client):
    """What the adapter behind save_weights_external really is, read from its tensors."""
    path = client.save_weights_external(f"facts-{client.model_id.replace(':', '-')}").result().path
    return inspect_adapter(service.store.resolve(path)[1])


def test_attention_only_adapter_is_smaller_than_all_layer(service, base_dir):
    attention_only = new_client(service, base_dir, train_mlp=False, train_unembed=False)
    all_layer = new_client(service, base_dir, train_mlp=True, train_unembed=False)
    assert 0 < exported_adapter(service, attention_only).parameters < exported_adapter(service, all_layer).parameters
    with pytest.raises(ValueError, match="At least one"):
        service.create_lora_training_client(str(base_dir), rank=4, train_mlp=False, train_attn=False, train_unembed=False)


def test_resume_from_state_with_optimizer_equals_the_uninterrupted_step(service, base_dir, data):
    uninterrupted = new_client(service, base_dir)
    train(uninterrupted, data, 2)
    state_path = uninterrupted.save_state("step-2").result().path
    assert state_path == f"tinker://{uninterrupted.model_id}/weights/step-2"
    train(uninterrupted, data, 1)

    resumed = service.create_training_client_from_state_with_optimizer(state_path).result()
    train(resumed, data, 1)
    assert_same(logprobs(resumed, data), logprobs(uninterrupted, data))

    weights_only = service.create_training_client_from_state(state_path).result()  # fresh AdamW: a different step
    train(weights_only, data, 1)
    assert not np.array_equal(logprobs(weights_only, data)[0], logprobs(uninterrupted, data)[0])


def test_pipelined_submission_gives_the_same_weights_as_sequential(service, base_dir, data):
    sequential, pipelined = new_client(service, base_dir, seed=3), new_client(service, base_dir, seed=3)
    train(sequential, data, 3)
    train(pipelined, data, 3, pipelined=True)
    assert_same(logprobs(pipelined, data), logprobs(sequential, data))
    other_seed = new_client(service, base_dir, seed=4)
    train(other_seed, data, 3)
    assert not np.array_equal(logprobs(other_seed, data)[0], logprobs(sequential, data)[0])


def test_gradients_accumulate_until_optim_step_and_forward_has_none(service, base_dir, data):
    whole, halves = new_client(service, base_dir), new_client(service, base_dir)
    whole.forward_backward(data, "cross_entropy")
    whole.optim_step(ADAM).result()
    halves.forward(data, "cross_entropy")  # gradient-free: must not add to the step
    halves.forward_backward(data[:3], "cross_entropy")
    halves.forward_backward(data[3:], "cross_entropy")
    halves.optim_step(ADAM).result()
    for a, b in zip(logprobs(whole, data), logprobs(halves, data)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_sampler_refuses_a_weights_path_with_the_service_error(service, base_dir):
    client = new_client(service, base_dir)
    state_path = client.save_state("s").result().path
    with pytest.raises(tinker.BadRequestError, match="^model_path must point to a sampler_weights checkpoint, got weights$") as caught:
        service.create_sampling_client(model_path=state_path).result()
    assert caught.value.status_code == 400
    sampler_path = client.save_weights_for_sampler("s").result().path
    assert sampler_path == f"tinker://{client.model_id}/sampler_weights/s"
    with pytest.raises(tinker.BadRequestError, match="weights checkpoint"):
        service.create_training_client_from_state(sampler_path).result()


def test_checkpoint_ttl_expiry_follows_the_injected_clock(service, base_dir, clock):
    client = new_client(service, base_dir)
    rest = LocalRestClient(service.store)
    short = client.save_state("short", ttl_seconds=3600).result().path
    kept = client.save_state("kept").result().path
    listed = {c.tinker_path: c for c in rest.list_checkpoints(client.model_id).result().checkpoints}
    assert listed[short].expires_at == clock.now + dt.timedelta(seconds=3600) and listed[kept].expires_at is None
    clock.advance(3599)
    service.create_training_client_from_state(short).result()
    clock.advance(1)
    with pytest.raises(tinker.NotFoundError, match="expired"):
        service.create_training_client_from_state_with_optimizer(short).result()
    assert [c.tinker_path for c in rest.list_checkpoints(client.model_id).result().checkpoints] == [kept]
    with pytest.raises(tinker.NotFoundError, match="not found"):  # expired means gone, not hidden
        service.create_training_client_from_state(short).result()
    rest.set_checkpoint_ttl_from_tinker_path(kept, 7200).result()
    clock.advance(7200)
    with pytest.raises(tinker.NotFoundError):
        rest.get_weights_info_by_tinker_path(kept).result()
    with pytest.raises(tinker.BadRequestError, match="ttl_seconds"):
        client.save_state("too-short", ttl_seconds=60).result()


def test_rest_client_reports_runs_flags_and_deletes(service, base_dir):
    client = new_client(service, base_dir, train_mlp=False, train_unembed=False)
    rest = LocalRestClient(service.store)
    path = client.save_state("a", user_metadata={"k": "v"}).result().path
    info = rest.get_weights_info_by_tinker_path(path).result()
    assert (info.lora_rank, info.train_attn, info.train_mlp, info.train_unembed) == (4, True, False, False)
    run = rest.get_training_run(client.model_id).result()
    assert run.last_checkpoint.tinker_path == path and run.last_checkpoint.user_metadata == {"k": "v"}
    rest.delete_checkpoint_from_tinker_path(path).result()
    assert rest.list_checkpoints(client.model_id).result().checkpoints == []
    with pytest.raises(tinker.NotFoundError):
        rest.get_training_run("nope:train:0").result()


def test_exported_peft_adapter_loads_in_peft_and_gives_the_same_logits(service, base_dir, data):
    import peft
    from transformers import AutoModelForCausalLM

    client = new_client(service, base_dir, train_unembed=False)
    train(client, data, 2)
    path = client.save_weights_external("final").result().path
    assert path == f"tinker://{client.model_id}/external_weights/final"
    urls = LocalRestClient(service.store).get_external_weights_urls(path).result().urls
    assert sorted(urls) == ["adapter_config.json", "adapter_model.safetensors"]
    adapter_dir = Path(urllib.request.url2pathname(urllib.parse.urlparse(urls["adapter_config.json"]).path)).parent
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    for got, want in zip(logprobs(client, data), direct_logprobs(model, data), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(tinker.BadRequestError, match="external_weights"):
        LocalRestClient(service.store).get_external_weights_urls(client.save_state("final").result().path).result()


def greedy_reference(model, prompt: list[int], steps: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_sampling_matches_transformers_and_honours_stop_and_max_tokens(service, base_dir, data):
    from transformers import AutoModelForCausalLM

    sampler = service.create_sampling_client(base_model=str(base_dir)).result()
    assert sampler.get_base_model() == str(base_dir)
    prompt = [5, 9, 33, 71]
    reference = greedy_reference(AutoModelForCausalLM.from_pretrained(base_dir).eval(), prompt, 12)
    greedy = tinker.SamplingParams(max_tokens=12, temperature=0.0, stop=[])
    result = sampler.sample(tinker.ModelInput.from_ints(prompt), 2, greedy).result()
    assert [s.tokens for s in result.sequences] == [reference, reference]
    assert {s.stop_reason for s in result.sequences} == {"length"}

    stop_token = reference[3]
    first = reference.index(stop_token)
    stopped = sampler.sample(tinker.ModelInput.from_ints(prompt), 1, tinker.SamplingParams(max_tokens=12, temperature=0.0, stop=[stop_token])).result()
    assert stopped.sequences[0].tokens == reference[: first + 1] and stopped.sequences[0].stop_reason == "stop"
    assert len(stopped.sequences[0].logprobs) == first + 1


def test_trained_sampler_decodes_its_weights_and_eos_stops_by_default(service, base_dir, data):
    client = new_client(service, base_dir)
    row = [7, 8, 9, 10, EOS_ID]  # teach the model to say "10 <eos>" after "7 8 9"
    datum = datum_from_row({"tokens": row, "weights": [0, 0, 0, 1, 1]})
    # Train until the model has learned it (each target token p > 0.99 under the post-step weights), not for a fixed
    # step count: Adam near zero loss spikes at chaotic moments that differ between CPUs (Xeon vs EPYC), and a fixed
    # count once stopped on a spike there. The test is about the sampler decoding these weights, not about the optimizer.
    for steps in range(1, 301):
        client.forward_backward([datum], "cross_entropy")
        client.optim_step(tinker.AdamParams(learning_rate=1e-2))
        if -min(logprobs(client, [datum])[0][-2:]) < 0.01:
            break
    assert -min(logprobs(client, [datum])[0][-2:]) < 0.01, f"not learned in {steps} steps"
    sampler = service.create_sampling_client(model_path=client.save_weights_for_sampler("taught").result().path).result()
    snapshot = client.save_weights_and_get_sampling_client().result()
    params = tinker.SamplingParams(max_tokens=8, temperature=0.0)
    for client_ in (sampler, snapshot):
        sequence = client_.sample(tinker.ModelInput.from_ints(row[:3]), 1, params).result().sequences[0]
        assert sequence.tokens == [10, EOS_ID] and sequence.stop_reason == "stop"


def test_futures_await_and_concurrent_samples_batch_to_the_same_tokens(service, base_dir, data):
    prompts = [[5 + i, 9, 33 + i] for i in range(6)] + [[40, 41, 42, 43, 44, 45, 46]]
    params = tinker.SamplingParams(max_tokens=6, temperature=0.0, stop=[])

    async def main():
        client = await service.create_lora_training_client(str(base_dir), rank=4, seed=0)
        fb = client.forward_backward(data, "cross_entropy")
        step = client.optim_step(ADAM)
        output, _ = await fb, await step
        sampler = await client.save_weights_and_get_sampling_client()
        results = await asyncio.gather(*[sampler.sample(tinker.ModelInput.from_ints(p), 1, params) for p in prompts])
        return output, sampler, [r.sequences[0].tokens for r in results]

    output, sampler, batched = asyncio.run(main())
    assert output.metrics["loss:sum"] > 0
    one_by_one = [sampler.sample(tinker.ModelInput.from_ints(p), 1, params).result().sequences[0].tokens for p in prompts]
    assert batched == one_by_one


def test_seeded_temperature_sampling_is_reproducible(service, base_dir):
    sampler = service.create_sampling_client(base_model=str(base_dir)).result()
    params = tinker.SamplingParams(max_tokens=10, temperature=1.0, seed=11, top_k=50, top_p=0.9, stop=[])
    draws = [sampler.sample(tinker.ModelInput.from_ints([3, 4, 5]), 3, params).result() for _ in range(2)]
    assert [s.tokens for s in draws[0].sequences] == [s.tokens for s in draws[1].sequences]
    assert len({tuple(s.tokens) for s in draws[0].sequences}) > 1  # seed + sample index: different draws


def test_unknown_base_model_is_the_services_not_found(service, tmp_path):
    with pytest.raises(tinker.NotFoundError, match="cannot load base model"):
        service.create_lora_training_client(str(tmp_path / "missing-model"), rank=4).result()
