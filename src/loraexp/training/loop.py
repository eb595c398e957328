"""The supervised training loop shared by smoke, lr-select and train, written against the Tinker surface.

Steps are 1-based: step s is the s-th optimizer step, and "checkpoint at step s" holds the weights
after it. The loop submits work in the order the service must run it:

    forward_backward(s) -> optim_step(s) -> [forward(val) -> save_state(s)] -> forward_backward(s+1) ...

so validation and save_state see exactly the weights after step s even when later steps are already
submitted (the service runs requests in submission order). Each checkpoint record says the next
step to run, so a resume replays nothing and skips nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import tinker
from tqdm import tqdm

from loraexp.errors import UserError
from loraexp.files import JsonlWriter, iter_jsonl, read_jsonl, write_jsonl
from loraexp.service.datums import datum_from_row, mean_nll
from loraexp.service.retry import InFlightFailure, await_or_raise, settle
from loraexp.training.schedule import LoopPlan, batch_indices, steps_per_epoch

if TYPE_CHECKING:
    from loraexp.contracts import LoraCondition
    from loraexp.service import Service

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints.jsonl"


@dataclass
class LoopState:
    """Where the loop stands; restored from the last checkpoint record on resume."""

    next_step: int = 1
    cumulative_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class PendingStep:
    step: int
    learning_rate: float
    batch: list[tinker.Datum]
    forward_backward: list[Any]  # futures, or outputs already awaited
    optim: Any
    validation: list[Any] = field(default_factory=list)
    save: Any = None
    submitted_at: float = field(default_factory=time.perf_counter)


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def submit_step(service: "Service", client: Any, plan: LoopPlan, datums: Sequence[tinker.Datum], step: int) -> PendingStep:
    """Submit one optimizer step in the contract's request shape (only the pipelined shape leaves it in flight)."""
    batch = [datums[i] for i in batch_indices(len(datums), plan.batch_size, step, plan.seed, plan.epoch_order)]
    adam = plan.adam_params(step)
    what = f"step {step}"
    # awaited one at a time, nothing is queued behind a request: a failed one (which applied nothing) is retried alone
    if plan.request_shape == "single_datum_calls":
        outputs = [service.call(lambda datum=datum: client.forward_backward([datum], "cross_entropy"), f"forward_backward {what}") for datum in batch]
        return PendingStep(step, adam.learning_rate, batch, outputs, service.call(lambda: client.optim_step(adam), f"optim_step {what}"))
    if plan.request_shape == "batched_datums":
        output = service.call(lambda: client.forward_backward(batch, "cross_entropy"), f"forward_backward {what}")
        return PendingStep(step, adam.learning_rate, batch, [output], service.call(lambda: client.optim_step(adam), f"optim_step {what}"))
    # pipelined: both submitted before either is awaited
    forward_backward = service.submit(lambda: client.forward_backward(batch, "cross_entropy"), f"forward_backward {what}")
    return PendingStep(step, adam.learning_rate, batch, [forward_backward], service.submit(lambda: client.optim_step(adam), f"optim_step {what}"))


def submit_validation(service: "Service", client: Any, val_datums: Sequence[tinker.Datum], batch_size: int, what: str) -> list[Any]:
    """Batched, gradient-free `forward` calls over the validation datums (futures, in chunk order)."""
    return [service.submit(lambda chunk=chunk: client.forward(list(chunk), "cross_entropy"), f"forward {what}")
            for chunk in _chunks(val_datums, batch_size)]


def submit_checkpoint(service: "Service", client: Any, plan: LoopPlan, pending: PendingStep, val_datums: Sequence[tinker.Datum]) -> None:
    """Queue validation and save_state right after the step, so both see exactly the post-step weights."""
    what = f"checkpoint at step {pending.step}"
    pending.validation = submit_validation(service, client, val_datums, plan.val_batch_size, f"(validation) {what}")
    pending.save = service.submit(lambda: client.save_state(f"step-{pending.step:06d}", ttl_seconds=plan.ttl_seconds), f"save_state {what}")


def validation_nll(service: "Service", client: Any, val_datums: Sequence[tinker.Datum], batch_size: int) -> tuple[float, float]:
    """Token-weighted validation NLL over answer tokens with batched, gradient-free `forward`; (mean NLL, weight sum)."""
    futures = submit_validation(service, client, val_datums, batch_size, "(validation)")
    settle(*futures)
    return _weighted_nll(futures, _chunks(val_datums, batch_size))


def _weighted_nll(outputs: list[Any], batches: Sequence[Sequence[tinker.Datum]]) -> tuple[float, float]:
    nll_sum = weight_sum = 0.0
    for output, batch in zip(outputs, batches):
        part_nll, part_weight = mean_nll(await_or_raise(output, "forward"), list(batch))
        nll_sum += part_nll
        weight_sum += part_weight
    return (nll_sum / weight_sum if weight_sum else float("nan")), weight_sum


def _expires_at(ttl_seconds: int | None) -> str | None:
    if ttl_seconds is None:
        return None
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=ttl_seconds)).isoformat(timespec="seconds")


class TrainingLoop:
    """Runs steps `state.next_step..plan.total_steps`, writing metrics.jsonl and checkpoints.jsonl in `run_dir`."""

    def __init__(self, service: "Service", client: Any, plan: LoopPlan, train_datums: Sequence[tinker.Datum], val_datums: Sequence[tinker.Datum],
                 run_dir: Path | None, state: LoopState, progress: bool = True, label: str = "train"):
        self.service, self.client, self.plan, self.state = service, client, plan, state
        self.train_datums, self.val_datums = train_datums, val_datums
        self.metrics = JsonlWriter(run_dir / METRICS) if run_dir else None
        self.checkpoints = JsonlWriter(run_dir / CHECKPOINTS) if run_dir else None
        self.records: list[dict] = []
        self.bar = tqdm(total=plan.total_steps, initial=state.next_step - 1, desc=label, unit="step", disable=None if progress else True, leave=False)
        self.started = time.perf_counter()
        self.tokens_this_session = 0

    def run(self) -> list[dict]:
        depth = self.plan.submit_ahead + 1 if self.plan.request_shape == "batched_datums_pipelined" else 1
        in_flight: deque[PendingStep] = deque()
        try:
            for step in range(self.state.next_step, self.plan.total_steps + 1):
                pending = submit_step(self.service, self.client, self.plan, self.train_datums, step)
                if step in self.plan.cadence:
                    submit_checkpoint(self.service, self.client, self.plan, pending, self.val_datums)
                in_flight.append(pending)
                while len(in_flight) >= depth:
                    self._finish(in_flight.popleft())
            while in_flight:
                self._finish(in_flight.popleft())
        except InFlightFailure:
            settle(*(f for p in in_flight for f in (*p.forward_backward, p.optim, *p.validation, p.save)))
            raise
        finally:
            self.bar.close()
            for writer in (self.metrics, self.checkpoints):
                if writer:
                    writer.close()
        return self.records

    def _finish(self, pending: PendingStep) -> None:
        settle(*pending.forward_backward, pending.optim, *pending.validation, pending.save)
        outputs = [await_or_raise(output, f"forward_backward step {pending.step}") for output in pending.forward_backward]
        await_or_raise(pending.optim, f"optim_step step {pending.step}")
        if len(outputs) == len(pending.batch) and len(outputs) > 1:  # single_datum_calls
            train_nll, loss_tokens = _weighted_nll(outputs, [[datum] for datum in pending.batch])
        else:
            train_nll, loss_tokens = _weighted_nll(outputs, [pending.batch])
        tokens = sum(datum.model_input.length for datum in pending.batch)
        self.state.cumulative_tokens += tokens
        self.state.cost_usd += tokens * self.plan.train_price_per_token
        self.state.next_step = pending.step + 1
        self.tokens_this_session += tokens
        elapsed = time.perf_counter() - self.started
        spe = steps_per_epoch(len(self.train_datums), self.plan.batch_size)
        row = {
            "step": pending.step, "epoch": (pending.step - 1) // spe, "progress": pending.step / self.plan.total_steps,
            "learning_rate": pending.learning_rate, "train_nll": train_nll, "rows": len(pending.batch),
            "tokens": tokens, "loss_tokens": loss_tokens, "cumulative_tokens": self.state.cumulative_tokens,
            "cost_usd": self.state.cost_usd, "seconds": elapsed,
        }
        if self.metrics:
            self.metrics.write(row)
        self.bar.update(1)
        self.bar.set_postfix(nll=f"{train_nll:.3f}", tok_s=f"{self.tokens_this_session / max(elapsed, 1e-9):.0f}")
        if pending.save is not None:
            self._record_checkpoint(pending)

    def _record_checkpoint(self, pending: PendingStep) -> None:
        val_nll, val_tokens = _weighted_nll(pending.validation, _chunks(self.val_datums, self.plan.val_batch_size))
        self.state.cost_usd += val_tokens_cost(self.val_datums, self.plan.train_price_per_token)
        saved = await_or_raise(pending.save, f"save_state step {pending.step}")
        record = {
            "step": pending.step, "next_step": pending.step + 1, "name": f"step-{pending.step:06d}",
            "state_path": saved.path, "val_nll": val_nll, "val_tokens": val_tokens,
            "cumulative_tokens": self.state.cumulative_tokens, "cost_usd": self.state.cost_usd,
            "ttl_seconds": self.plan.ttl_seconds, "expires_at": _expires_at(self.plan.ttl_seconds),
        }
        if self.checkpoints:
            self.checkpoints.write(record)
        self.records.append(record)
        log.debug("step %d: val_nll=%.4f saved %s", pending.step, val_nll, saved.path)


def val_tokens_cost(val_datums: Sequence[tinker.Datum], price_per_token: float) -> float:
    """Validation forward passes are billed like training tokens (prefill of every validation datum)."""
    return sum(datum.model_input.length for datum in val_datums) * price_per_token


def select_checkpoint(records: Sequence[dict]) -> dict:
    """Lowest validation NLL; an exact tie goes to the later step."""
    if not records:
        raise UserError("no checkpoint records to select from; the run saved no checkpoint (check train.eval_every)")
    return min(records, key=lambda record: (record["val_nll"], -record["step"]))


def resume_point(run_dir: Path) -> dict | None:
    """The last checkpoint record of a run (the resume contract), or None for a fresh run."""
    path = run_dir / CHECKPOINTS
    records = read_jsonl(path) if path.exists() else []
    return records[-1] if records else None


def truncate_metrics_after(run_dir: Path, step: int) -> int:
    """Drop metrics rows past `step` (computed after the last checkpoint, before a crash); return how many."""
    path = run_dir / METRICS
    if not path.exists():
        return 0
    rows = read_jsonl(path)
    kept = [row for row in rows if row["step"] <= step]
    if len(kept) != len(rows):
        write_jsonl(path, kept)
    return len(rows) - len(kept)


def check_not_expired(record: dict, what: str) -> None:
    """Fail when a checkpoint record's TTL has passed; warn when it passes within 24 h."""
    expires_at = record.get("expires_at")
    if not expires_at:
        return
    remaining = dt.datetime.fromisoformat(expires_at) - dt.datetime.now(dt.timezone.utc)
    if remaining.total_seconds() <= 0:
        raise UserError(f"{what} {record['state_path']} expired at {expires_at}; it cannot be loaded: rerun its train run with --if-exists overwrite")
    if remaining.total_seconds() < 24 * 3600:
        log.warning("%s %s expires in %.1f h (at %s): export it now", what, record["state_path"], remaining.total_seconds() / 3600, expires_at)


def _open_client(service: "Service", base_model: str, rank: int, condition: "LoraCondition", plan: LoopPlan, run_dir: Path, label: str) -> tuple[Any, LoopState]:
    """A client and loop state at the run's last checkpoint record, or fresh when there is none."""
    last = resume_point(run_dir)
    if last is None:
        (run_dir / METRICS).unlink(missing_ok=True)  # no checkpoint yet: nothing to continue from
        return service.new_training_client(base_model, rank, plan.seed, condition), LoopState()
    check_not_expired(last, "resume checkpoint")
    dropped = truncate_metrics_after(run_dir, last["step"])
    log.info("%s: resuming at step %d from %s (dropped %d metrics rows past it)", label, last["next_step"], last["state_path"], dropped)
    client = service.resume_training_client(last["state_path"])
    return client, LoopState(next_step=last["next_step"], cumulative_tokens=last["cumulative_tokens"], cost_usd=last["cost_usd"])


def train_with_resume(service: "Service", base_model: str, rank: int, condition: "LoraCondition", plan: LoopPlan, train_datums: Sequence[tinker.Datum],
                      val_datums: Sequence[tinker.Datum], run_dir: Path, label: str, progress: bool = True) -> list[dict]:
    """Run (or continue from the last checkpoint record) one training run; return all its checkpoint records.

    A request that fails while in flight rolls the run back to its last checkpoint (later requests may
    already have run on top of it); the replay is deterministic, so the result equals a clean run.
    """
    def attempt() -> None:
        client, state = _open_client(service, base_model, rank, condition, plan, run_dir, label)
        if state.next_step <= plan.total_steps:
            TrainingLoop(service, client, plan, train_datums, val_datums, run_dir, state, progress=progress, label=label).run()

    def checkpointed_step() -> int:
        last = resume_point(run_dir)
        return last["next_step"] if last else 1

    service.retry.call(attempt, f"{label} (rolled back to its last checkpoint)", progress=checkpointed_step)
    return read_jsonl(run_dir / CHECKPOINTS)


def load_datums(path: Path, limit: int | None = None) -> list[tinker.Datum]:
    """Rendered rows (tokens + weights) -> Datums, in file order; `limit` keeps the first N (a deterministic slice)."""
    return [datum_from_row(row) for row in islice(iter_jsonl(path), limit)]
