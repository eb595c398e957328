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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from loraexp.artifacts import MANIFEST, Run, cache_root
from loraexp.budget import benchmark_prompt_tokens, estimate_budget
from loraexp.chat import BatchRenderer, RenderMismatch, generation_prompt_tokens
from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.files import (
    read_jsonl,
    write_json_atomic,
    write_jsonl,
    write_text_atomic,
)
from loraexp.hub import push_to_hub, require_hf_token, write_hub_dataset
from loraexp.session import Session, StageResult
from loraexp.tokenization import load_tokenizer

log = logging.getLogger(__name__)

SPLITS = {"train": "train.jsonl", "val": "val.jsonl"}  # build-data file names, kept in the render run
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
