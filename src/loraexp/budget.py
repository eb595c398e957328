"""The token and dollar budget of a contract, from its rendered rows: training per epoch, run and sweep (validation
passes included), the lr-select sweep, and evaluation of every model on every benchmark, at the contract's prices.

Written by the render stage as budget.json, before anything is paid for.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from loraexp.chat import generation_prompt_tokens
from loraexp.contracts import Contract
from loraexp.data.sources import load_benchmark
from loraexp.errors import UserError
from loraexp.training.schedule import cadence_steps, steps_per_epoch

log = logging.getLogger(__name__)


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
