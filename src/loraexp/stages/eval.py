"""eval: greedy generation on the benchmark under the frozen evaluation contract, strict + lenient scoring.

The untouched base model is evaluated first (the baseline), then every exported checkpoint by its
sampler path. Requests run concurrently (asyncio, `eval.concurrency` in flight); each finished
example is one flushed row of predictions.jsonl, so an interrupted eval resumes without re-sampling.
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

from loraexp.artifacts import JsonlWriter, Run, read_jsonl, write_json_atomic
from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.scoring import score_lenient, score_strict
from loraexp.chat import generation_prompt_tokens, stop_token_id
from loraexp.retry import SERVICE_ERRORS, MAX_ATTEMPTS, backoff_delay, call_with_retries, is_transient, permanent_error
from loraexp.training import resolve

log = logging.getLogger(__name__)
PREDICTIONS = "predictions.jsonl"


def eval_contract(contract: Contract) -> dict:
    """Everything that decides a score: decoding, prompt, tokenizer, benchmark. Baseline and checkpoints must share it."""
    return {
        "eval": contract.eval.model_dump(mode="json"), "benchmark": contract.benchmark.model_dump(mode="json"),
        "system_prompt": contract.render.system_prompt, "enable_thinking": contract.render.enable_thinking,
        "tokenizer": contract.render.tokenizer, "base_model": contract.experiment.base_model,
        "scorer": "strict: last \\boxed{} by brace depth, no fallback, contract normalizations, decimal equality; lenient: math-verify + comma/$/percent/unit tolerance",
    }


def eval_contract_sha256(contract: Contract) -> str:
    return hashlib.sha256(orjson.dumps(eval_contract(contract), option=orjson.OPT_SORT_KEYS)).hexdigest()


def _sha(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value)).hexdigest()


def load_render_tokenizer(render_dir: Path) -> Any:
    """The exact tokenizer (and chat template) the render stage used, saved in its run dir."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(render_dir / "tokenizer"))


def sampling_params(contract: Contract, tokenizer: Any) -> tinker.SamplingParams:
    return tinker.SamplingParams(max_tokens=contract.eval.max_new_tokens, temperature=contract.eval.temperature, stop=[stop_token_id(tokenizer)])


def sampling_client_for(service: Any, contract: Contract, sampler_path: str | None) -> Any:
    """The base model's sampler for the baseline, or a checkpoint's by its sampler_weights path."""
    if sampler_path is None:
        return call_with_retries(lambda: resolve(service.create_sampling_client(base_model=contract.experiment.base_model)), "create_sampling_client (base model)")
    what = f"create_sampling_client {sampler_path} (it must be a sampler_weights path: the sampler_path in exports.json)"
    return call_with_retries(lambda: resolve(service.create_sampling_client(model_path=sampler_path)), what)


def build_examples(contract: Contract, tokenizer: Any, benchmark: list[dict], limit: int | None) -> list[dict]:
    """One prompt per benchmark question: the training system prompt, the raw question, thinking off."""
    rows = benchmark[:limit] if limit else benchmark
    examples = []
    for index, row in enumerate(rows):
        prompt = generation_prompt_tokens(tokenizer, contract.render.system_prompt, row["question"], contract.render.enable_thinking)
        examples.append({"example_id": row.get("example_id", f"q{index:05d}"), "benchmark_index": index,
                         "question": row["question"], "reference_answer": row["reference"], "prompt": prompt})
    return examples


async def _sample(client: Any, prompt: list[int], params: tinker.SamplingParams, gate: asyncio.Semaphore) -> tinker.SampledSequence:
    """One greedy sample; transient failures (submit or completion) are retried with backoff, as samples are independent."""
    async with gate:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = await client.sample(prompt=tinker.ModelInput.from_ints(prompt), num_samples=1, sampling_params=params)
                return response.sequences[0]
            except SERVICE_ERRORS as exc:
                if not is_transient(exc):
                    raise permanent_error(exc, "sample") from None
                if attempt == MAX_ATTEMPTS:
                    raise UserError(f"sample still failing after {MAX_ATTEMPTS} tries ({type(exc).__name__}); rerun the same command later to resume") from None
                log.warning("sample: %s; retry %d in %.1f s", type(exc).__name__, attempt, backoff_delay(attempt))
                await asyncio.sleep(backoff_delay(attempt))
    raise AssertionError("unreachable")


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


async def generate_all(client: Any, examples: list[dict], params: tinker.SamplingParams, tokenizer: Any, writer: JsonlWriter, concurrency: int, label: str, progress: bool) -> None:
    """Sample every pending example with `concurrency` requests in flight; write each row as it finishes."""
    gate = asyncio.Semaphore(concurrency)

    async def sample(example: dict) -> tuple[dict, tinker.SampledSequence]:
        return example, await _sample(client, example["prompt"], params, gate)

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


async def check_determinism(client: Any, examples: list[dict], rows_by_id: dict[str, dict], params: tinker.SamplingParams, tokenizer: Any, concurrency: int) -> dict:
    """Re-sample a fixed subset and compare with the recorded generations (greedy must agree)."""
    gate = asyncio.Semaphore(concurrency)
    sequences = await asyncio.gather(*(_sample(client, ex["prompt"], params, gate) for ex in examples))
    disagreements = [ex["example_id"] for ex, seq in zip(examples, sequences)
                     if tokenizer.decode(seq.tokens, skip_special_tokens=True) != rows_by_id[ex["example_id"]]["generated_text"]]
    checked = len(examples)
    if disagreements:
        log.warning("DETERMINISM: %d of %d greedy re-samples differ from the first pass (e.g. %s); "
                    "temperature-0 sampling is not deterministic on this backend", len(disagreements), checked, disagreements[:3])
    return {"checked": checked, "agreed": checked - len(disagreements), "agreement": (checked - len(disagreements)) / checked if checked else None,
            "disagreeing_example_ids": disagreements}


def summarize(contract: Contract, rows: list[dict], model: dict, determinism: dict) -> dict:
    total = len(rows)
    prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    generated_tokens = sum(r["generated_tokens"] for r in rows)
    prices = contract.prices
    return {
        "condition": model["condition"], "seed": model["seed"], "checkpoint_step": model.get("step"), "sampler_path": model.get("sampler_path"),
        "strict_accuracy": sum(r["correct"] for r in rows) / total, "lenient_accuracy": sum(r["lenient_correct"] for r in rows) / total,
        "correct": sum(r["correct"] for r in rows), "lenient_correct": sum(r["lenient_correct"] for r in rows), "total": total,
        "extraction_failures": sum(r["extracted"] is None for r in rows), "truncations": sum(r["stop_reason"] == "length" for r in rows),
        "prompt_tokens": prompt_tokens, "generated_tokens": generated_tokens,
        "cost_usd": (prompt_tokens * prices.prefill_per_million + generated_tokens * prices.sample_per_million) / 1e6,
        "generation": {"temperature": contract.eval.temperature, "max_new_tokens": contract.eval.max_new_tokens, "stop": "<|im_end|>",
                       "enable_thinking": contract.render.enable_thinking, "num_samples": 1, "concurrency": contract.eval.concurrency,
                       "system_prompt": contract.render.system_prompt},
        "eval_contract_sha256": eval_contract_sha256(contract), "eval_contract": eval_contract(contract),
        "determinism": determinism,
    }


def run(contract: Contract, service: Any, run: Run, tokenizer: Any, benchmark: list[dict], model: dict, limit: int | None = None, progress: bool = True) -> dict:
    """Evaluate one model (baseline: sampler_path None) on the benchmark; resume from predictions.jsonl."""
    examples = build_examples(contract, tokenizer, benchmark, limit if limit is not None else contract.eval.limit)
    if not examples:
        raise UserError("the benchmark has no usable question; check benchmark.source")
    done = {row["example_id"]: row for row in (read_jsonl(run.path(PREDICTIONS)) if run.path(PREDICTIONS).exists() else [])}
    pending = [ex for ex in examples if ex["example_id"] not in done]
    if done:
        log.info("%s: resuming, %d of %d examples already scored", run.run_id, len(done), len(examples))
    client = sampling_client_for(service, contract, model.get("sampler_path"))
    params = sampling_params(contract, tokenizer)
    with JsonlWriter(run.path(PREDICTIONS)) as writer:
        asyncio.run(generate_all(client, pending, params, tokenizer, writer, contract.eval.concurrency, run.run_id, progress))
    rows_by_id = {row["example_id"]: row for row in read_jsonl(run.path(PREDICTIONS))}
    rows = [rows_by_id[ex["example_id"]] for ex in examples]
    subset = examples[: contract.eval.determinism_subset]
    determinism = asyncio.run(check_determinism(client, subset, rows_by_id, params, tokenizer, contract.eval.concurrency))
    summary = summarize(contract, rows, model, determinism)
    write_json_atomic(run.path("summary.json"), summary)
    run.finish([PREDICTIONS, "summary.json"], key_figure={"accuracy": summary["strict_accuracy"], "lenient": summary["lenient_accuracy"]})
    log.info("%s: strict accuracy %.4f (%d/%d), lenient %.4f", run.run_id, summary["strict_accuracy"], summary["correct"], summary["total"], summary["lenient_accuracy"])
    return summary
