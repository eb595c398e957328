"""Bad input ends in one `error: ...` line that names the fix (exit 2), or in a quarantined row with its
reason; never a traceback, never a silent drop. Which test covers each kind:

 1 malformed JSON row              test_build_data.py::test_every_rejection_reason_is_recorded_with_the_raw_row (malformed_json)
 2 missing / empty field           same test (missing_field, empty_field, null problem_source)
 3 non-string answer / field       same test (non_string_field: int expected_answer, list solution)
 4 non-UTF-8 bytes                 same test (not_utf8); a row that is not an object: not_an_object
 5 config: misspelled key          test_config_errors_are_one_line[misspelled-key]
 6 config: wrong type              test_config_errors_are_one_line[wrong-type]
 7 config: missing file            test_config_errors_are_one_line[missing-file]
 8 config: not valid TOML          test_config_errors_are_one_line[bad-toml]
 9 config: empty LR grid           test_config_errors_are_one_line[empty-lr-grid]
10 cadence step beyond last step   test_training_plan.py::test_cadence_step_beyond_the_last_step_is_an_error; through the CLI: test_cadence_beyond_the_last_step_through_train
11 eval --checkpoint w/o cond/seed test_eval_checkpoint_needs_condition_and_seed
12 weights path as sampler path    test_weights_path_given_to_eval_is_the_services_bad_request
13 not a tinker:// path (a pasted key) test_checkpoint_that_is_not_a_tinker_path
14 expired checkpoint              test_training_loop.py::test_export_refuses_an_expired_checkpoint (export); test_expired_resume_checkpoint_refuses_train (train resume)
15 contamination overlap > 0       test_contamination.py::test_planted_test_questions_fail_and_block_train_until_rejected
16 run made under another contract test_input_run_under_another_contract_needs_override
17 full disk while writing         test_disk_full_is_one_line_and_the_rerun_resumes
18 interrupted manifest write      test_torn_or_missing_manifest_means_unfinished_and_reruns
19 missing TINKER_API_KEY          test_smoke.py::test_tinker_backend_needs_a_key_before_anything_starts (and a non-tml key: test_connect_hands_...)
20 unknown base model              test_local_tinker.py::test_unknown_base_model_is_the_services_not_found; through the CLI: test_unknown_base_model_through_smoke
21 benchmark without ####          test_contamination.py::test_no_check_or_bad_benchmark_is_one_line
22 empty dataset after the gate    test_build_data.py::test_empty_dataset_names_the_gate_that_removed_everything
23 --if-exists with a bad value    test_bad_flag_values[if-exists]
24 unknown condition name          test_bad_flag_values[condition]
25 --limit 0 / negative            test_bad_flag_values[limit-zero], [limit-negative]
26 unknown stage in run --only     test_pipeline.py::test_unknown_stage_name_is_one_line
27 bad decisions file lines        test_build_data.py::test_bad_decisions_are_one_line_errors; missing file: test_missing_decisions_file_names_the_fix
28 missing / unsupported source    test_build_data.py::test_missing_or_unsupported_source_is_one_line
29 corrupt row in an artifact      test_corrupt_rendered_row_is_one_line
30 permanent service failure       test_flaky_and_secrets.py::test_permanent_failure_stops_the_stage_at_once (bad request, auth)
31 LORAEXP_FAULT_RATE not a number test_bad_flag_values[fault-rate] (the testing CLI's fault injection)
32 long row beyond max_tokens      test_render.py::test_long_rows_quarantined_not_truncated
"""

from __future__ import annotations

import errno
import shutil

import orjson
import pytest

from crashkit import eval_outcome, private_copy, results
from datakit import cli, error_line, set_key
from loraexp import artifacts, files
from loraexp.cli import CliContext
from loraexp.testing.cli import connect_with_faults


@pytest.fixture
def finished(reference_run, tmp_path, monkeypatch):
    """A private copy of the finished small experiment, as the current directory."""
    return private_copy(reference_run, tmp_path / "w", monkeypatch)


def edit_config(workdir, section: str, key: str, value) -> str:
    config = workdir / "demo.toml"
    config.write_text(set_key(config.read_text(encoding="utf-8"), section, key, value), encoding="utf-8")
    return "demo.toml"


def manifest(workdir, run_id: str) -> dict:
    return orjson.loads((results(workdir) / run_id / "manifest.json").read_bytes())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: set_key(text, "train", "eval_evrey", 4), "unknown key 'train.eval_evrey' (misspelled?"),
    (lambda text: set_key(text, "train", "batch_size", "eight"), "key 'train.batch_size': Input should be a valid integer"),
    (None, "config file not found"),
    (lambda text: text + "\n[train\n", "not valid TOML"),
    (lambda text: set_key(text, "lr_select", "lr_grid", []), "key 'lr_select.lr_grid'"),
], ids=["misspelled-key", "wrong-type", "missing-file", "bad-toml", "empty-lr-grid"])
def test_config_errors_are_one_line(reference_run, tmp_path, edit, message):
    config = tmp_path / "c.toml"
    if edit:
        config.write_text(edit((reference_run / "demo.toml").read_text(encoding="utf-8")), encoding="utf-8")
    line = error_line(cli("train", "--config", config, expect=2))
    assert message in line and str(config) in line


@pytest.mark.parametrize(("args", "env", "message"), [
    (("train", "--if-exists", "maybe"), {}, "--if-exists must be resume, overwrite or fail (got 'maybe')"),
    (("train", "--condition", "mlp_only"), {}, "unknown condition 'mlp_only'; this contract has: attention_only, all_layer"),
    (("eval", "--limit", "0"), {}, "--limit must be a positive number of questions (got 0)"),
    (("eval", "--limit", "-1"), {}, "--limit must be a positive number of questions (got -1)"),
    (("smoke", "--if-exists", "overwrite"), {"LORAEXP_FAULT_RATE": "ten percent"}, "LORAEXP_FAULT_RATE='ten percent' is not a number"),
], ids=["if-exists", "condition", "limit-zero", "limit-negative", "fault-rate"])
def test_bad_flag_values(finished, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    faulty = CliContext(connect=connect_with_faults)  # the testing CLI (python -m loraexp.testing.cli) reads LORAEXP_FAULT_*
    assert message in error_line(cli(*args, "--config", "demo.toml", expect=2, obj=faulty))
    assert not list(results(finished).glob("*-probe*")), "a refused --limit still opened a run dir"


def test_eval_checkpoint_needs_condition_and_seed(finished):
    line = error_line(cli("eval", "--config", "demo.toml", "--checkpoint", "tinker://x/sampler_weights/y", "--condition", "all_layer", expect=2))
    assert "--checkpoint needs --condition and --seed" in line


def test_checkpoint_that_is_not_a_tinker_path(finished):
    line = error_line(cli("eval", "--config", "demo.toml", "--checkpoint", "step-000008", "--condition", "all_layer", "--seed", "0", expect=2))
    assert "--checkpoint must be a tinker://<run>/sampler_weights/<name> path" in line


def test_weights_path_given_to_eval_is_the_services_bad_request(finished):
    state_path = orjson.loads((results(finished) / "demo-train-all_layer-seed0" / "summary.json").read_bytes())["state_path"]
    assert "/weights/" in state_path
    result = cli("eval", "--config", "demo.toml", "--checkpoint", state_path, "--condition", "all_layer", "--seed", "0", "--limit", "2", expect=2)
    line = error_line(result)
    assert "failed permanently (BadRequestError: model_path must point to a sampler_weights checkpoint, got weights)" in line
    assert "the sampler_path in exports.json" in line
    assert not (results(finished) / "demo-eval-all_layer-seed0-probe2" / "manifest.json").exists()


def test_expired_resume_checkpoint_refuses_train(finished):
    run_dir = results(finished) / "demo-train-all_layer-seed0"
    records = [orjson.loads(line) for line in (run_dir / "checkpoints.jsonl").read_bytes().splitlines()]
    records[-1]["expires_at"] = "2020-01-01T00:00:00+00:00"
    (run_dir / "checkpoints.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    (run_dir / "manifest.json").unlink()  # an interrupted run whose last checkpoint expired meanwhile
    line = error_line(cli("train", "--config", "demo.toml", "--condition", "all_layer", "--seed", "0", expect=2))
    assert "resume checkpoint" in line and "expired at 2020-01-01" in line and "--if-exists overwrite" in line


def test_cadence_beyond_the_last_step_through_train(finished):
    config = edit_config(finished, "train", "extra_eval_steps", [10_000])
    cli("contamination", "--config", config, "--override", "--if-exists", "overwrite")  # train needs a pass under this contract
    line = error_line(cli("train", "--config", config, "--override", "--if-exists", "overwrite", "--condition", "all_layer", "--seed", "0", expect=2))
    assert "train.extra_eval_steps [10000] outside 1.." in line and "remove them from the config" in line


def test_unknown_base_model_through_smoke(finished, tmp_path):
    config = edit_config(finished, "experiment", "base_model", str(tmp_path / "no-such-model"))
    line = error_line(cli("smoke", "--config", config, "--override", "--run-id", "smoke-missing-base", expect=2))
    assert "does not exist; set experiment.base_model" in line


def test_input_run_under_another_contract_needs_override(finished):
    config = edit_config(finished, "render", "audit_review_rows", 7)  # any contract change
    line = error_line(cli("audit", "--config", config, expect=2))
    assert "build-data run demo-build-data was made under contract" in line and "pass --override" in line
    cli("audit", "--config", config, "--override", "--if-exists", "overwrite")
    assert manifest(finished, "demo-audit")["protocol_mode"] == "override"
    assert manifest(finished, "demo-build-data")["protocol_mode"] == "strict"


def test_disk_full_is_one_line_and_the_rerun_resumes(finished, reference_run, monkeypatch):
    shutil.rmtree(results(finished) / "demo-eval-baseline")
    real_write, written = files.JsonlWriter.write, []

    def write_until_full(self, row):
        if len(written) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        written.append(row["example_id"])
        real_write(self, row)

    monkeypatch.setattr(files.JsonlWriter, "write", write_until_full)
    line = error_line(cli("eval", "--config", "demo.toml", "--baseline-only", expect=2))
    assert "disk full while writing" in line and "predictions.jsonl" in line and "rerun the same command (it resumes)" in line
    assert not (results(finished) / "demo-eval-baseline" / "manifest.json").exists()
    monkeypatch.setattr(files.JsonlWriter, "write", real_write)
    result = cli("eval", "--config", "demo.toml", "--baseline-only")
    assert "resuming, 5 of 24 examples already scored" in result.output
    assert eval_outcome(finished)["demo-eval-baseline"] == eval_outcome(reference_run)["demo-eval-baseline"]


@pytest.mark.parametrize("damage", ["torn", "temp-file-only"])
def test_torn_or_missing_manifest_means_unfinished_and_reruns(finished, damage):
    run_dir = results(finished) / "demo-audit"
    whole = (run_dir / "manifest.json").read_bytes()
    if damage == "torn":
        (run_dir / "manifest.json").write_bytes(whole[: len(whole) // 2])
    else:  # killed between writing the temp file and the rename
        (run_dir / "manifest.json").unlink()
        (run_dir / ".manifest.json.k9x.tmp").write_bytes(whole[:100])
    status = cli("status", "--artifacts", "artifacts")
    assert "Traceback" not in status.output
    assert not artifacts.is_finished(run_dir)
    cli("audit", "--config", "demo.toml")
    rerun = manifest(finished, "demo-audit")
    assert rerun["status"] == "pass" and rerun["finished_at"] >= orjson.loads(whole)["finished_at"]


def test_corrupt_rendered_row_is_one_line(finished):
    train_path = results(finished) / "demo-render" / "train.jsonl"
    lines = train_path.read_bytes().splitlines(keepends=True)
    lines[3] = b'{"row_id": "broken", "tokens": [1, 2\n'
    train_path.write_bytes(b"".join(lines))
    line = error_line(cli("train", "--config", "demo.toml", "--if-exists", "overwrite", "--condition", "all_layer", "--seed", "0", expect=2))
    assert "train.jsonl:4 is not valid JSON" in line and "rerun its stage with --if-exists overwrite" in line
