"""The real tinker SDK (`backend = "tinker"`) driven end to end offline, through a loopback stub of the service.

loraexp's own code (train_with_resume with pipelined steps, a validation + save_state cadence and a
resume from the last checkpoint, validation_nll, save_weights_for_sampler, sampling clients by
model_path and base model, eval.sample_one) runs once through `tinker.ServiceClient` -> HTTP ->
tests/tinker_stub.py -> LocalServiceClient, and once directly on a LocalServiceClient; the numbers
and the sampled tokens must agree. Pinned to tinker 0.38.0 (see tinker_stub.pin_reason).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tinker

from loraexp.files import JsonlWriter, read_jsonl, write_jsonl
from loraexp.contracts import Contract, load_contract
from loraexp.local_tinker import LocalServiceClient
from loraexp.service import Service, connect, local_service
from loraexp.service.datums import datum_from_row
from loraexp.stages.eval import generate_all, sample_one
from loraexp.training.loop import CHECKPOINTS, METRICS, train_with_resume, validation_nll
from loraexp.training.schedule import make_plan
from tinker_stub import TinkerStub, pin_reason
from tiny_qwen3 import EOS_ID, fixture_rows, make_tiny_qwen3

pytestmark = pytest.mark.skipif(pin_reason() is not None, reason=pin_reason() or "")

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
TOLERANCE = 1e-6
PROMPTS = [[5, 6, 7], [40, 41, 42, 43, 44], [9], [200, 3, 17, 88]]


class TokenIdText:
    """Stands in for a tokenizer in eval's prediction rows (the tiny model has none): token ids as text."""

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(token) for token in tokens if not (skip_special_tokens and token == EOS_ID))


def _is_loopback(host: Any) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return str(host) == "localhost"


@pytest.fixture()
def loopback_only(monkeypatch) -> list:
    """Every outgoing connection (and name lookup) in this test must stay on 127.0.0.1; the SDK runs on its own threads, so patch the socket class."""
    attempts: list = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(address: Any) -> None:
        attempts.append(address)
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            raise AssertionError(f"the offline SDK test tried to reach {address}")

    def guarded_connect(self, address):
        check(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        check(address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host):
            raise AssertionError(f"the offline SDK test tried to resolve {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


@pytest.fixture()
def tinker_stub(tmp_path, monkeypatch, loopback_only):
    """The stub on a free 127.0.0.1 port, serving a LocalServiceClient; the SDK pointed at it by environment."""
    local = LocalServiceClient(tmp_path / "stub-service")
    with TinkerStub(local, max_lifetime_s=120) as stub:
        monkeypatch.setenv("TINKER_API_KEY", "tml-dummy")
        monkeypatch.setenv("TINKER_BASE_URL", stub.base_url)
        monkeypatch.setenv("TINKER_TELEMETRY", "0")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
        yield stub
    with pytest.raises(OSError):  # stopped: the port no longer answers
        socket.create_connection(("127.0.0.1", int(stub.base_url.rsplit(":", 1)[1])), timeout=1).close()


def stub_contract(tmp_path: Path, base_dir: Path, backend_name: str) -> Contract:
    raw = load_contract(DEMO_CONFIG).model_dump(mode="json")
    raw["experiment"].update(backend=backend_name, artifacts_dir=str(tmp_path / f"artifacts-{backend_name}"), base_model=str(base_dir))
    raw["lora"]["rank"] = 4
    raw["train"].update(epochs=2, batch_size=4, eval_every=4, epoch_end_margin=1, learning_rate=1e-2)
    return Contract.model_validate(raw)


def drive(service: Service, contract: Contract, train: list[tinker.Datum], val: list[tinker.Datum], run_dir: Path) -> dict:
    """The same loraexp calls on either service; returns every number and token they produce."""
    plan = make_plan(contract, contract.train.learning_rate, contract.train.batch_size, len(train), seed=0)
    assert (plan.total_steps, plan.cadence, plan.request_shape) == (6, (3, 6), "batched_datums_pipelined")
    condition = contract.lora.conditions[1]
    run_dir.mkdir(parents=True)
    base, rank = contract.experiment.base_model, contract.lora.rank
    train_with_resume(service, base, rank, condition, plan, train, val, run_dir, "sdk-stub", progress=False)
    # a crash after step 6 was submitted but before its record was written: the rerun resumes from step 3's state
    write_jsonl(run_dir / CHECKPOINTS, read_jsonl(run_dir / CHECKPOINTS)[:1])
    records = train_with_resume(service, base, rank, condition, plan, train, val, run_dir, "sdk-stub", progress=False)

    client = service.resume_training_client(records[-1]["state_path"])
    val_nll, val_tokens = validation_nll(service, client, val, batch_size=2)
    step = client.forward_backward(train[:4], "cross_entropy")  # pipelined: optim_step submitted before either is awaited
    optim = client.optim_step(plan.adam_params(plan.total_steps))
    step_output, _ = step.result(), optim.result()
    after_nll, _ = validation_nll(service, client, val, batch_size=len(val))
    sampler_path = client.save_weights_for_sampler("final").result().path

    params = tinker.SamplingParams(max_tokens=8, temperature=0.0, stop=[EOS_ID])

    async def sample_all(sampler: Any) -> list[tinker.SampledSequence]:
        gate = asyncio.Semaphore(1)  # one request at a time: the local sampler then decodes each prompt alone on both paths
        return list(await asyncio.gather(*(sample_one(sampler, prompt, params, gate, service.retry) for prompt in PROMPTS)))

    tuned_sampler = service.sampling_client(model_path=sampler_path)
    tuned = asyncio.run(sample_all(tuned_sampler))
    base_sampler = asyncio.run(sample_all(service.sampling_client(base_model=contract.experiment.base_model)))
    # eval.run's own path, on the same sampler from a second event loop (as eval.run does for its determinism check)
    examples = [{"example_id": f"q{i}", "benchmark_index": i, "question": "?", "reference_answer": "42", "prompt": prompt} for i, prompt in enumerate(PROMPTS)]
    with JsonlWriter(run_dir / "predictions.jsonl", mode="w") as writer:
        asyncio.run(generate_all(tuned_sampler, examples, params, TokenIdText(), writer, concurrency=1, label="sdk-stub", progress=False, retry=service.retry))
    return {"predictions": sorted(read_jsonl(run_dir / "predictions.jsonl"), key=lambda row: row["example_id"]),
        "records": records, "metrics": read_jsonl(run_dir / METRICS), "val": (val_nll, val_tokens), "after_nll": after_nll,
        "step_logprobs": [out["logprobs"].to_numpy() for out in step_output.loss_fn_outputs], "step_loss": step_output.metrics["loss:sum"],
        "model_id": client.model_id, "sampler_path": sampler_path, "tuned": tuned, "base": base_sampler,
    }


def test_real_sdk_through_the_stub_matches_the_local_client(tmp_path, tinker_stub, loopback_only):
    base_dir = make_tiny_qwen3(tmp_path / "tiny-qwen3")
    rows = fixture_rows(16, seed=1)
    train, val = [datum_from_row(r) for r in rows[:12]], [datum_from_row(r) for r in rows[12:]]

    service = connect(stub_contract(tmp_path, base_dir, "tinker"))
    assert type(service.client) is tinker.ServiceClient and service.backend == "tinker"
    try:
        sdk = drive(service, stub_contract(tmp_path, base_dir, "tinker"), train, val, tmp_path / "sdk-run")
    finally:
        service.client.close("success").result()
    reference_service = local_service(LocalServiceClient(tmp_path / "reference-service"))
    ref = drive(reference_service, stub_contract(tmp_path, base_dir, "local"), train, val, tmp_path / "reference-run")

    # the SDK really spoke HTTP to the stub, only on loopback, and nothing was left unanswered
    session = tinker_stub.session_id
    assert loopback_only and all(isinstance(a, tuple) and a[0] == "127.0.0.1" for a in loopback_only)
    assert tinker_stub.unhandled == [] and tinker_stub.finished == [{"session_id": session, "reason": {"type": "success"}, "detail": None}]
    assert {"create_model", "load_weights", "forward_backward", "optim_step", "save_weights", "save_weights_for_sampler",
            "create_sampling_session", "asample", "retrieve_future"} <= set(tinker_stub.calls)

    # training: pipelined steps, the cadence's validation + save_state, and the resume from step 3 (a second model, by load_weights)
    assert [r["step"] for r in sdk["records"]] == [r["step"] for r in ref["records"]] == [3, 6]
    assert sdk["records"][0]["state_path"] == f"tinker://{session}:train:0/weights/step-000003"
    assert sdk["records"][1]["state_path"] == f"tinker://{session}:train:1/weights/step-000006"
    for ours, theirs in zip(sdk["records"], ref["records"]):
        assert ours["val_tokens"] == theirs["val_tokens"] and abs(ours["val_nll"] - theirs["val_nll"]) <= TOLERANCE
        assert ours["cumulative_tokens"] == theirs["cumulative_tokens"]
    assert [m["step"] for m in sdk["metrics"]] == [m["step"] for m in ref["metrics"]] == [1, 2, 3, 4, 5, 6]
    assert np.allclose([m["train_nll"] for m in sdk["metrics"]], [m["train_nll"] for m in ref["metrics"]], rtol=0, atol=TOLERANCE)
    assert [m["learning_rate"] for m in sdk["metrics"]] == [m["learning_rate"] for m in ref["metrics"]]

    # the resumed client (weights + Adam state): validation, one more pipelined step, validation again
    assert sdk["model_id"] == f"{session}:train:2"
    assert sdk["val"][1] == ref["val"][1] and abs(sdk["val"][0] - ref["val"][0]) <= TOLERANCE
    assert abs(sdk["val"][0] - sdk["records"][-1]["val_nll"]) <= TOLERANCE  # the loaded weights are step 6's
    assert len(sdk["step_logprobs"]) == 4 and all(a.shape == b.shape and np.allclose(a, b, rtol=0, atol=TOLERANCE)
                                                  for a, b in zip(sdk["step_logprobs"], ref["step_logprobs"]))
    assert abs(sdk["step_loss"] - ref["step_loss"]) <= 1e-4 * abs(ref["step_loss"])
    assert abs(sdk["after_nll"] - ref["after_nll"]) <= TOLERANCE and sdk["after_nll"] != sdk["val"][0]

    # sampling: a sampler checkpoint by model_path, and the base model, through eval.sample_one
    assert sdk["sampler_path"] == f"tinker://{session}:train:2/sampler_weights/final"
    for kind in ("tuned", "base"):
        assert [s.tokens for s in sdk[kind]] == [s.tokens for s in ref[kind]], kind
        assert [s.stop_reason for s in sdk[kind]] == [s.stop_reason for s in ref[kind]], kind
        assert all(np.allclose(a.logprobs, b.logprobs, rtol=0, atol=TOLERANCE) for a, b in zip(sdk[kind], ref[kind])), kind
        assert all(s.sequence_id for s in sdk[kind]) and all(len(s.tokens) >= 1 for s in sdk[kind])
    assert not all(np.allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-3) for a, b in zip(sdk["tuned"], sdk["base"]))  # the tuned weights were loaded
    assert sdk["predictions"] == ref["predictions"] and len(sdk["predictions"]) == len(PROMPTS)
    assert [row["generated_tokens"] for row in sdk["predictions"]] == [len(s.tokens) for s in sdk["tuned"]]
