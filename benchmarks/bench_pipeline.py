"""The training loop's request shapes against a server-bound simulated service; run by hand.

    python benchmarks/bench_pipeline.py [--steps 40] [--single-steps 3] [--batched-steps 10] [--repeats 3] [--submit-ahead 1 3] [--out artifacts/bench]
    python benchmarks/bench_pipeline.py --tiny     # 6 / 3 / 2 steps, 1 repeat, every simulated time x 0.05 (seconds)

The service (`loraexp.testing.faults.SimulatedService`) runs requests one at a time in submission order:
0.5 s per forward_backward of 8 rows (proportionally less for fewer), 0.1 s per optim_step, behind a
1 s round trip; it wraps a LocalServiceClient on a random tiny Qwen3, so the numerics are real. The
real `TrainingLoop` runs each request shape of `make_plan(...)` (batch 8, no validation cadence). torch runs one
intra-op thread (`--threads`) so that the local compute stays far below the simulated one on a busy 2-core machine.

Seconds per step are read from the loop's own metrics.jsonl (`seconds` = when step s finished):
- steady: (finish of the last step - finish of the first) / (steps - 1), the throughput once the
  pipeline is full; the server-bound limit is 0.5 + 0.1 = 0.6 s.
- whole run: loop start to the last step's finish / steps, which also pays one round trip of fill.
Targets: pipelined steady within 5 % of 0.6 s; pipelined >= 8x faster than single_datum_calls.
`--scale` multiplies every simulated time (round trip and compute; the limit becomes 0.6 x scale s). Run dirs, the
model and the local client's checkpoints are written under `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchkit import DEMO_CONFIG, REPO, add_common_args, emit, out_dir
from loraexp.contracts import load_contract
from loraexp.files import read_jsonl
from loraexp.local_tinker import LocalServiceClient
from loraexp.service import Service, local_service
from loraexp.service.datums import datum_from_row
from loraexp.testing.faults import ServiceTiming, SimulatedService
from loraexp.training.loop import METRICS, LoopState, TrainingLoop
from loraexp.training.schedule import make_plan

sys.path.insert(0, str(REPO / "tests"))
from tiny_qwen3 import fixture_rows, make_tiny_qwen3  # noqa: E402

BATCH = 8
SHAPES = ("single_datum_calls", "batched_datums", "batched_datums_pipelined")


def service_timing(scale: float) -> ServiceTiming:
    """0.5 s per forward_backward of 8 rows, 0.1 s per optim_step, a 1 s round trip; all times x `scale`."""
    return ServiceTiming(round_trip_s=1.0 * scale, forward_backward_s_per_datum=0.5 / BATCH * scale, forward_s_per_datum=0.5 / BATCH / 3 * scale,
                         optim_step_s=0.1 * scale, other_s=0.0)


def server_bound_s(timing: ServiceTiming) -> float:
    """The simulated server's compute per step: 0.6 s at scale 1."""
    return BATCH * timing.forward_backward_s_per_datum + timing.optim_step_s


def time_shape(service: Service, base_dir: Path, shape: str, steps: int, submit_ahead: int | None, workdir: Path) -> dict:
    """Run `steps` optimizer steps of one request shape on a fresh simulated client; seconds per step."""
    contract = load_contract(DEMO_CONFIG)
    datums = [datum_from_row(row) for row in fixture_rows(BATCH * steps, seed=3)]
    plan = make_plan(contract, 1e-3, BATCH, len(datums), seed=0, total_steps=steps, cadence=())
    plan = dataclasses.replace(plan, request_shape=shape, submit_ahead=plan.submit_ahead if submit_ahead is None else submit_ahead)
    client = service.client.create_lora_training_client(str(base_dir), rank=8, seed=0).result()
    run_dir = workdir / f"{shape}-{submit_ahead}-{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    TrainingLoop(service, client, plan, datums, [], run_dir, LoopState(), progress=False, label=shape).run()
    finished = [row["seconds"] for row in read_jsonl(run_dir / METRICS)]
    return {"shape": shape, "submit_ahead": plan.submit_ahead, "steps": steps,
            "steady_s_per_step": (finished[-1] - finished[0]) / (steps - 1), "whole_run_s_per_step": finished[-1] / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="pipelined steps per repeat (default 40; 6 with --tiny)")
    parser.add_argument("--batched-steps", type=int, default=None, help="default 10; 3 with --tiny")
    parser.add_argument("--single-steps", type=int, default=None, help="single_datum_calls is ~16 round trips per step (default 3; 2 with --tiny)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3; 1 with --tiny")
    parser.add_argument("--scale", type=float, default=None, help="multiplies every simulated time (default 1; 0.05 with --tiny)")
    parser.add_argument("--submit-ahead", type=int, nargs="*", default=[], help="extra pipelined depths to sweep (default: the contract's only)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the local backend")
    args = parser.parse_args()
    defaults = {"steps": (40, 6), "batched_steps": (10, 3), "single_steps": (3, 2), "repeats": (3, 1), "scale": (1.0, 0.05)}
    for name, (full, tiny) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    torch.set_num_threads(args.threads)
    timing = service_timing(args.scale)
    bound = server_bound_s(timing)
    steps_of = {"single_datum_calls": args.single_steps, "batched_datums": args.batched_steps, "batched_datums_pipelined": args.steps}
    runs: list[dict] = []
    tmp = Path(tempfile.mkdtemp(dir=out_dir(args, "pipeline"), prefix="run-"))
    try:
        base_dir = make_tiny_qwen3(tmp / "tiny")
        local = local_service(LocalServiceClient(tmp / "local_tinker"))
        service = dataclasses.replace(local, client=SimulatedService(local.client, timing))
        for repeat in range(args.repeats):  # shapes interleaved per repeat so machine noise hits each
            for shape in SHAPES:
                runs.append(time_shape(service, base_dir, shape, steps_of[shape], None, tmp / "runs"))
                print(json.dumps({"repeat": repeat, **runs[-1]}), flush=True)
            for depth in args.submit_ahead:
                runs.append(time_shape(service, base_dir, "batched_datums_pipelined", args.steps, depth, tmp / "runs"))
                print(json.dumps({"repeat": repeat, **runs[-1]}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def median(shape: str, key: str, depth: int | None = None) -> float:
        return statistics.median(r[key] for r in runs if r["shape"] == shape and (depth is None or r["submit_ahead"] == depth))

    default_depth = load_contract(DEMO_CONFIG).train.submit_ahead
    single = median("single_datum_calls", "steady_s_per_step")
    batched = median("batched_datums", "steady_s_per_step")
    pipelined = median("batched_datums_pipelined", "steady_s_per_step", default_depth)
    ratios = [r["steady_s_per_step"] / bound for r in runs if r["shape"] == "batched_datums_pipelined" and r["submit_ahead"] == default_depth]
    print(f"server-bound limit: {bound:.3f} s/step (round trip {timing.round_trip_s} s, batch {BATCH})")
    for shape in SHAPES:
        depth = default_depth if shape == "batched_datums_pipelined" else None
        print(f"  {shape:26s} steady {median(shape, 'steady_s_per_step', depth):.3f} s/step, whole run {median(shape, 'whole_run_s_per_step', depth):.3f} s/step (medians)")
    for depth in args.submit_ahead:
        print(f"  pipelined submit_ahead={depth}: steady {median('batched_datums_pipelined', 'steady_s_per_step', depth):.3f} s/step")
    print(f"pipelined / server bound: {pipelined / bound:.3f} median (repeats {', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.05)")
    print(f"single_datum_calls / pipelined: {single / pipelined:.1f}x (target >= 8); batched_datums / pipelined: {batched / pipelined:.1f}x")
    emit("pipeline", {"scale": args.scale, "repeats": args.repeats, "server_bound_s_per_step": bound, "submit_ahead": default_depth,
                      "steady_s_per_step": {shape: median(shape, "steady_s_per_step", default_depth if shape == "batched_datums_pipelined" else None) for shape in SHAPES},
                      "whole_run_s_per_step": {shape: median(shape, "whole_run_s_per_step", default_depth if shape == "batched_datums_pipelined" else None) for shape in SHAPES},
                      "submit_ahead_sweep": {str(depth): median("batched_datums_pipelined", "steady_s_per_step", depth) for depth in args.submit_ahead},
                      "pipelined_over_bound": pipelined / bound, "single_over_pipelined": single / pipelined, "batched_over_pipelined": batched / pipelined,
                      "target": "pipelined_over_bound <= 1.05, single_over_pipelined >= 8"})


if __name__ == "__main__":
    main()
