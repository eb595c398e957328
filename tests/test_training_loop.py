"""The shared training loop on the local client: exact resume after a crash, request shapes, faults, export expiry."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import tinker

import dataclasses

from loraexp.files import read_jsonl
from loraexp.contracts import Contract, load_contract
from loraexp.errors import UserError
from loraexp.local_tinker import LocalServiceClient
from loraexp.service import Service, local_service
from loraexp.service.datums import datum_from_row
from loraexp.service.retry import Retry
from loraexp.stages import export
from loraexp.testing.faults import faulty_service
from loraexp.training.loop import select_checkpoint, train_with_resume
from loraexp.training.schedule import make_plan
from tiny_qwen3 import fixture_rows, make_tiny_qwen3

VOLATILE = {"seconds", "state_path", "expires_at"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="module")
def datums() -> tuple[list[tinker.Datum], list[tinker.Datum]]:
    rows = fixture_rows(26, seed=1)
    return [datum_from_row(r) for r in rows[:21]], [datum_from_row(r) for r in rows[21:]]


def tiny_contract(tmp_path: Path, base_dir: Path, **train: object) -> Contract:
    raw = load_contract("configs/demo.toml").model_dump(mode="json")
    raw["experiment"].update(artifacts_dir=str(tmp_path / "artifacts"), base_model=str(base_dir))
    raw["lora"]["rank"] = 4
    raw["train"].update(epochs=2, batch_size=4, eval_every=4, epoch_end_margin=1, learning_rate=1e-2, **train)
    return Contract.model_validate(raw)


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def train_run(contract: Contract, service: Service, datums, run_dir: Path, seed: int = 0) -> list[dict]:
    train_datums, val_datums = datums
    plan = make_plan(contract, contract.train.learning_rate, contract.train.batch_size, len(train_datums), seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    return train_with_resume(service, contract.experiment.base_model, contract.lora.rank, contract.lora.conditions[1], plan, train_datums, val_datums,
                             run_dir, "test", progress=False)


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs, no cleanup of the loop's state."""


class CrashingService:
    """Wraps a service; its training clients raise Crash on the N-th forward_backward submission."""

    def __init__(self, inner, crash_at_call: int):
        self.inner, self.crash_at_call, self.calls = inner, crash_at_call, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not name.startswith("create_"):
            return attr
        outer = self

        def create(*args, **kwargs):
            client = attr(*args, **kwargs).result()
            return _Done(CrashingClient(client, outer))

        return create


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class CrashingClient:
    def __init__(self, inner, owner: CrashingService):
        self.inner, self.owner = inner, owner

    def forward_backward(self, *args, **kwargs):
        self.owner.calls += 1
        if self.owner.calls == self.owner.crash_at_call:
            raise Crash()
        return self.inner.forward_backward(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_cadence_and_partial_batches(tmp_path, base_dir, datums):
    contract = tiny_contract(tmp_path, base_dir)
    records = train_run(contract, local_service(LocalServiceClient(tmp_path / "svc")), datums, tmp_path / "run")
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # 21 rows / 4 -> 6 steps per epoch, the last of 1 row; 2 epochs = 12 steps; every 4 steps, minus those within 1 of an epoch end
    assert [m["rows"] for m in metrics] == [4, 4, 4, 4, 4, 1] * 2
    assert [r["step"] for r in records] == [4, 6, 8, 12]
    assert all(r["next_step"] == r["step"] + 1 for r in records)
    assert [m["step"] for m in metrics] == list(range(1, 13))


def test_exact_resume_after_a_crash_at_a_random_step(tmp_path, base_dir, datums):
    contract = tiny_contract(tmp_path, base_dir)
    clean = train_run(contract, local_service(LocalServiceClient(tmp_path / "svc-clean")), datums, tmp_path / "clean")
    crash_at = random.Random().randint(2, 12)
    crashed_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        crashing = local_service(LocalServiceClient(tmp_path / "svc-crash"))
        train_run(contract, dataclasses.replace(crashing, client=CrashingService(crashing.client, crash_at)), datums, crashed_dir)
    resumed = train_run(contract, local_service(LocalServiceClient(tmp_path / "svc-crash")), datums, crashed_dir)
    assert stable(resumed) == stable(clean), f"crash at forward_backward #{crash_at}"
    clean_metrics = read_jsonl(tmp_path / "clean" / "metrics.jsonl")
    resumed_metrics = read_jsonl(crashed_dir / "metrics.jsonl")
    assert [m["step"] for m in resumed_metrics] == list(range(1, 13))  # no duplicated or missing rows
    assert stable(resumed_metrics) == stable(clean_metrics)
    assert select_checkpoint(resumed)["step"] == select_checkpoint(clean)["step"]


@pytest.mark.parametrize("shape", ["single_datum_calls", "batched_datums"])
def test_request_shapes_train_the_same_model(tmp_path, base_dir, datums, shape):
    pipelined = train_run(tiny_contract(tmp_path, base_dir), local_service(LocalServiceClient(tmp_path / "a")), datums, tmp_path / "a-run")
    other = train_run(tiny_contract(tmp_path, base_dir, request_shape=shape), local_service(LocalServiceClient(tmp_path / "b")), datums, tmp_path / "b-run")
    assert np.allclose([r["val_nll"] for r in other], [r["val_nll"] for r in pipelined], rtol=1e-4)


def test_flaky_service_gives_the_same_results_as_a_clean_one(tmp_path, base_dir, datums):
    contract = tiny_contract(tmp_path, base_dir)
    clean = train_run(contract, local_service(LocalServiceClient(tmp_path / "clean-svc")), datums, tmp_path / "clean")
    no_wait = dataclasses.replace(local_service(LocalServiceClient(tmp_path / "flaky-svc")), retry=Retry(base_delay_s=0.0))
    flaky_service = faulty_service(no_wait, failure_rate=0.1, seed=3)
    flaky = train_run(contract, flaky_service, datums, tmp_path / "flaky")
    assert flaky_service.client.injected, "the wrapper injected no failure; the test would prove nothing"
    assert stable(flaky) == stable(clean)
    assert stable(read_jsonl(tmp_path / "flaky" / "metrics.jsonl")) == stable(read_jsonl(tmp_path / "clean" / "metrics.jsonl"))


def test_permanent_failure_stops_at_once(tmp_path, base_dir, datums):
    contract = tiny_contract(tmp_path, base_dir)
    service = local_service(LocalServiceClient(tmp_path / "svc"))
    broken = contract.model_copy(update={"experiment": contract.experiment.model_copy(update={"base_model": str(tmp_path / "no-such-model")})})
    with pytest.raises(UserError):
        train_run(broken, service, datums, tmp_path / "run")


def test_export_refuses_an_expired_checkpoint(tmp_path, base_dir, datums):
    contract = tiny_contract(tmp_path, base_dir)
    service = local_service(LocalServiceClient(tmp_path / "svc"))
    records = train_run(contract, service, datums, tmp_path / "run")
    best = select_checkpoint(records)
    summary = {"condition": "all_layer", "seed": 0, "selected_step": best["step"], "val_nll": best["val_nll"],
               "state_path": best["state_path"], "expires_at": "2020-01-01T00:00:00+00:00"}
    with pytest.raises(UserError, match="expired"):
        export.export_one(contract, service, summary, tmp_path / "export")
    summary["expires_at"] = best["expires_at"]
    exported = export.export_one(contract, service, summary, tmp_path / "export")
    assert exported["lora_r"] == 4 and exported["adapter_bytes"] > 0
    assert exported["sampler_path"].startswith("tinker://") and "/sampler_weights/" in exported["sampler_path"]


class _Raises:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc


def test_settle_waits_through_failures_but_not_through_ctrl_c():
    from loraexp.local_tinker.errors import status_error
    from loraexp.service.retry import settle

    settle(_Raises(status_error(tinker.InternalServerError, 500, "boom")), _Raises(ValueError("x")))  # waited on, read later
    with pytest.raises(KeyboardInterrupt):
        settle(_Raises(KeyboardInterrupt()))
