"""The training loop's request shapes against a server-bound simulated service; run by hand.

    python benchmarks/bench_pipeline.py [--steps 40] [--single-steps 3] [--batched-steps 10] [--repeats 3] [--submit-ahead 1 3]

The service (`loraexp.faults.SimulatedService`) runs requests one at a time in submission order:
0.5 s per forward_backward of 8 rows (proportionally less for fewer), 0.1 s per optim_step, behind a
1 s round trip; it wraps a LocalServiceClient on a random tiny Qwen3, so the numerics are real. The
real `TrainingLoop` runs each request shape of `make_plan(...)` (batch 8, no validation cadence). torch runs one
intra-op thread (`--threads`) so that the local compute stays far below the simulated one on a busy 2-core machine.

Seconds per step are read from the loop's own metrics.jsonl (`seconds` = when step s finished):
- steady: (finish of the last step - finish of the first) / (steps - 1), the throughput once the
  pipeline is full; the server-bound limit is 0.5 + 0.1 = 0.6 s.
- whole run: loop start to the last step's finish / steps, which also pays one round trip of fill.
Targets: pipelined steady within 5 % of 0.6 s; pipelined >= 8x faster than single_datum_calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from loraexp.files import read_jsonl
from loraexp.contracts import load_contract
from loraexp.datums import datum_from_row
from loraexp.faults import ServiceTiming, SimulatedService
from loraexp.local_tinker import LocalServiceClient
from loraexp.training import METRICS, LoopState, TrainingLoop
from loraexp.schedule import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_qwen3 import fixture_rows, make_tiny_qwen3  # noqa: E402

BATCH = 8
TIMING = ServiceTiming(round_trip_s=1.0, forward_backward_s_per_datum=0.5 / BATCH, forward_s_per_datum=0.5 / BATCH / 3, optim_step_s=0.1, other_s=0.0)
SERVER_BOUND_S = BATCH * TIMING.forward_backward_s_per_datum + TIMING.optim_step_s  # 0.6 s of compute per step
SHAPES = ("single_datum_calls", "batched_datums", "batched_datums_pipelined")


def time_shape(service: SimulatedService, base_dir: Path, shape: str, steps: int, submit_ahead: int | None, workdir: Path) -> dict:
    """Run `steps` optimizer steps of one request shape on a fresh simulated client; seconds per step."""
    contract = load_contract("configs/demo.toml")
    datums = [datum_from_row(row) for row in fixture_rows(BATCH * steps, seed=3)]
    plan = make_plan(contract, 1e-3, BATCH, len(datums), seed=0, total_steps=steps, cadence=())
    plan = dataclasses.replace(plan, request_shape=shape, submit_ahead=plan.submit_ahead if submit_ahead is None else submit_ahead)
    client = service.create_lora_training_client(str(base_dir), rank=8, seed=0).result()
    run_dir = workdir / f"{shape}-{submit_ahead}-{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    TrainingLoop(client, plan, datums, [], run_dir, LoopState(), progress=False, label=shape).run()
    finished = [row["seconds"] for row in read_jsonl(run_dir / METRICS)]
    return {"shape": shape, "submit_ahead": plan.submit_ahead, "steps": steps,
            "steady_s_per_step": (finished[-1] - finished[0]) / (steps - 1), "whole_run_s_per_step": finished[-1] / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="pipelined steps per repeat")
    parser.add_argument("--batched-steps", type=int, default=10)
    parser.add_argument("--single-steps", type=int, default=3, help="single_datum_calls is ~16 round trips per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--submit-ahead", type=int, nargs="*", default=[], help="extra pipelined depths to sweep (default: the contract's only)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the local backend")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps_of = {"single_datum_calls": args.single_steps, "batched_datums": args.batched_steps, "batched_datums_pipelined": args.steps}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = make_tiny_qwen3(Path(tmp) / "tiny")
        service = SimulatedService(LocalServiceClient(Path(tmp) / "local_tinker"), TIMING)
        for repeat in range(args.repeats):  # shapes interleaved per repeat so machine noise hits each
            for shape in SHAPES:
                runs.append(time_shape(service, base_dir, shape, steps_of[shape], None, Path(tmp) / "runs"))
                print(json.dumps({"repeat": repeat, **runs[-1]}), flush=True)
            for depth in args.submit_ahead:
                runs.append(time_shape(service, base_dir, "batched_datums_pipelined", args.steps, depth, Path(tmp) / "runs"))
                print(json.dumps({"repeat": repeat, **runs[-1]}), flush=True)

    def median(shape: str, key: str, depth: int | None = None) -> float:
        return statistics.median(r[key] for r in runs if r["shape"] == shape and (depth is None or r["submit_ahead"] == depth))

    default_depth = load_contract("configs/demo.toml").train.submit_ahead
    single = median("single_datum_calls", "steady_s_per_step")
    batched = median("batched_datums", "steady_s_per_step")
    pipelined = median("batched_datums_pipelined", "steady_s_per_step", default_depth)
    ratios = [r["steady_s_per_step"] / SERVER_BOUND_S for r in runs if r["shape"] == "batched_datums_pipelined" and r["submit_ahead"] == default_depth]
    print(f"server-bound limit: {SERVER_BOUND_S:.3f} s/step (round trip {TIMING.round_trip_s} s, batch {BATCH})")
    for shape in SHAPES:
        depth = default_depth if shape == "batched_datums_pipelined" else None
        print(f"  {shape:26s} steady {median(shape, 'steady_s_per_step', depth):.3f} s/step, whole run {median(shape, 'whole_run_s_per_step', depth):.3f} s/step (medians)")
    for depth in args.submit_ahead:
        print(f"  pipelined submit_ahead={depth}: steady {median('batched_datums_pipelined', 'steady_s_per_step', depth):.3f} s/step")
    print(f"pipelined / server bound: {pipelined / SERVER_BOUND_S:.3f} median (repeats {', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.05)")
    print(f"single_datum_calls / pipelined: {single / pipelined:.1f}x (target >= 8); batched_datums / pipelined: {batched / pipelined:.1f}x")


if __name__ == "__main__":
    main()
