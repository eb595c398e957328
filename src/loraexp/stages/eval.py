"""eval: greedy generation on the benchmark under the frozen evaluation contract, strict + lenient scoring.

RUNBOOK step: the untouched base model is evaluated first (the baseline), then every exported
checkpoint by its sampler path, each in its own run. Requests run concurrently (asyncio,
`eval.concurrency` in flight); each finished example is one flushed row of predictions.jsonl, so an
interrupted eval resumes without re-sampling. A fixed subset is sampled again to check that greedy
decoding is deterministic on this backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import orjson
import tinker
from tqdm import tqdm

from loraexp.artifacts import Run
from loraexp.chat import generation_prompt_tokens, stop_token_id
from loraexp.contracts import Benchmark, Contract
from loraexp.data.sources import load_benchmark
from loraexp.errors import UserError
from loraexp.files import JsonlWriter, read_json, read_jsonl, write_json_atomic
from loraexp.scoring.scorers import score_lenient, score_strict, scorer_identity
from loraexp.service import Service
from loraexp.service.retry import Retry
from loraexp.session import Session, StageResult
from loraexp.tokenization import load_saved_tokenizer

log = logging.getLogger(__name__)
PREDICTIONS = "predictions.jsonl"


def eval_contract(contract: Contract, benchmark: Benchmark) -> dict:
    """Everything that decides a score: decoding, prompt, tokenizer, benchmark, scorers. Baseline and checkpoints must share it."""
    return {
        "eval": contract.eval.model_dump(mode="json"), "benchmark": benchmark.model_dump(mode="json"),
        "system_prompt": contract.render.system_prompt, "enable_thinking": contract.render.enable_thinking,
        "tokenizer": contract.render.tokenizer, "base_model": contract.experiment.base_model,
        "scorer": scorer_identity(),
    }


def eval_contract_sha256(contract: Contract, benchmark: Benchmark) -> str:
    return hashlib.sha256(orjson.dumps(eval_contract(contract, benchmark), option=orjson.OPT_SORT_KEYS)).hexdigest()


def _sha(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value)).hexdigest()


def sampling_params(contract: Contract, tokenizer: Any) -> tinker.SamplingParams:
    return tinker.SamplingParams(max_tokens=contract.eval.max_new_tokens, temperature=contract.eval.temperature, stop=[stop_token_id(tokenizer)])


def build_examples(contract: Contract, tokenizer: Any, benchmark: list[dict], limit: int | None) -> list[dict]:
    """One prompt per benchmark question: the training system prompt, the raw question, thinking off."""
    rows = benchmark[:limit] if limit else benchmark
    examples = []
    for index, row in enumerate(rows):
        prompt = generation_prompt_tokens(tokenizer, contract.render.system_prompt, row["question"], contract.render.enable_thinking)
        examples.append({"example_id": row.get("example_id", f"q{index:05d}"), "benchmark_index": index,
                         "question": row["question"], "reference_answer": row["reference"], "prompt": prompt})
    return examples


async def sample_one(client: Any, prompt: list[int], params: tinker.SamplingParams, gate: asyncio.Semaphore, retry: Retry) -> tinker.SampledSequence:
    """One greedy sample; transient failures (submit or completion) are retried with backoff, as samples are independent."""
    async with gate:
        response = await retry.acall(lambda: client.sample(prompt=tinker.ModelInput.from_ints(prompt), num_samples=1, sampling_params=params), "sample")
        return response.sequences[0]


def prediction_row(example: dict, sequence: tinker.SampledSequence, tokenizer: Any) -> dict:
    """Decode, score strictly and leniently, hash prompt and target."""
    text = tokenizer.decode(sequence.tokens, skip_special_tokens=True)
    strict = score_strict(text, example["reference_answer"])
    return {
        "example_id": example["example_id"], "benchmark_index": example["benchmark_index"],
        "question": example["question"], "reference_answer": example["reference_answer"], "generated_text": text,
        "extracted": strict["extracted"], "normalized_prediction": strict["normalized_prediction"],
        "normalized_reference": strict["normalized_reference"], "correct": strict["correct"],
        "lenient_correct": score_lenient(text, example["reference_answer"]),
        "prompt_tokens": len(example["prompt"]), "generated_tokens": len(sequence.tokens),
        "stop_reason": str(sequence.stop_reason), "prompt_hash": _sha(example["prompt"]), "target_hash": _sha(example["reference_answer"]),
    }


async def generate_all(client: Any, examples: list[dict], params: tinker.SamplingParams, tokenizer: Any, writer: JsonlWriter, concurrency: int,
                       label: str, progress: bool, retry: Retry) -> None:
    """Sample every pending example with `concurrency` requests in flight; write each row as it finishes."""
    gate = asyncio.Semaphore(concurrency)

    async def sample(example: dict) -> tuple[dict, tinker.SampledSequence]:
        return example, await sample_one(client, example["prompt"], params, gate, retry)

    correct = done = 0
    with tqdm(total=len(examples), desc=label, unit="q", disable=None if progress else True, leave=False) as bar:
        # Score here, not in the sampling task: a finished task frees its slot at once, so the requests that take
        # the freed slots are sent before the 1-2 ms of CPU per row (decode + math-verify) runs on the event loop.
        # Scored inside the task, a batch of 16 answers cost 16 scorings before the next 16 requests went out.
        for finished in asyncio.as_completed([sample(example) for example in examples]):
            example, sequence = await finished
            row = prediction_row(example, sequence, tokenizer)
            writer.write(row)
            done += 1
            correct += row["correct"]
            bar.update(1)
            bar.set_postfix(acc=f"{correct / done:.3f}")


async def check_determinism(client: Any, examples: list[dict], rows_by_id: dict[str, dict], params: tinker.SamplingParams, tokenizer: Any,
                            concurrency: int, retry: Retry) -> dict:
    """Re-sample a fixed subset and compare with the recorded generations (greedy must agree)."""
    gate = asyncio.Semaphore(concurrency)
    sequences = await asyncio.gather(*(sample_one(client, ex["prompt"], params, gate, retry) for ex in examples))
    disagreements = [ex["example_id"] for ex, seq in zip(examples, sequences)
                     if tokenizer.decode(seq.tokens, skip_special_tokens=True) != rows_by_id[ex["example_id"]]["generated_text"]]
    checked = len(examples)
    if disagreements:
        log.warning("DETERMINISM: %d of %d greedy re-samples differ from the first pass (e.g. %s); "
                    "temperature-0 sampling is not deterministic on this backend", len(disagreements), checked, disagreements[:3])
    return {"checked": checked, "agreed": checked - len(disagreements), "mismatches": len(disagreements),
            "agreement": (checked - len(disagreements)) / checked if checked else None, "disagreeing_example_ids": disagreements}


def summarize(contract: Contract, benchmark: Benchmark, rows: list[dict], model: dict, determinism: dict) -> dict:
    total = len(rows)
    prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    generated_tokens = sum(r["generated_tokens"] for r in rows)
    prices = contract.prices
    return {
        "condition": model["condition"], "seed": model["seed"], "benchmark": benchmark.name, "checkpoint_step": model.get("step"),
        "sampler_path": model.get("sampler_path"),
        "strict_accuracy": sum(r["correct"] for r in rows) / total, "lenient_accuracy": sum(r["lenient_correct"] for r in rows) / total,
        "correct": sum(r["correct"] for r in rows), "lenient_correct": sum(r["lenient_correct"] for r in rows), "total": total,
        "extraction_failures": sum(r["extracted"] is None for r in rows), "truncations": sum(r["stop_reason"] == "length" for r in rows),
        "prompt_tokens": prompt_tokens, "generated_tokens": generated_tokens,
        "cost_usd": (prompt_tokens * prices.prefill_per_million + generated_tokens * prices.sample_per_million) / 1e6,
        "generation": {"temperature": contract.eval.temperature, "max_new_tokens": contract.eval.max_new_tokens, "stop": "<|im_end|>",
                       "enable_thinking": contract.render.enable_thinking, "num_samples": 1, "concurrency": contract.eval.concurrency,
                       "system_prompt": contract.render.system_prompt},
        "eval_contract_sha256": eval_contract_sha256(contract, benchmark), "eval_contract": eval_contract(contract, benchmark),
        "determinism": determinism,
    }


def run(session: Session, condition: str | None = None, seed: int | None = None, checkpoint: str | None = None, baseline_only: bool = False,
        limit: int | None = None, render_run: str | None = None, benchmark: str | None = None) -> StageResult:
    """Evaluate the baseline first, then every exported checkpoint (or the one `checkpoint`), on every benchmark, each in its own run."""
    contract, result = session.contract, StageResult("eval")
    check_flags(contract, condition, seed, checkpoint, limit, benchmark)
    render_dir = session.finished_run("render", render_run)
    models, export_dir = models_to_evaluate(session, condition, seed, checkpoint, baseline_only)
    tokenizer = load_saved_tokenizer(render_dir)
    benchmarks = [(b, load_benchmark(contract, b)) for b in contract.benchmark_specs if benchmark in (None, b.name)]
    for model in models:
        exported = export_dir is not None and model["seed"] is not None
        parts = ["baseline"] if model["seed"] is None else [model["condition"], f"seed{model['seed']}"]
        client = None  # one sampler per model, shared by its benchmarks, made only when one of them has work left
        for spec, questions in benchmarks:
            run_id = session.run_id("eval", *contract.benchmark_parts(spec), *parts) + (f"-probe{limit}" if limit else "")
            run = session.begin(result, run_id, inputs=[render_dir] + ([export_dir] if exported else []))
            if run is None:
                continue
            run.add_input(render_dir, ["tokenizer/tokenizer.json"])
            if exported:
                run.add_input(export_dir, ["exports.json"])
            service = session.service_for("eval", run)
            client = client or service.sampling_client(model_path=model.get("sampler_path"), base_model=contract.experiment.base_model)
            summary = evaluate(contract, spec, service, client, run, tokenizer, questions, model, limit, session.progress)
            result.finished(run_id, f"{run_id}: strict accuracy {summary['strict_accuracy']:.4f} ({summary['correct']}/{summary['total']}), "
                                    f"lenient {summary['lenient_accuracy']:.4f}")
    return result


def check_flags(contract: Contract, condition: str | None, seed: int | None, checkpoint: str | None, limit: int | None, benchmark: str | None) -> None:
    if checkpoint and (condition is None or seed is None):
        raise UserError("--checkpoint needs --condition and --seed, so the predictions are filed under the right run")
    if checkpoint and not checkpoint.startswith("tinker://"):
        raise UserError("--checkpoint must be a tinker://<run>/sampler_weights/<name> path (the sampler_path in the export run's exports.json)")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of questions (got {limit}); leave it out to evaluate the whole benchmark")
    if condition is not None:
        contract.condition(condition)
    names = [b.name for b in contract.benchmark_specs]
    if benchmark is not None and benchmark not in names:
        raise UserError(f"unknown benchmark {benchmark!r}; this contract has: {', '.join(names)}")


def models_to_evaluate(session: Session, condition: str | None, seed: int | None, checkpoint: str | None, baseline_only: bool) -> tuple[list[dict], Path | None]:
    """The baseline (the untouched base model) first, then the exported checkpoints asked for; and the export run they come from."""
    baseline = {"condition": "baseline", "seed": None, "sampler_path": None}
    if checkpoint:
        return [{"condition": condition, "seed": seed, "sampler_path": checkpoint}], None
    if baseline_only:
        return [baseline], None
    export_dir = session.finished_run("export")
    exports = read_json(export_dir / "exports.json")["checkpoints"]
    return [baseline] + [{"condition": e["condition"], "seed": e["seed"], "sampler_path": e["sampler_path"], "step": e["step"]}
                         for e in exports if (condition is None or e["condition"] == condition) and (seed is None or e["seed"] == seed)], export_dir


def evaluate(contract: Contract, benchmark: Benchmark, service: Service, client: Any, run: Run, tokenizer: Any, questions: list[dict], model: dict,
             limit: int | None = None, progress: bool = True) -> dict:
    """Evaluate one model (baseline: sampler_path None) on one benchmark; resume from predictions.jsonl; check determinism."""
    examples = build_examples(contract, tokenizer, questions, limit if limit is not None else contract.eval.limit)
    if not examples:
        raise UserError(f"benchmark {benchmark.name} has no usable question; check its source")
    done = {row["example_id"]: row for row in (read_jsonl(run.path(PREDICTIONS)) if run.path(PREDICTIONS).exists() else [])}
    pending = [ex for ex in examples if ex["example_id"] not in done]
    if done:
        log.info("%s: resuming, %d of %d examples already scored", run.run_id, len(done), len(examples))
    params = sampling_params(contract, tokenizer)
    with JsonlWriter(run.path(PREDICTIONS)) as writer:
        asyncio.run(generate_all(client, pending, params, tokenizer, writer, contract.eval.concurrency, run.run_id, progress, service.retry))
    rows_by_id = {row["example_id"]: row for row in read_jsonl(run.path(PREDICTIONS))}
    rows = [rows_by_id[ex["example_id"]] for ex in examples]
    subset = examples[: contract.eval.determinism_subset]
    determinism = asyncio.run(check_determinism(client, subset, rows_by_id, params, tokenizer, contract.eval.concurrency, service.retry))
    determinism["allowed_mismatches"] = contract.eval.max_determinism_mismatches
    summary = summarize(contract, benchmark, rows, model, determinism)
    write_json_atomic(run.path("summary.json"), summary)
    if determinism["mismatches"] > contract.eval.max_determinism_mismatches:
        raise UserError(f"{run.run_id}: {determinism['mismatches']} of {determinism['checked']} greedy re-samples differ from the first pass "
                        f"(eval.max_determinism_mismatches = {contract.eval.max_determinism_mismatches}): temperature-0 sampling is not "
                        f"deterministic on this backend, so its scores would not reproduce; see {run.path('summary.json')}")
    run.finish([PREDICTIONS, "summary.json"], key_figure={"accuracy": summary["strict_accuracy"], "lenient": summary["lenient_accuracy"],
                                                         "determinism_mismatches": determinism["mismatches"]})
    log.info("%s: strict accuracy %.4f (%d/%d), lenient %.4f", run.run_id, summary["strict_accuracy"], summary["correct"], summary["total"], summary["lenient_accuracy"])
    return summary
