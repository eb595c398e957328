"""export: each selected checkpoint -> sampler weights (for eval) and a PEFT adapter on disk, verified from its weights.

Layout (ready for `huggingface_hub.upload_folder`):
`checkpoints/best-checkpoints/<condition>/seed-<n>/step-<s>/{adapter_config.json, adapter_model.safetensors}`.
Checkpoint paths come from each train run's own summary, never rebuilt from names; sampler paths are
taken as the engine returns them. Every adapter is read back (module kinds, rank, trained B matrices)
and must be what its condition asked for: an engine that trained something else fails the stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.files import read_json, write_json_atomic
from loraexp.hub import push_to_hub, require_hf_token
from loraexp.service import Service
from loraexp.service.adapters import (
    ADAPTER_FILES,
    deviations,
    download_adapter,
    inspect_adapter,
)
from loraexp.session import Session, StageResult
from loraexp.stages.train import selected
from loraexp.training.loop import check_not_expired

log = logging.getLogger(__name__)


def run(session: Session, push_repo: str | None = None, run_id: str | None = None) -> StageResult:
    """Export every train run's selected checkpoint; write exports.json."""
    result = StageResult("export")
    if push_repo:
        require_hf_token()  # before any work
    contract = session.contract
    train_dirs = [session.finished_run("train", None, c.name, f"seed{s}") for c, s in selected(contract, None, None)]
    run = session.begin(result, run_id, inputs=train_dirs)
    if run is None:
        return result
    service = session.service_for("export", run)
    exports = []
    for train_dir in train_dirs:
        run.add_input(train_dir, ["summary.json", "checkpoints.jsonl"])
        summary = read_json(train_dir / "summary.json")
        exports.append(export_one(contract, service, summary, run.dir))
        log.info("exported %s seed %d step %d -> %s", summary["condition"], summary["seed"], summary["selected_step"], exports[-1]["sampler_path"])
    write_json_atomic(run.path("exports.json"), {"checkpoints": exports})
    if push_repo:
        push_to_hub(run.dir / "checkpoints", push_repo, "model", path_in_repo="checkpoints")
    outputs = ["exports.json"] + [str(Path(e["adapter_dir"]) / f) for e in exports for f in ADAPTER_FILES]
    run.finish(outputs, key_figure={"checkpoints": len(exports), "adapter_bytes_max": max((e["adapter_bytes"] for e in exports), default=0)})
    result.finished(run.run_id, f"exported {len(exports)} adapters under {run.dir / 'checkpoints' / 'best-checkpoints'}")
    return result


def export_one(contract: Contract, service: Service, summary: dict, out_dir: Path) -> dict:
    """Load the selected state, save sampler weights and the external PEFT adapter, download it and check it."""
    check_not_expired(summary, f"{summary['condition']} seed {summary['seed']} checkpoint")
    name = f"{summary['condition']}-seed{summary['seed']}-step{summary['selected_step']:06d}"
    client = service.weights_training_client(summary["state_path"])
    sampler_path = service.call(lambda: client.save_weights_for_sampler(name), f"save_weights_for_sampler {name}").path
    adapter_dir = out_dir / "checkpoints" / "best-checkpoints" / summary["condition"] / f"seed-{summary['seed']}" / f"step-{summary['selected_step']}"
    external_path = download_adapter(service, client, name, adapter_dir)
    facts = inspect_adapter(adapter_dir)
    condition = contract.condition(summary["condition"])
    found = deviations(facts, condition, contract.rank_of(condition))
    if found:
        raise UserError(f"export refused {name}: the adapter the engine returned is not the condition's: {'; '.join(found)} ({adapter_dir})")
    return {
        "condition": summary["condition"], "seed": summary["seed"], "step": summary["selected_step"],
        "val_nll": summary["val_nll"], "state_path": summary["state_path"], "sampler_path": sampler_path,
        "external_path": external_path, "adapter_dir": str(adapter_dir.relative_to(out_dir)),
        "adapter_bytes": facts.bytes, "lora_r": facts.ranks[0], "lora_alpha": facts.lora_alpha,
        "target_modules": list(facts.modules), "adapted_kinds": list(facts.kinds), "lora_parameters": facts.parameters,
        "verified_from_weights": True, "expires_at": summary["expires_at"],
    }
