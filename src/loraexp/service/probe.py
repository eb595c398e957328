"""The capability probe: does this endpoint do every call the pipeline needs, before any paid work?

Measured on SkyRL 0.4.0 with the 0.38 SDK (shared/reference/self-hosted-tinker-engines.md): an engine can
accept requests and silently do something else, or lack a call the pipeline only needs days later (resume
with optimizer state, sampling). The probe runs each call once on a throwaway client per condition and tiny
inputs, prints a table call -> ok / missing (the error), names the stage that needs each missing call and
why, and refuses when a call needed by the stage at hand (smoke: by any stage) is missing. It also samples
one prompt twice at temperature 0 (greedy must repeat itself) and checks that a checkpoint TTL is kept.

The result is cached per endpoint, base model, conditions and SDK version under `<artifacts>/probes/` for a
day, so the stages after smoke reuse it instead of paying for it again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import logging
import socket
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import orjson
import tinker
from rich.console import Console
from rich.table import Table

from loraexp.errors import UserError
from loraexp.files import now_utc, read_json, write_json_atomic
from loraexp.service.datums import datum_from_row
from loraexp.service.retry import SERVICE_ERRORS, ServiceRefused, resolve

if TYPE_CHECKING:
    from loraexp.contracts import Contract
    from loraexp.service import Service

log = logging.getLogger(__name__)
PROBE_TTL_SECONDS = 3600  # the shortest TTL the service allows
CACHE_HOURS = 24
PROBE_TOKENS = [1, 2, 3, 4, 5, 6, 7, 8]  # ids every vocabulary has
REACH_TIMEOUT_S = 10.0
NOT_REACHED = "not reached (an earlier call failed)"

# call -> (stages that need it, why); smoke refuses when any is missing, the others when one of theirs is
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "create_lora_training_client": (("smoke", "lr-select", "train"), "to create a LoRA client with each condition's rank and flags"),
    "forward": (("smoke", "lr-select", "train"), "to measure validation NLL without a gradient"),
    "forward_backward": (("smoke", "lr-select", "train"), "to compute the training gradient"),
    "optim_step": (("smoke", "lr-select", "train"), "to apply the AdamW step"),
    "save_state": (("smoke", "lr-select", "train"), "to save weights + optimizer state on the cadence (with a TTL)"),
    "create_training_client_from_state_with_optimizer": (("lr-select", "train"), "to resume an interrupted run exactly"),
    "create_training_client_from_state": (("export",), "to load the selected checkpoint for export"),
    "save_weights_for_sampler": (("export",), "to turn the selected checkpoint into a sampler for eval"),
    "create_sampling_client": (("eval",), "to sample from the base model and each checkpoint"),
    "sample": (("eval",), "to generate the benchmark answers"),
    "save_weights_external": (("smoke", "export"), "to download the adapter and check from its weights what was trained"),
    "get_external_weights_urls": (("smoke", "export"), "to download the adapter files"),
    "get_weights_info_by_tinker_path": (("smoke",), "to read back the flags the engine recorded"),
}


@dataclass
class ProbeResult:
    endpoint: str
    calls: dict[str, str]  # call -> "ok" or the error
    warnings: list[str]
    server: dict  # what the server reports of itself (models, capabilities), where it can
    greedy_repeats: bool | None
    checked_at: str
    key: str

    def missing_for(self, stage: str) -> dict[str, str]:
        return {call: error for call, error in self.calls.items() if error != "ok" and (stage == "smoke" or stage in NEEDS[call][0])}

    def as_dict(self) -> dict:
        return asdict(self)


def endpoint_of(contract: "Contract") -> str:
    """Where the service is: "in-process" for the local client, else the base URL the SDK will use."""
    import os

    if contract.experiment.backend == "local":
        return "in-process"
    return contract.experiment.base_url or os.environ.get("TINKER_BASE_URL") or "https://tinker.thinkingmachines.dev/services/tinker-prod"


def check_reachable(url: str) -> None:
    """One TCP connection to the endpoint's host, with a short timeout: the SDK would retry a dead endpoint for 5 minutes."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Tinker endpoint {url} ({type(exc).__name__}: {exc}); check experiment.base_url, "
                        "that the engine is running and listening, and the network") from None


def probe_key(contract: "Contract", endpoint: str) -> str:
    needs = {"endpoint": endpoint, "base_model": contract.experiment.base_model, "sdk": importlib.metadata.version("tinker"),
             "conditions": [[c.train_attn, c.train_mlp, c.train_unembed, contract.rank_of(c)] for c in contract.lora.conditions],
             "ttl": contract.train.checkpoint_ttl_seconds is not None}
    return hashlib.sha256(orjson.dumps(needs, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def cached_probe(path: Path, key: str) -> ProbeResult | None:
    """The probe saved at `path` while it is for `key` and under CACHE_HOURS old; None when missing, torn or of another shape."""
    try:
        data = read_json(path)
        age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(data["checked_at"])
        if data.get("key") != key or age.total_seconds() > CACHE_HOURS * 3600:
            return None
        return ProbeResult(**{field: data[field] for field in ProbeResult.__dataclass_fields__})
    except (UserError, KeyError, TypeError, ValueError):
        return None


def probe_service(service: "Service", contract: "Contract", fresh: bool = False) -> ProbeResult:
    """The cached probe of this endpoint, or a new one (always new when `fresh`); printed as a table when run."""
    endpoint = endpoint_of(contract)
    key = probe_key(contract, endpoint)
    path = Path(contract.experiment.artifacts_dir) / "probes" / f"{key}.json"
    if not fresh and (cached := cached_probe(path, key)):
        log.info("capability probe of %s: reusing the one from %s (%s)", endpoint, cached.checked_at, path)
        return cached
    if contract.experiment.backend == "tinker":
        check_reachable(endpoint)
    result = ProbeRun(service, contract, endpoint, key).run()
    write_json_atomic(path, result.as_dict())
    print_table(result)
    return result


class ProbeRun:
    """One pass over the calls, on throwaway clients and tiny inputs; a call that fails is recorded, not raised."""

    def __init__(self, service: "Service", contract: "Contract", endpoint: str, key: str):
        self.service, self.contract, self.endpoint, self.key = service.tagged("probe", f"probe-{key}"), contract, endpoint, key
        self.calls: dict[str, str] = {call: NOT_REACHED for call in NEEDS}
        self.warnings: list[str] = []

    def attempt(self, name: str, call: Callable[[], Any]) -> Any:
        """Run one call (transient failures retried a few times); record ok or the error; None when it failed."""
        try:
            value = self.service.call(call, name)  # transient failures retried as everywhere; a missing call fails at once
        except (UserError, *SERVICE_ERRORS, ValueError, TypeError, NotImplementedError, AttributeError, AssertionError) as exc:
            cause = exc.cause if isinstance(exc, ServiceRefused) else exc
            self.calls[name] = f"{type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}"
            return None
        self.calls[name] = "ok"
        return value

    def run(self) -> ProbeResult:
        server = self.server_facts()
        datum = datum_from_row({"tokens": PROBE_TOKENS, "weights": [1.0] * len(PROBE_TOKENS)})
        state_path, client = None, None
        for condition in self.contract.lora.conditions:
            made = self.attempt("create_lora_training_client", lambda c=condition: self.service.client.create_lora_training_client(
                base_model=self.contract.experiment.base_model, rank=self.contract.rank_of(c), seed=0, train_attn=c.train_attn,
                train_mlp=c.train_mlp, train_unembed=c.train_unembed, user_metadata=self.service.metadata(loraexp_condition=c.name)))
            if made is None:
                break
            client = made
        if client is not None:
            state_path = self.training_calls(client, datum)
        if state_path is not None:
            self.restore_calls(state_path, datum)
        greedy = self.sampling_calls()
        return ProbeResult(self.endpoint, self.calls, self.warnings, server, greedy, now_utc(), self.key)

    def server_facts(self) -> dict:
        """The models the server says it offers; refuses a base model it does not list."""
        try:
            capabilities = self.service.call(lambda: self.service.rest.get_server_capabilities(), "get_server_capabilities")
        except (UserError, AttributeError, ValueError) as exc:
            return {"capabilities": f"not reported ({type(exc).__name__})"}
        models = [m.model_name for m in capabilities.supported_models if m.model_name]
        if models and self.contract.experiment.base_model not in models:
            raise UserError(f"the endpoint {self.endpoint} does not offer {self.contract.experiment.base_model} (it offers: {', '.join(models[:12])}); "
                            "set experiment.base_model to one of them or use another endpoint")
        return {"supported_models": models}

    def training_calls(self, client: Any, datum: tinker.Datum) -> str | None:
        self.attempt("forward", lambda: client.forward([datum], "cross_entropy"))
        self.attempt("forward_backward", lambda: client.forward_backward([datum], "cross_entropy"))
        self.attempt("optim_step", lambda: client.optim_step(tinker.AdamParams(learning_rate=1e-4)))
        ttl = PROBE_TTL_SECONDS if self.contract.train.checkpoint_ttl_seconds is not None else None
        saved = self.attempt("save_state", lambda: client.save_state("loraexp-probe", ttl_seconds=ttl))
        if saved is not None and ttl is not None:
            self.check_ttl(client, saved.path)
        self.attempt("save_weights_for_sampler", lambda: client.save_weights_for_sampler("loraexp-probe", ttl_seconds=PROBE_TTL_SECONDS))
        if saved is not None:
            self.attempt("get_weights_info_by_tinker_path", lambda: self.service.rest.get_weights_info_by_tinker_path(saved.path))
        external = self.attempt("save_weights_external", lambda: client.save_weights_external("loraexp-probe", ttl_seconds=PROBE_TTL_SECONDS))
        if external is not None:
            self.attempt("get_external_weights_urls", lambda: self.service.rest.get_external_weights_urls(external.path))
        return saved.path if saved is not None else None

    def check_ttl(self, client: Any, path: str) -> None:
        """A save_state with a TTL must come back with an expiry; an engine that ignores TTLs keeps checkpoints forever."""
        try:
            listed = self.service.call(lambda: self.service.rest.list_checkpoints(client.model_id), "list_checkpoints").checkpoints
        except (UserError, AttributeError, ValueError) as exc:
            self.warnings.append(f"could not list checkpoints to check the TTL ({type(exc).__name__}); expiry not verified")
            return
        mine = [c for c in listed if c.tinker_path == path]
        if mine and mine[0].expires_at is None:
            self.warnings.append(f"the engine ignores checkpoint TTLs (save_state with ttl_seconds={PROBE_TTL_SECONDS} came back with no expiry): "
                                 "checkpoints never expire there and keep filling its storage until you delete them")

    def restore_calls(self, state_path: str, datum: tinker.Datum) -> None:
        """Both ways of loading a saved state, each followed by a forward on the loaded client."""
        def loaded(create: Callable[..., Any]) -> Any:
            client = resolve(create(state_path, user_metadata=self.service.metadata()))
            resolve(client.forward([datum], "cross_entropy"))
            return client

        self.attempt("create_training_client_from_state_with_optimizer", lambda: loaded(self.service.client.create_training_client_from_state_with_optimizer))
        self.attempt("create_training_client_from_state", lambda: loaded(self.service.client.create_training_client_from_state))

    def sampling_calls(self) -> bool | None:
        sampler = self.attempt("create_sampling_client", lambda: self.service.client.create_sampling_client(base_model=self.contract.experiment.base_model))
        if sampler is None:
            return None
        params = tinker.SamplingParams(max_tokens=8, temperature=0.0, stop=[])
        prompt = tinker.ModelInput.from_ints(PROBE_TOKENS[:4])
        first = self.attempt("sample", lambda: sampler.sample(prompt=prompt, num_samples=1, sampling_params=params))
        second = self.attempt("sample", lambda: sampler.sample(prompt=prompt, num_samples=1, sampling_params=params)) if first else None
        if first is None or second is None:
            return None
        repeats = first.sequences[0].tokens == second.sequences[0].tokens
        if not repeats:
            self.warnings.append("greedy sampling (temperature 0) gave two different answers to one prompt: scores on this engine will not reproduce "
                                 "(eval's determinism re-check will count the mismatches; eval.max_determinism_mismatches decides)")
        return repeats


def print_table(result: ProbeResult) -> None:
    table = Table(title=f"capability probe of {result.endpoint}")
    for column in ("call", "result", "needed by", "why"):
        table.add_column(column, overflow="fold")
    for call, outcome in result.calls.items():
        stages, why = NEEDS[call]
        style = "green" if outcome == "ok" else "red"
        table.add_row(call, f"[{style}]{outcome if outcome == 'ok' else 'missing: ' + outcome}[/{style}]", ", ".join(stages), why)
    Console(stderr=True, width=160).print(table)
    for warning in result.warnings:
        log.warning("probe: %s", warning)


def refuse_missing(result: ProbeResult, stage: str) -> None:
    """One line naming each missing call this stage (smoke: the pipeline) needs, and why."""
    missing = result.missing_for(stage)
    failed = {call: error for call, error in missing.items() if error != NOT_REACHED}
    if missing:
        reasons = "; ".join(f"{call} ({', '.join(NEEDS[call][0])}: {NEEDS[call][1]}) failed with {error}" for call, error in failed.items())
        unreached = len(missing) - len(failed)
        raise UserError(f"the endpoint {result.endpoint} lacks calls {'the pipeline' if stage == 'smoke' else stage} needs, refused before any paid "
                        f"work: {reasons}" + (f"; {unreached} more could not be tried after it" if unreached else "") + " (the table above lists every call)")
