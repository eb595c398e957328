"""Publishing to the Hugging Face Hub: the token check, the upload, and the render run's dataset folder with its card.

Only `--push-to-hub` reaches the network; `write_hub_dataset` runs on every render so the folder can be
inspected (and pushed later with `huggingface-cli upload`) offline.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from loraexp.artifacts import MANIFEST, Run
from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.files import file_sha256, read_json, write_text_atomic

log = logging.getLogger(__name__)

HUB_SPLITS = {"train.jsonl": "train", "val.jsonl": "validation"}  # build-data / render file -> Hugging Face split name


def require_hf_token() -> None:
    if not os.environ.get("HF_TOKEN"):
        raise UserError("--push-to-hub needs HF_TOKEN in the environment (a write token from huggingface.co/settings/tokens)")


def push_to_hub(folder: Path, repo: str, repo_type: str, path_in_repo: str | None = None) -> None:
    """Upload `folder` to a Hugging Face `repo_type` ("dataset" or "model") repo; needs network and HF_TOKEN."""
    require_hf_token()
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type=repo_type, exist_ok=True)
    api.upload_folder(folder_path=str(folder), path_in_repo=path_in_repo, repo_id=repo, repo_type=repo_type,
                      commit_message=f"loraexp: {folder.name} with its manifests and checksums")
    log.info("pushed %s to https://huggingface.co/%s%s", folder, "datasets/" if repo_type == "dataset" else "", repo)


def write_hub_dataset(run: Run, data_dir: Path, stats: dict) -> list[str]:
    """hub_dataset/: raw + rendered splits, manifests, SHA256SUMS and README.md; returns the files (run-relative)."""
    hub = run.path("hub_dataset")
    if hub.exists():
        shutil.rmtree(hub)
    payloads = {}
    for name, hub_split in HUB_SPLITS.items():
        payloads[f"raw/{hub_split}.jsonl"] = data_dir / name
        payloads[f"rendered/{hub_split}.jsonl"] = run.path(name)
    payloads["manifests/build-data.json"] = data_dir / MANIFEST
    payloads["manifests/render-stats.json"] = run.path("stats.json")
    payloads["manifests/render-budget.json"] = run.path("budget.json")
    for relative, source in payloads.items():
        _link_or_copy(source, hub / relative)
    build_manifest = read_json(data_dir / MANIFEST)
    write_text_atomic(hub / "README.md", dataset_card(run.contract, build_manifest, stats, run.run_id))
    files = sorted([*payloads, "README.md"])
    write_text_atomic(hub / "SHA256SUMS", "".join(f"{file_sha256(hub / name)}  {name}\n" for name in files))
    return [f"hub_dataset/{name}" for name in [*files, "SHA256SUMS"]]


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no second copy of 100+ MB of tokens), or a copy where links are not possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def dataset_card(contract: Contract, build_manifest: dict, stats: dict, run_id: str) -> str:
    """README.md for the Hugging Face dataset repo: sources, counts, rendering, license CC-BY-4.0."""
    data, render = contract.data, contract.render
    train, val = stats["splits"]["train"], stats["splits"]["val"]
    source = "the offline demo generator (`loraexp.demo.data`, OpenMathInstruct-2-shaped)" if data.source == "demo" else f"`{data.source}` split `{data.split}`"
    return f"""---
license: cc-by-4.0
pretty_name: {contract.experiment.name} (loraexp render {run_id})
configs:
- config_name: raw
  data_files:
  - split: train
    path: raw/train.jsonl
  - split: validation
    path: raw/validation.jsonl
- config_name: rendered
  data_files:
  - split: train
    path: rendered/train.jsonl
  - split: validation
    path: rendered/validation.jsonl
---
# {contract.experiment.name}: training data of a controlled LoRA experiment

Made by `loraexp build-data` + `loraexp render` (contract SHA-256 `{contract.sha256}`).

## Source
- Rows from {source}, keeping `problem_source` in {list(data.keep_sources)} (original-source rows only).
- Gate, dedupe and a split grouped by canonical problem text (seed {data.split_seed}, validation share {data.val_fraction});
  build-data run `{build_manifest.get('run_id')}` ({build_manifest.get('key_figure', {})}).
- OpenMathInstruct-2: Toshniwal et al., NVIDIA 2024, CC BY 4.0. This derived dataset is released under CC BY 4.0.

## Counts
| split | rows | mean tokens | p95 tokens | max tokens | mean answer tokens |
|---|---:|---:|---:|---:|---:|
| train | {train['rows']:,} | {train['tokens']['mean']:.1f} | {train['tokens']['p95']:.0f} | {train['tokens']['max']} | {train['answer_tokens']['mean']:.1f} |
| validation | {val['rows']:,} | {val['tokens']['mean']:.1f} | {val['tokens']['p95']:.0f} | {val['tokens']['max']} | {val['answer_tokens']['mean']:.1f} |

Rows longer than {render.max_tokens} tokens were left out ({stats['rejected_rows']} rows), never truncated.

## Configs
- `raw`: `row_id`, `problem_source`, `problem`, `generated_solution`, `expected_answer`, `canonical_problem_sha`.
- `rendered`: `row_id`, `problem_source`, `tokens`, `weights` (0 = prompt, 1 = trained), `prompt_tokens`, `answer_tokens`.
  Tokenizer `{render.tokenizer}`, chat template with `enable_thinking={render.enable_thinking}` and the system prompt
  `{render.system_prompt}` ({stats['system_prompt_tokens']} tokens); the sequence ends at `<|im_end|>`.

## Files
`manifests/` holds the build-data manifest and the render stats and budget; `SHA256SUMS` checks every file
(`sha256sum -c SHA256SUMS`).
"""
