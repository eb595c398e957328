"""`LocalSamplingClient`: tinker.SamplingClient.sample on a batching worker.

Concurrent sample() calls (e.g. asyncio.gather over an eval set) are queued; the worker takes
whatever is queued (after a 2 ms gathering window), sorts the rows by prompt length, cuts them into
batches whose padded size (rows x (longest prompt + most new tokens)) fits the token budget, left-pads
each batch and decodes it with a KV cache, so concurrency buys throughput as it does on the service
and 1,319 questions x 512 tokens neither run one at a time nor exhaust memory.
Greedy when temperature is 0; returned tokens include the stop token; stop_reason "stop"|"length".
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import uuid
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture

from loraexp.local_tinker.errors import bad_request

GATHER_SECONDS = 0.002  # wait this long after the first queued request for concurrent ones
MAX_BATCH_ROWS = 64  # sequences decoded together
IDLE_POLL_SECONDS = 0.5  # the worker exits once its client is garbage collected


@dataclass
class _Request:
    prompt: list[int]
    num_samples: int
    params: types.SamplingParams
    future: Future
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


@dataclass
class _Row:
    """One sequence being decoded."""

    prompt: list[int]
    max_tokens: int
    stop_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    temperature: float
    top_k: int
    top_p: float
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_reason: str | None = None


class LocalSamplingClient:
    """Samples from one fixed set of weights (a sampler checkpoint, a snapshot, or the base model)."""

    def __init__(self, model: torch.nn.Module, base_model: str, tokenizer_source: str, model_path: str | None, token_budget: int):
        self.model = model.eval()
        self.token_budget = token_budget
        self.base_model = base_model
        self.model_path = model_path
        self._tokenizer_source = tokenizer_source
        self._tokenizer: Any = None
        config = model.config
        self._eos_ids = _as_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None)) or _as_ids(config.eos_token_id)
        self._pad_id = config.pad_token_id if config.pad_token_id is not None else (min(self._eos_ids) if self._eos_ids else 0)
        self._max_positions = getattr(config, "max_position_embeddings", None) or 1 << 30
        self._queue: queue.Queue[_Request] = queue.Queue()
        worker = threading.Thread(target=_serve, args=(weakref.ref(self), self._queue), daemon=True, name="local-tinker-sampler")
        worker.start()

    def sample(self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams,
               include_prompt_logprobs: bool = False, topk_prompt_logprobs: int = 0, topk_sample_logprobs: int = 0,
               target_prompt_logprobs: types.TensorData | None = None, prompt_alt_tokens_k: int = 0,
               prompt_logprobs_last_n: int | None = None) -> APIFuture[types.SampleResponse]:
        future: Future = Future()
        extras = include_prompt_logprobs or topk_prompt_logprobs or topk_sample_logprobs or target_prompt_logprobs is not None or prompt_alt_tokens_k
        tokens = prompt.to_ints()
        if extras:
            future.set_exception(bad_request("the local backend returns sampled-token logprobs only; prompt and top-k logprobs are not implemented", "asample"))
        elif not tokens or num_samples < 1:
            future.set_exception(bad_request(f"sample needs a non-empty prompt and num_samples >= 1 (got {len(tokens)} tokens, {num_samples})", "asample"))
        else:
            self._queue.put(_Request(tokens, num_samples, sampling_params, future))
        return AwaitableConcurrentFuture(future)

    def get_base_model(self) -> str:
        return self.base_model

    def get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_source)
        return self._tokenizer

    # ---- decoding --------------------------------------------------------------------------------
    def _rows(self, request: _Request) -> list[_Row]:
        params = request.params
        stop = params.stop
        stop_ids: frozenset[int] = frozenset(self._eos_ids) if stop is None else frozenset()
        stop_strings: tuple[str, ...] = ()
        if isinstance(stop, str):
            stop_strings = (stop,)
        elif stop and isinstance(stop[0], str):
            stop_strings = tuple(stop)
        elif stop:
            stop_ids = frozenset(int(token) for token in stop)
        if stop_strings:
            self.get_tokenizer()  # fails here, once, when the base model ships no tokenizer
        room = self._max_positions - len(request.prompt)
        if room < 1:
            raise bad_request(f"prompt of {len(request.prompt)} tokens leaves no room in a {self._max_positions}-token context", "asample")
        max_tokens = min(params.max_tokens, room) if params.max_tokens is not None else room
        if max_tokens < 1:
            raise bad_request(f"max_tokens must be >= 1, got {params.max_tokens}", "asample")
        rows = []
        for index in range(request.num_samples):
            generator = None
            if params.temperature > 0:
                generator = torch.Generator(device=self.model.device)
                generator.manual_seed(params.seed + index if params.seed is not None else int.from_bytes(uuid.uuid4().bytes[:7], "big"))
            rows.append(_Row(request.prompt, max_tokens, stop_ids, stop_strings, params.temperature, params.top_k, params.top_p, generator))
        return rows

    @torch.inference_mode()
    def _decode(self, rows: list[_Row]) -> None:
        """Left-padded batched decoding with a KV cache until every row stops or reaches its max_tokens."""
        device = self.model.device
        width = max(len(row.prompt) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, width - len(row.prompt):] = torch.tensor(row.prompt)
            mask[index, width - len(row.prompt):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        for _ in range(max(row.max_tokens for row in rows)):
            logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            chosen = [self._choose(row, logprobs[index]) for index, row in enumerate(rows)]
            for index, (row, token) in enumerate(zip(rows, chosen)):
                if row.stop_reason is None:
                    row.tokens.append(token)
                    row.logprobs.append(float(logprobs[index, token]))
                    row.stop_reason = self._stop_reason(row)
            if all(row.stop_reason is not None for row in rows):
                break
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions[:, -1:] + 1
            next_ids = torch.tensor(chosen, device=device)[:, None]
            out = self.model(input_ids=next_ids, attention_mask=mask, position_ids=positions, past_key_values=out.past_key_values, use_cache=True)

    def _choose(self, row: _Row, logprobs: torch.Tensor) -> int:
        if row.stop_reason is not None or row.temperature <= 0:
            return int(logprobs.argmax())
        scores = logprobs / row.temperature
        if row.top_k > 0:
            kth = torch.topk(scores, min(row.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if row.top_p < 1:
            ordered, order = torch.sort(scores, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            ordered[(probs.cumsum(-1) - probs) > row.top_p] = float("-inf")  # keep the smallest set reaching top_p
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, ordered)
        return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=row.generator))

    def _stop_reason(self, row: _Row) -> str | None:
        if row.tokens[-1] in row.stop_ids:
            return "stop"
        if row.stop_strings:
            text = self._tokenizer.decode(row.tokens)
            if any(stop in text for stop in row.stop_strings):
                return "stop"
        return "length" if len(row.tokens) >= row.max_tokens else None

    def _run(self, requests: list[_Request]) -> None:
        prepared: list[tuple[_Request, list[_Row]]] = []
        for request in requests:
            if not request.future.set_running_or_notify_cancel():
                continue  # the caller gave up (e.g. eval aborted): setting its result would kill this worker thread
            try:
                prepared.append((request, self._rows(request)))
            except Exception as exc:  # noqa: BLE001 - reported to that request's caller only
                request.future.set_exception(exc)
        rows = list(itertools.chain.from_iterable(request_rows for _, request_rows in prepared))
        if not rows:
            return
        try:
            for batch in pack(rows, self.token_budget):
                self._decode(batch)
        except Exception as exc:  # noqa: BLE001 - every request in the failed batch learns of it
            for request, _ in prepared:
                request.future.set_exception(exc)
            return
        for request, request_rows in prepared:
            sequences = [types.SampledSequence(stop_reason=row.stop_reason, sequence_id=f"{request.request_id}:{index}",
                                               tokens_np=np.asarray(row.tokens, dtype=np.int32), logprobs_np=np.asarray(row.logprobs, dtype=np.float32))
                         for index, row in enumerate(request_rows)]
            request.future.set_result(types.SampleResponse(sequences=sequences))


def pack(rows: list[_Row], token_budget: int) -> list[list[_Row]]:
    """Rows sorted by prompt length, cut into batches of at most MAX_BATCH_ROWS whose padded size fits `token_budget`
    (a row too long for the budget on its own is decoded alone)."""
    batches: list[list[_Row]] = []
    current: list[_Row] = []
    for row in sorted(rows, key=lambda r: len(r.prompt)):
        candidate = current + [row]
        size = len(candidate) * (max(len(r.prompt) for r in candidate) + max(r.max_tokens for r in candidate))
        if current and (len(candidate) > MAX_BATCH_ROWS or size > token_budget):
            batches.append(current)
            candidate = [row]
        current = candidate
    return batches + ([current] if current else [])


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _serve(client_ref: "weakref.ref[LocalSamplingClient]", requests: "queue.Queue[_Request]") -> None:
    """Worker loop: gather what is queued, decode it as one batch; exit when the client is gone."""
    while True:
        try:
            first = requests.get(timeout=IDLE_POLL_SECONDS)
        except queue.Empty:
            if client_ref() is None:
                return
            continue
        batch, rows = [first], first.num_samples
        deadline = time.monotonic() + GATHER_SECONDS
        while rows < MAX_BATCH_ROWS:
            try:
                item = requests.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            batch.append(item)
            rows += item.num_samples
        client = client_ref()
        if client is None:
            return
        client._run(batch)
        del client
