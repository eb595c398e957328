"""render: build-data rows -> chat-template tokens + loss weights, token stats, a cost budget, a hub-ready dataset.

RUNBOOK step: `loraexp render --config X [--data-run ID] [--push-to-hub REPO]`.
1. load the contract's tokenizer (render.tokenizer) and save it in the run dir, so every later stage and reader
   tokenizes the same way;
2. render each train/val row through the chat template with the fixed system prompt (enable_thinking from the
   contract): weight 0 on the prompt prefix, 1 on the answer through `<|im_end|>`; a row longer than
   render.max_tokens is quarantined to rejects.jsonl, never truncated;
3. token stats (with and without the system prompt), a few decoded samples, and budget.json: tokens and dollars
   per epoch, run and sweep, the lr-select sweep and the evaluation, at the contract's prices;
4. hub_dataset/: raw and rendered payloads, manifests, SHA-256 checksums and a dataset card; uploaded with
   --push-to-hub.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from loraexp.artifacts import MANIFEST, Run, cache_root, push_to_hub, require_hf_token
from loraexp.chat import BatchRenderer, RenderMismatch, generation_prompt_tokens
from loraexp.contracts import Contract
from loraexp.data.sources import load_benchmark
from loraexp.errors import UserError
from loraexp.files import (
    file_sha256,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_jsonl,
    write_text_atomic,
)
from loraexp.session import Session, StageResult
from loraexp.tokenization import load_tokenizer
from loraexp.training.schedule import cadence_steps, steps_per_epoch

log = logging.getLogger(__name__)

SPLITS = {"train": "train.jsonl", "val": "val.jsonl"}  # build-data file names, kept in the render run
HUB_SPLIT_NAMES = {"train": "train", "val": "validation"}  # Hugging Face split names
SAMPLE_ROWS = 2  # decoded examples in sample_render.txt


def run(session: Session, data_run: str | None = None, push_repo: str | None = None, run_id: str | None = None) -> StageResult:
    """Render a finished build-data run (and push its hub folder to `push_repo` if given)."""
    result = StageResult("render")
    if push_repo:
        require_hf_token()  # before any work, so a missing token costs nothing
    data_dir = session.finished_run("build-data", data_run)
    run = session.begin(result, run_id, inputs=[data_dir])
    if run is None:
        return result
    figure = render(session.contract, run, data_dir, push_repo)["key_figure"]
    result.finished(run.run_id, f"{run.run_id}: {figure['train_rows']} train / {figure['val_rows']} val rows, mean {figure['mean_tokens']} tokens, "
                                f"{figure['rejected']} quarantined; budget in {run.path('budget.json')}")
    return result


def render(contract: Contract, run: Run, data_dir: Path, push_repo: str | None) -> dict:
    """Tokens + loss weights for train/val, stats, budget, sample, saved tokenizer, hub folder; returns the manifest."""
    render = contract.render
    run.add_input(data_dir, [*SPLITS.values(), MANIFEST])
    tokenizer = load_tokenizer(render.tokenizer, cache_root(contract))
    renderer = BatchRenderer(tokenizer, render.system_prompt, render.enable_thinking)
    rendered: dict[str, list[dict]] = {}
    rejects: list[dict] = []
    for split, name in SPLITS.items():
        raw_rows = read_jsonl(data_dir / name)
        rendered[split], split_rejects = render_rows(renderer, raw_rows, render.max_tokens, split)
        rejects += split_rejects
        write_jsonl(run.path(name), rendered[split])
        log.info("render: %s %d rows kept, %d quarantined (> %d tokens or unmaskable)", split, len(rendered[split]), len(split_rejects), render.max_tokens)
    if not rendered["train"] or not rendered["val"]:
        raise UserError(f"render left an empty split (train {len(rendered['train'])}, val {len(rendered['val'])} rows); raise render.max_tokens or check the build-data run")
    write_jsonl(run.path("rejects.jsonl"), rejects)
    system_tokens = system_prompt_tokens(tokenizer, render.system_prompt)
    stats = token_stats(rendered, system_tokens, len(rejects))
    write_json_atomic(run.path("stats.json"), stats)
    write_json_atomic(run.path("budget.json"), estimate_budget(contract, rendered, benchmark_prompt_tokens(contract, tokenizer)))
    write_text_atomic(run.path("sample_render.txt"), sample_render(tokenizer, rendered["train"][:SAMPLE_ROWS]))
    tokenizer.save_pretrained(str(run.path("tokenizer")))
    hub_files = write_hub_dataset(run, data_dir, stats)
    if push_repo:
        push_to_hub(run.path("hub_dataset"), push_repo, "dataset")
    outputs = [*SPLITS.values(), "rejects.jsonl", "stats.json", "budget.json", "sample_render.txt", "tokenizer/tokenizer.json", *hub_files]
    key_figure = {"train_rows": len(rendered["train"]), "val_rows": len(rendered["val"]), "rejected": len(rejects),
                  "mean_tokens": round(stats["splits"]["train"]["tokens"]["mean"], 1), "system_prompt_tokens": system_tokens}
    return run.finish(outputs, key_figure=key_figure, extra={"pushed_to": push_repo, "data_run": data_dir.name})


def render_rows(renderer: BatchRenderer, raw_rows: Sequence[dict], max_tokens: int, split: str) -> tuple[list[dict], list[dict]]:
    """(rendered rows, quarantined rows with their reason) for one split, in file order."""
    missing = [row.get("row_id", "?") for row in raw_rows if not isinstance(row.get("problem"), str) or not isinstance(row.get("generated_solution"), str)]
    if missing:
        raise UserError(f"{split} rows {missing[:3]} lack string problem/generated_solution; rerun `loraexp build-data`")
    outcomes = renderer.render([(row["problem"], row["generated_solution"]) for row in raw_rows])
    kept, rejects = [], []
    for raw, outcome in zip(raw_rows, outcomes):
        if isinstance(outcome, RenderMismatch):
            rejects.append({**raw, "split": split, "reason": "unmaskable", "detail": str(outcome)})
            continue
        tokens, prompt_len = outcome
        if len(tokens) > max_tokens:
            rejects.append({**raw, "split": split, "reason": "too_long", "detail": f"{len(tokens)} tokens > render.max_tokens {max_tokens}", "tokens": len(tokens)})
            continue
        kept.append({
            "row_id": raw["row_id"], "problem_source": raw["problem_source"], "tokens": tokens,
            "weights": [0] * prompt_len + [1] * (len(tokens) - prompt_len),
            "prompt_tokens": prompt_len, "answer_tokens": len(tokens) - prompt_len,
        })
    return kept, rejects


def system_prompt_tokens(tokenizer: Any, system_prompt: str) -> int:
    """Tokens the system turn adds to every row (27 for the reference prompt with the Qwen3 vocabulary)."""
    if not system_prompt:
        return 0
    probes = ("What is 1 + 1?", "A shop sells 12 pens. How many are left?")
    added = {len(generation_prompt_tokens(tokenizer, system_prompt, q)) - len(generation_prompt_tokens(tokenizer, "", q)) for q in probes}
    if len(added) != 1:
        raise UserError(f"the system turn adds {sorted(added)} tokens depending on the question; the template is not Qwen3-shaped")
    return added.pop()


def distribution(values: Sequence[int]) -> dict[str, float]:
    """mean, p50, p90, p95, max and total of a token count."""
    array = np.asarray(values, dtype=np.int64)
    if array.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "max": 0, "total": 0}
    p50, p90, p95 = np.percentile(array, [50, 90, 95])
    return {"mean": float(array.mean()), "p50": float(p50), "p90": float(p90), "p95": float(p95), "max": int(array.max()), "total": int(array.sum())}


def token_stats(rendered: dict[str, list[dict]], system_tokens: int, rejected: int) -> dict:
    """Per split: tokens with and without the system prompt, prompt and answer tokens."""
    splits = {}
    for split, rows in rendered.items():
        lengths = [len(row["tokens"]) for row in rows]
        splits[split] = {
            "rows": len(rows),
            "tokens": distribution(lengths),
            "tokens_without_system_prompt": distribution([n - system_tokens for n in lengths]),
            "prompt_tokens": distribution([row["prompt_tokens"] for row in rows]),
            "answer_tokens": distribution([row["answer_tokens"] for row in rows]),
        }
    return {"system_prompt_tokens": system_tokens, "rejected_rows": rejected, "splits": splits}


def billed_tokens(rows: Sequence[dict]) -> int:
    """Tokens Tinker bills for these rows as datums: model_input = tokens[:-1] (see datums.datum_from_row)."""
    return sum(len(row["tokens"]) - 1 for row in rows)


def dollars(tokens: float, per_million: float) -> float:
    return round(tokens * per_million / 1e6, 4)


def benchmark_prompt_tokens(contract: Contract, tokenizer: Any) -> dict[str, list[int]] | None:
    """Per benchmark, the generation-prompt length of every question; None when a benchmark cannot be read (offline)."""
    render, prompts = contract.render, {}
    for benchmark in contract.benchmark_specs:
        try:
            questions = load_benchmark(contract, benchmark)
        except UserError as exc:
            log.warning("budget: benchmark %s not readable, eval cost left null (%s)", benchmark.name, exc)
            return None
        questions = questions[: contract.eval.limit] if contract.eval.limit else questions
        prompts[benchmark.name] = [len(generation_prompt_tokens(tokenizer, render.system_prompt, row["question"], render.enable_thinking)) for row in questions]
    return prompts


def estimate_budget(contract: Contract, rendered: dict[str, list[dict]], bench_prompt_tokens: dict[str, list[int]] | None) -> dict:
    """Tokens and USD for training (per epoch, run, sweep), validation, lr-select and evaluation at contract prices."""
    prices, train, select = contract.prices, contract.train, contract.lr_select
    train_rows, val_rows = rendered["train"], rendered["val"]
    conditions, seeds = len(contract.lora.conditions), len(train.seeds)
    per_epoch = billed_tokens(train_rows)
    spe = steps_per_epoch(len(train_rows), train.batch_size)
    validations = len(cadence_steps(train, spe, spe * train.epochs))
    val_pass = billed_tokens(val_rows)
    run_tokens = per_epoch * train.epochs + val_pass * validations  # validation forward passes billed like training
    slice_rows = train_rows[: select.train_rows]
    slice_mean = billed_tokens(slice_rows) / max(len(slice_rows), 1)  # lr-select cycles over this slice
    grid_point = select.steps * train.batch_size * slice_mean
    candidates = {str(size): select.steps * size * slice_mean * len(select.batch_size_lr_grid or select.lr_grid) for size in select.batch_size_candidates}
    lr_sweep = conditions * (len(select.lr_grid) * grid_point + sum(candidates.values()))
    models = 1 + conditions * seeds  # the untouched base + every final run
    evaluation = None
    if bench_prompt_tokens is not None:
        per_benchmark = {}
        for name, prompts in bench_prompt_tokens.items():
            prefill, sampled = sum(prompts), len(prompts) * contract.eval.max_new_tokens
            per_model = dollars(prefill, prices.prefill_per_million) + dollars(sampled, prices.sample_per_million)
            per_benchmark[name] = {"questions": len(prompts), "prompt_tokens_per_model": prefill, "max_sampled_tokens_per_model": sampled,
                                   "usd_per_model": round(per_model, 4), "usd_all_models": round(per_model * models, 4)}
        evaluation = {"models": models, "benchmarks": per_benchmark, "usd_all_models": round(sum(b["usd_all_models"] for b in per_benchmark.values()), 4)}
    training = {
        "train_rows": len(train_rows), "steps_per_epoch": spe, "epochs": train.epochs,
        "tokens_per_epoch": per_epoch, "usd_per_epoch": dollars(per_epoch, prices.train_per_million),
        "val_tokens_per_pass": val_pass, "val_passes_per_run": validations,
        "tokens_per_run": run_tokens, "usd_per_run": dollars(run_tokens, prices.train_per_million),
        "runs": conditions * seeds, "tokens_per_sweep": run_tokens * conditions * seeds,
        "usd_per_sweep": dollars(run_tokens * conditions * seeds, prices.train_per_million),
    }
    lr_select = {
        "slice_rows": len(slice_rows), "mean_tokens_per_row": round(slice_mean, 2), "steps": select.steps,
        "tokens_per_grid_point": round(grid_point), "grid_points": conditions * len(select.lr_grid),
        "batch_size_candidate_tokens": {size: round(tokens) for size, tokens in candidates.items()},
        "tokens_per_sweep": round(lr_sweep), "usd_per_sweep": dollars(lr_sweep, prices.train_per_million),
    }
    total = training["usd_per_sweep"] + lr_select["usd_per_sweep"] + (evaluation["usd_all_models"] if evaluation else 0.0)
    return {
        "prices_usd_per_million": prices.model_dump(), "training": training, "lr_select": lr_select, "eval": evaluation,
        "usd_total": round(total, 2), "eval_included_in_total": evaluation is not None,
        "notes": "billed tokens = len(tokens) - 1 per datum; eval sampled tokens are an upper bound (max_new_tokens per question)",
    }


def sample_render(tokenizer: Any, rows: Sequence[dict]) -> str:
    """A few rows decoded, the prompt (weight 0) and trained span (weight 1) shown apart, with the boundary tokens."""
    blocks = []
    for row in rows:
        tokens, cut = row["tokens"], row["prompt_tokens"]
        edge = range(max(cut - 4, 0), min(cut + 4, len(tokens)))
        boundary = "  ".join(f"{tokens[i]}:{tokenizer.decode([tokens[i]])!r}:w{row['weights'][i]}" for i in edge)
        blocks.append("\n".join([
            f"=== {row['row_id']} ({row['problem_source']}): {len(tokens)} tokens = {cut} prompt (weight 0) + {len(tokens) - cut} trained (weight 1) ===",
            "----- weight 0: prompt -----",
            tokenizer.decode(tokens[:cut]),
            "----- weight 1: trained (answer through the stop token) -----",
            tokenizer.decode(tokens[cut:]),
            f"----- boundary (id:text:weight) -----\n{boundary}",
        ]))
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Hub-ready dataset folder


def write_hub_dataset(run: Run, data_dir: Path, stats: dict) -> list[str]:
    """hub_dataset/: raw + rendered splits, manifests, SHA256SUMS and README.md; returns the files (run-relative)."""
    hub = run.path("hub_dataset")
    if hub.exists():
        shutil.rmtree(hub)
    payloads = {}
    for split, name in SPLITS.items():
        hub_split = HUB_SPLIT_NAMES[split]
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
