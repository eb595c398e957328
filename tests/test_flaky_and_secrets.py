"""A whole `loraexp run` through a flaky service (10% of backend calls fail: rate limit, 5xx, connection
error, request completed failed) gives exactly the clean run's results; a permanent failure stops the
stage at once in one line; and no secret from the environment or the command line reaches an artifact
or a log.

The flaky run is a real process of the CLI with injected faults (`python -m loraexp.testing.cli`, reading
LORAEXP_FAULT_RATE) and dummy TINKER_API_KEY and HF_TOKEN set; its stdout/stderr is the log that is scanned.
"""

from __future__ import annotations

import re
import shutil

import orjson
import pytest
import tinker

from crashkit import eval_outcome, loraexp, make_workdir, results, run_to_end, train_outcome
from datakit import cli, error_line
from loraexp.cli import CliContext
from loraexp.local_tinker.errors import status_error
from loraexp.service import Service

SECRETS = {"TINKER_API_KEY": "tml-dummy-secret-123", "HF_TOKEN": "hf_dummysecret456"}
FAULTS = {"LORAEXP_FAULT_RATE": "0.1", "LORAEXP_FAULT_SEED": "5", "LORAEXP_RETRY_BASE_DELAY_S": "0"}


@pytest.fixture(scope="module")
def flaky_run(tmp_path_factory, small_base):
    """The small experiment run end to end under 10% injected faults, with secrets in the environment;
    then `eval` with the API key pasted where a checkpoint path goes (a plausible slip)."""
    workdir = make_workdir(tmp_path_factory.mktemp("flaky"), small_base)
    run_to_end(workdir, "run", "--config", "demo.toml", env={**FAULTS, **SECRETS}, module="loraexp.testing.cli")
    slip = loraexp(workdir, "eval", "--config", "demo.toml", "--condition", "all_layer", "--seed", "0", "--limit", "2",
                   "--checkpoint", SECRETS["TINKER_API_KEY"], env=SECRETS)
    assert slip.wait(120) == 2
    slip = loraexp(workdir, "eval", "--config", "demo.toml", "--condition", "all_layer", "--seed", "0", "--limit", "3",
                   "--checkpoint", f"tinker://{SECRETS['HF_TOKEN']}/sampler_weights/x", env=SECRETS)
    assert slip.wait(120) == 2
    return workdir


def json_of(workdir, run_id: str, name: str) -> dict:
    return orjson.loads((results(workdir) / run_id / name).read_bytes())


def test_flaky_service_run_equals_the_clean_run(flaky_run, reference_run):
    log = (flaky_run / "loraexp.log").read_text(encoding="utf-8")
    assert "FAULT INJECTION ACTIVE" in log
    kinds = set(re.findall(r"injected (\w+) on (\w+)", log))
    assert len({kind for kind, _ in kinds}) == 4, f"not every fault kind was exercised: {sorted(kinds)}"
    assert {"forward_backward", "optim_step", "forward", "save_state"} <= {method for _, method in kinds}
    assert re.search(r"service.retry: sample: (RateLimitError|InternalServerError|APIConnectionError|RequestFailedError): injected .*; retry", log)
    assert "Traceback" not in log

    assert train_outcome(flaky_run) == train_outcome(reference_run)
    assert eval_outcome(flaky_run) == eval_outcome(reference_run)
    assert json_of(flaky_run, "demo-lr-select", "selection.json") == json_of(reference_run, "demo-lr-select", "selection.json")
    for name, clean in json_of(reference_run, "demo-smoke", "smoke.json")["conditions"].items():
        flaky = json_of(flaky_run, "demo-smoke", "smoke.json")["conditions"][name]
        assert [flaky[k] for k in ("train_mean_nll", "val_mean_nll_before", "val_mean_nll_after")] == [clean[k] for k in ("train_mean_nll", "val_mean_nll_before", "val_mean_nll_after")]
    smoke_steps = [orjson.loads(line)["step"] for line in (results(flaky_run) / "demo-smoke" / "metrics.jsonl").read_bytes().splitlines()]
    assert smoke_steps == [1, 2, 3, 1, 2, 3], "a restarted smoke condition duplicated its metrics rows"
    assert json_of(flaky_run, "demo-figures", "comparison.json")["benchmarks"] == json_of(reference_run, "demo-figures", "comparison.json")["benchmarks"]


def test_no_secret_in_any_artifact_or_log(flaky_run):
    log = (flaky_run / "loraexp.log").read_text(encoding="utf-8")
    assert "error: --checkpoint must be a tinker://" in log  # the slip was refused in one line ...
    assert "error: create_sampling_client tinker://***/sampler_weights/x" in log  # ... and the service's answer redacted
    scanned = [flaky_run / "loraexp.log", *sorted(p for p in (flaky_run / "artifacts").rglob("*") if p.is_file())]
    assert len(scanned) > 100
    for path in scanned:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} leaked into {path}"
    for path in (flaky_run / "artifacts").rglob("*"):
        assert not any(value in path.name for value in SECRETS.values()), f"a secret in a file name: {path}"


@pytest.mark.parametrize("kind", [tinker.BadRequestError, tinker.AuthenticationError], ids=["bad-request", "auth"])
def test_permanent_failure_stops_the_stage_at_once(reference_run, tmp_path, monkeypatch, kind):
    workdir = tmp_path / "w"
    shutil.copytree(reference_run, workdir, ignore=shutil.ignore_patterns("loraexp.log"))
    monkeypatch.chdir(workdir)
    shutil.rmtree(results(workdir) / "demo-train-all_layer-seed0")
    calls = []

    class Refusing:
        def create_lora_training_client(self, *args, **kwargs):
            calls.append(kind.__name__)
            raise status_error(kind, 400 if kind is tinker.BadRequestError else 401, "refused by the service", "create_model")

    refusing = CliContext(connect=lambda contract: Service(Refusing(), lambda: None, "tinker"))
    line = error_line(cli("train", "--config", "demo.toml", "--condition", "all_layer", "--seed", "0", expect=2, obj=refusing))
    assert f"failed permanently ({kind.__name__}: refused by the service)" in line
    assert ("check TINKER_API_KEY" in line) == (kind is tinker.AuthenticationError)
    assert calls == [kind.__name__], "a permanent failure was retried"
    assert not (results(workdir) / "demo-train-all_layer-seed0" / "manifest.json").exists()
