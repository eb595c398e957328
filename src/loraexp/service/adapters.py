"""Adapter truth: download a trained adapter from the service and read what it really adapts from its weights.

An engine can accept `train_mlp=False` and train the MLP anyway (SkyRL 0.4.0 does; see
shared/reference/self-hosted-tinker-engines.md). The only evidence is the weights: the tensor names say
which modules carry LoRA, their shapes give the rank and the parameter count, `adapter_config.json`
gives lora_alpha and dropout, and a B matrix still at zero after a step says that module never trained.
`save_weights_external` + `get_external_weights_urls` is the download route the 0.38 SDK has.
"""

from __future__ import annotations

import shutil
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from loraexp.errors import UserError

if TYPE_CHECKING:
    from loraexp.contracts import LoraCondition
    from loraexp.service import Service

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODULE_KINDS = {  # module name -> the condition flag that asks for it
    "q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
    "lm_head": "unembed",
}
KIND_MODULES = {kind: "/".join(name.removesuffix("_proj") for name, k in MODULE_KINDS.items() if k == kind) for kind in ("attn", "mlp", "unembed")}


def download(url: str, target: Path) -> None:
    """Fetch one signed URL (https on Tinker, file:// on the local client) to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("file://"):
        shutil.copyfile(urllib.parse.unquote(urllib.parse.urlparse(url).path), target)
        return
    with httpx.stream("GET", url, timeout=120, follow_redirects=True) as response:
        response.raise_for_status()
        with target.open("wb") as handle:
            for block in response.iter_bytes(1 << 20):
                handle.write(block)


def download_adapter(service: "Service", client: Any, name: str, target: Path, ttl_seconds: int | None = None) -> str:
    """save_weights_external from a live training client, then every file behind its URLs into `target`; the external path."""
    external_path = service.call(lambda: client.save_weights_external(name, ttl_seconds=ttl_seconds), f"save_weights_external {name}").path
    urls = service.call(lambda: service.rest.get_external_weights_urls(external_path), f"get_external_weights_urls {name}").urls
    for relative, url in urls.items():
        download(url, target / relative)
    missing = [f for f in ADAPTER_FILES if not (target / f).exists()]
    if missing:
        raise UserError(f"the exported adapter {external_path} lacks {missing}; the engine's external weights are incomplete")
    return external_path


@dataclass(frozen=True)
class AdapterFacts:
    """What an adapter is, measured from its files."""

    kinds: tuple[str, ...]  # adapted module kinds present in the tensors: attn, mlp, unembed
    modules: tuple[str, ...]  # module names with LoRA tensors (q_proj, gate_proj, lm_head, ...)
    unrecognised_modules: tuple[str, ...]  # LoRA tensors on modules loraexp has no kind for
    ranks: tuple[int, ...]  # distinct ranks read from the A/B shapes
    parameters: int  # numel of every LoRA tensor
    lora_alpha: float | None  # from adapter_config.json
    lora_dropout: float | None
    config_target_modules: tuple[str, ...] | None  # what adapter_config.json claims (never trusted alone)
    untrained_kinds: tuple[str, ...]  # kinds whose B matrices are all exactly zero (never moved from their init)
    bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def inspect_adapter(directory: Path) -> AdapterFacts:
    """Read an adapter dir (adapter_config.json + adapter_model.safetensors) into AdapterFacts."""
    from safetensors.torch import load_file

    config = orjson.loads((directory / "adapter_config.json").read_bytes())
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    modules, ranks, moved, parameters = set(), set(), {}, 0
    for key, tensor in tensors.items():
        located = _lora_tensor(key)
        if located is None:
            continue
        module, part = located
        modules.add(module)
        parameters += tensor.numel()
        ranks.add(int(tensor.shape[0] if part == "A" else tensor.shape[-1]))
        if part == "B":
            kind = MODULE_KINDS.get(module, module)
            moved[kind] = moved.get(kind, False) or bool(tensor.abs().max() > 0)
    kinds = sorted({MODULE_KINDS[m] for m in modules if m in MODULE_KINDS}, key=["attn", "mlp", "unembed"].index)
    target_modules = config.get("target_modules")
    return AdapterFacts(
        kinds=tuple(kinds), modules=tuple(sorted(modules)), unrecognised_modules=tuple(sorted(m for m in modules if m not in MODULE_KINDS)),
        ranks=tuple(sorted(ranks)), parameters=parameters, lora_alpha=config.get("lora_alpha"), lora_dropout=config.get("lora_dropout"),
        config_target_modules=tuple(sorted(target_modules)) if isinstance(target_modules, list) else None,
        untrained_kinds=tuple(kind for kind in kinds if not moved.get(kind, False)),
        bytes=sum(path.stat().st_size for path in directory.iterdir() if path.is_file()),
    )


def _lora_tensor(key: str) -> tuple[str, str] | None:
    """(module name, "A" or "B") of a PEFT LoRA tensor key such as `...layers.0.self_attn.q_proj.lora_A.weight`."""
    parts = key.split(".")
    index = next((i for i, part in enumerate(parts) if part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")), 0)
    return (parts[index - 1], parts[index][-1]) if index > 0 else None


def requested_kinds(condition: "LoraCondition") -> tuple[str, ...]:
    return tuple(kind for kind, flag in (("attn", condition.train_attn), ("mlp", condition.train_mlp), ("unembed", condition.train_unembed)) if flag)


def deviations(facts: AdapterFacts, condition: "LoraCondition", rank: int) -> list[str]:
    """How the adapter differs from what the condition asked for (empty: it is what was asked)."""
    wanted = requested_kinds(condition)
    problems = []
    for kind in ("attn", "mlp", "unembed"):
        flag = f"train_{kind}"
        if kind in facts.kinds and kind not in wanted:
            problems.append(f"it adapts {KIND_MODULES[kind]}: the engine ignored {flag}=False")
        if kind in wanted and kind not in facts.kinds:
            problems.append(f"it does not adapt {KIND_MODULES[kind]}: the engine ignored {flag}=True")
    if facts.unrecognised_modules:
        problems.append(f"it has LoRA tensors on modules loraexp does not know ({', '.join(facts.unrecognised_modules)})")
    if facts.ranks != (rank,):
        problems.append(f"its rank is {'/'.join(map(str, facts.ranks)) or 'unreadable'}, not {rank}")
    if facts.untrained_kinds:
        problems.append(f"its {'/'.join(facts.untrained_kinds)} B matrices are still zero after training: those modules never trained")
    return problems


def expected_parameter_count(base_model: str, rank: int, condition: "LoraCondition") -> int | None:
    """tinker_cookbook's LoRA parameter count for a hosted model, or None when its table lacks the model."""
    from tinker_cookbook.hyperparam_utils import get_lora_param_count

    try:
        return get_lora_param_count(base_model, rank, condition.train_mlp, condition.train_attn, condition.train_unembed)
    except Exception:  # noqa: BLE001 - ConfigurationError / KeyError for models outside its built-in table
        return None
