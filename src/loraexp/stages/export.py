"""export: each selected checkpoint -> sampler weights (for eval) and a PEFT adapter on disk.

Layout (ready for `huggingface_hub.upload_folder`):
`checkpoints/best-checkpoints/<condition>/seed-<n>/step-<s>/{adapter_config.json, adapter_model.safetensors}`.
Checkpoint paths come from each train run's own summary, never rebuilt from names.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import orjson

from loraexp.artifacts import Run, read_json, write_json_atomic
from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.retry import call_with_retries
from loraexp.training import check_not_expired, resolve

log = logging.getLogger(__name__)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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


def export_one(service: Any, rest: Any, summary: dict, out_dir: Path) -> dict:
    """Load the selected state, save sampler weights and the external PEFT adapter, download the adapter."""
    record = {"state_path": summary["state_path"], "expires_at": summary["expires_at"]}
    check_not_expired(record, f"{summary['condition']} seed {summary['seed']} checkpoint")
    name = f"{summary['condition']}-seed{summary['seed']}-step{summary['selected_step']:06d}"
    client = call_with_retries(lambda: resolve(service.create_training_client_from_state(summary["state_path"])), f"load {summary['state_path']}")
    sampler_path = call_with_retries(lambda: resolve(client.save_weights_for_sampler(name)), f"save_weights_for_sampler {name}").path
    external_path = call_with_retries(lambda: resolve(client.save_weights_external(name)), f"save_weights_external {name}").path
    urls = call_with_retries(lambda: resolve(rest.get_external_weights_urls(external_path)), f"get_external_weights_urls {name}").urls
    adapter_dir = out_dir / "checkpoints" / "best-checkpoints" / summary["condition"] / f"seed-{summary['seed']}" / f"step-{summary['selected_step']}"
    for relative, url in urls.items():
        download(url, adapter_dir / relative)
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).exists()]
    if missing:
        raise UserError(f"the exported adapter for {name} lacks {missing}; the backend's external weights are incomplete")
    config = orjson.loads((adapter_dir / "adapter_config.json").read_bytes())
    return {
        "condition": summary["condition"], "seed": summary["seed"], "step": summary["selected_step"],
        "val_nll": summary["val_nll"], "state_path": summary["state_path"], "sampler_path": sampler_path,
        "external_path": external_path, "adapter_dir": str(adapter_dir.relative_to(out_dir)),
        "adapter_bytes": sum(p.stat().st_size for p in adapter_dir.iterdir() if p.is_file()),
        "lora_r": config.get("r"), "lora_alpha": config.get("lora_alpha"), "target_modules": config.get("target_modules"),
        "expires_at": summary["expires_at"],
    }


def push_to_hub(folder: Path, repo: str) -> None:
    """Upload `checkpoints/` to a Hugging Face model repo (needs network and HF_TOKEN)."""
    if not os.environ.get("HF_TOKEN"):
        raise UserError("--push-to-hub needs HF_TOKEN in the environment (a write token from huggingface.co/settings/tokens)")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="model", exist_ok=True)
    api.upload_folder(folder_path=str(folder / "checkpoints"), path_in_repo="checkpoints", repo_id=repo, repo_type="model")


def run(contract: Contract, service: Any, rest: Any, run: Run, train_dirs: list[Path], push_repo: str | None = None) -> dict:
    """Export every train run's selected checkpoint; write exports.json."""
    exports = []
    for train_dir in train_dirs:
        run.add_input(train_dir, ["summary.json", "checkpoints.jsonl"])
        summary = read_json(train_dir / "summary.json")
        exports.append(export_one(service, rest, summary, run.dir))
        log.info("exported %s seed %d step %d -> %s", summary["condition"], summary["seed"], summary["selected_step"], exports[-1]["sampler_path"])
    write_json_atomic(run.path("exports.json"), {"checkpoints": exports})
    if push_repo:
        push_to_hub(run.dir, push_repo)
    outputs = ["exports.json"] + [str(Path(e["adapter_dir"]) / f) for e in exports for f in ADAPTER_FILES]
    run.finish(outputs, key_figure={"checkpoints": len(exports), "adapter_bytes_max": max((e["adapter_bytes"] for e in exports), default=0)})
    return {"checkpoints": exports}
