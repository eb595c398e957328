"""Each benchmark script in SCRIPTS (benchmarks/) runs at its tiny size (`--tiny`: the same code path in seconds, real text from
tests/fixtures, nothing read from ../shared/data) and prints its JSON result lines with sane values. Timings are not
checked: the full sizes and their targets are in benchmarks/README.md.

The scripts run as subprocesses (cwd = the repository root, `--out` a tmp dir, offline, one OpenMP thread each), all
started at once so the six of them share the two cores instead of queueing; each test then waits for its own script.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SCRIPTS = ("crash_sweep", "bench_reference_scale", "bench_render", "bench_eval_concurrency", "bench_local_client", "bench_pipeline", "bench_data")  # longest first
TIMEOUT_S = 300
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "*", "PYTHONUNBUFFERED": "1"}
# six scripts share the cores: one OpenMP thread each (two spin-waiting threads per process made torch ~20x slower under load)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SECRETS = ("TINKER_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")

if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path, Path]]:
    """Every script started with `--tiny --out <tmp>`: name -> (process, its out dir, its log)."""
    root = tmp_path_factory.mktemp("bench")
    env = {key: value for key, value in os.environ.items() if key not in SECRETS} | OFFLINE | ONE_THREAD
    processes = {}
    for name in SCRIPTS:
        out, log = root / name, root / f"{name}.log"
        with log.open("wb") as handle:
            processes[name] = (subprocess.Popen([sys.executable, str(BENCHMARKS / f"{name}.py"), "--tiny", "--out", str(out)], cwd=REPO, env=env,
                                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True), out, log)
    yield processes
    for process, _, _ in processes.values():
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Kill a script started above and whatever it started (its own process group), if it is still running."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def results(started, name: str) -> dict[str, dict]:
    """Wait for the script; it must exit 0; its JSON result lines ({"<key>": {...}}) merged."""
    process, out, log = started[name]
    try:
        process.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"{name} --tiny still running after {TIMEOUT_S} s; log: {log.read_text(errors='replace')[-3000:]}")
    text = log.read_text(encoding="utf-8", errors="replace")
    assert process.returncode == 0, f"{name} --tiny exited {process.returncode}:\n{text[-4000:]}"
    found: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith('{"'):  # a result line is JSON; libraries log Python dicts ({'loss': ...}) to the same log
            found.update(json.loads(line))
    assert found, f"{name} printed no JSON result line:\n{text[-2000:]}"
    assert out.is_dir(), f"{name} did not create its --out {out}"
    return found


def finite_positive(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def test_bench_data_tiny(started):
    found = results(started, "bench_data")
    build, check = found["build_data"], found["contamination"]
    assert build["rc"] == 0 and finite_positive(build["wall_s"], build["peak_rss_mb"])
    assert build["rows_total"] == 20_000
    assert set(build["kept_source_rows"]) == {"gsm8k", "math"} and all(n > 0 for n in build["kept_source_rows"].values())
    assert build["rows_in"] == sum(build["kept_source_rows"].values())  # only gsm8k + math rows reach the gate
    assert build["kept"] > 0 and build["train"] + build["val"] == build["kept"] and build["kept"] + build["rejected"] == build["rows_in"]
    assert build["rejected"] > 0 and build["val"] > 0  # the planted wrong boxes are rejected; the split has both sides
    assert check["rc"] == 0 and finite_positive(check["wall_s"], check["peak_rss_mb"])
    assert check["rows_checked"] > 0 and check["questions"] == 250  # tests/fixtures/gsm8k_test.jsonl
    assert check["status"] == "pass" and check["exact_pairs"] == 0 and check["ngram_pairs"] >= 0


def test_bench_render_tiny(started):
    render = results(started, "bench_render")["render"]
    assert render["rows"] == 400 and render["train_rows"] + render["val_rows"] + render["rejected"] == 400
    assert render["train_rows"] > 0 and render["val_rows"] > 0
    assert render["checked"] > 0 and render["identical"] == render["checked"]  # BatchRenderer == apply_chat_template
    assert render["system_prompt_tokens"] == 27  # the reference system prompt in the Qwen3 vocabulary
    assert finite_positive(render["mean_tokens"], render["stage_s"], render["tokenizer_load_s"])


def test_bench_local_client_tiny(started):
    bench = results(started, "bench_local_client")["local_client"]
    assert bench["vocab"] > 0 and bench["tokens_per_step"] > 0
    assert finite_positive(bench["first_loss_plain"]) and abs(bench["first_loss_plain"] - bench["first_loss_local"]) < 1e-2
    assert finite_positive(bench["plain_s_per_step"], bench["local_s_per_step"], bench["ratio_median"], bench["ratio_min"], bench["ratio_max"])
    assert finite_positive(bench["one_at_a_time_tok_s"], bench["concurrent_tok_s"], bench["speedup"])


def test_bench_pipeline_tiny(started):
    bench = results(started, "bench_pipeline")["pipeline"]
    assert bench["scale"] == 0.05 and math.isclose(bench["server_bound_s_per_step"], 0.6 * 0.05)
    shapes = {"single_datum_calls", "batched_datums", "batched_datums_pipelined"}
    assert set(bench["steady_s_per_step"]) == shapes and set(bench["whole_run_s_per_step"]) == shapes
    assert finite_positive(*bench["steady_s_per_step"].values(), *bench["whole_run_s_per_step"].values())
    assert finite_positive(bench["pipelined_over_bound"], bench["single_over_pipelined"], bench["batched_over_pipelined"])


def test_bench_eval_concurrency_tiny(started):
    bench = results(started, "bench_eval_concurrency")["eval_concurrency"]
    assert bench["examples"] == 32 and bench["concurrency"] == 16
    assert finite_positive(bench["scoring_ms_per_row"], bench["sequential_s"], bench["concurrent_s"], bench["speedup"], *bench["no_latency_s"].values())
    assert len(bench["speedups"]) == 1


def test_crash_sweep_tiny(started):
    sweep = results(started, "crash_sweep")["crash_sweep"]
    assert sweep["points_per_stage"] == 1 and sweep["kill_points"] == 2 and sweep["identical"] == 2
    assert sweep["train_rows"] > 0 and sweep["eval_rows"] > 0
    assert {outcome["stage"] for outcome in sweep["outcomes"]} == {"train", "eval"}


def test_bench_reference_scale_tiny(started):
    report = results(started, "bench_reference_scale")["reference_scale"]
    assert report["size"].startswith("tiny") and report["parameters"] > 0 and report["device"] == "cpu"
    for condition in ("attention_only", "all_layer"):
        local, trl = report["local_training"][condition], report["trl_training"][condition]
        assert local["loss_finite"] and local["steps_timed"] == trl["steps_timed"] == report["config"]["steps"] - 2
        assert finite_positive(local["s_per_step"], local["tokens_per_s"], local["peak_gib"], trl["s_per_step"], trl["tokens_per_s"])
        assert finite_positive(report["memory_plan_gib"][condition])
    sampling = report["sampling"]
    assert sampling["generated_tokens"] == sampling["prompts"] * sampling["new_tokens"] and finite_positive(sampling["tokens_per_s"])
    assert finite_positive(*report["projection"].values())


def test_reference_lengths_follow_the_reference_distribution():
    import bench_reference_scale as bench

    mu, sigma = bench.lognormal_parameters(340, 700)
    lengths = [len(row["tokens"]) for row in bench.rows(bench.REFERENCE_SIZE, 4000, seed=3)]
    assert abs(sum(lengths) / len(lengths) - 340) < 12 and 640 < sorted(lengths)[int(0.95 * len(lengths))] < 760
    assert bench.REFERENCE_SIZE.hidden == 4096 and bench.REFERENCE_SIZE.layers == 36 and bench.REFERENCE_SIZE.vocab == 151_936


# ---- the contracts the benchmarks write (in process, no run) ----------------------------------------------


def test_toml_writer_round_trips_the_shipped_contracts(tmp_path):
    from benchkit import DEMO_CONFIG, REFERENCE_CONFIG, write_contract
    from loraexp.contracts import load_contract

    for config in (REFERENCE_CONFIG, DEMO_CONFIG):
        contract = load_contract(config)
        assert load_contract(write_contract(contract, tmp_path / config.name)).sha256 == contract.sha256


def test_bench_data_contract_changes_only_what_it_must(tmp_path):
    import bench_data
    from benchkit import REFERENCE_CONFIG
    from loraexp.contracts import load_contract

    source, benchmark = tmp_path / "rows.parquet", tmp_path / "test.jsonl"
    written = load_contract(bench_data.config(tmp_path, "bench1m", source, benchmark))
    reference = load_contract(REFERENCE_CONFIG)
    assert written.data.keep_sources == ("gsm8k", "math") and written.data.suspicious_phrases == reference.data.suspicious_phrases
    assert written.data.debris_phrases == reference.data.debris_phrases
    got, want = written.model_dump(mode="json"), reference.model_dump(mode="json")
    changed = {(section, key) for section in want if isinstance(want[section], dict) for key in want[section] if got[section][key] != want[section][key]}
    assert changed == {("experiment", "name"), ("experiment", "backend"), ("experiment", "artifacts_dir"), ("data", "source"),
                       ("data", "decisions_file"), ("benchmark", "source")}
    assert (written.data.source, written.benchmark.source, written.data.decisions_file) == (str(source), str(benchmark), None)


def test_bench_data_keeps_train_1m_source_counts():
    import bench_data

    assert bench_data.source_counts(1_000_000) == bench_data.SOURCE_COUNTS
    assert bench_data.SOURCE_COUNTS["gsm8k"] + bench_data.SOURCE_COUNTS["math"] == 29_468
    tiny = bench_data.source_counts(bench_data.TINY["rows"])
    assert sum(tiny.values()) == bench_data.TINY["rows"] and tiny["gsm8k"] > 0 and tiny["math"] > 0


def test_crash_sweep_contract_is_the_crash_resume_tests_contract(tmp_path):
    """At full size the sweep's contract (written through the contract model) is the one tests/test_crash_resume.py runs."""
    import crash_sweep
    from crashkit import make_workdir
    from loraexp.contracts import load_contract

    base = tmp_path / "base-model"
    expected = load_contract(make_workdir(tmp_path, base) / "demo.toml").sha256
    assert load_contract(crash_sweep.make_workdir(tmp_path, base, tiny=False) / "demo.toml").sha256 == expected
    assert load_contract(crash_sweep.make_workdir(tmp_path, base, tiny=True) / "demo.toml").sha256 != expected
