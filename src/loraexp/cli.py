"""The `loraexp` command line: one thin command per stage, plus run, status and demo.

Each command parses flags, loads the contract, opens the run dir and calls `stages/<stage>.py::run`.
Errors the user can fix print as one line and exit 2; no traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import click
import typer

from loraexp.artifacts import IfExists, write_crash_log
from loraexp.contracts import Contract, load_contract
from loraexp.errors import UserError

app = typer.Typer(
    help="Controlled LoRA fine-tuning experiments: frozen contract -> data -> train -> eval -> report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger("loraexp")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Experiment contract (TOML), e.g. configs/demo.toml.")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="Run directory name under artifacts/results (default: <experiment>-<stage>).")]
IfExistsOpt = Annotated[str, typer.Option("--if-exists", help="What to do with an existing run dir: resume | overwrite | fail.")]
OverrideOpt = Annotated[bool, typer.Option("--override", help="Allow mixing runs made under another contract; recorded as protocol_mode: override.")]
DataRunOpt = Annotated[Optional[str], typer.Option("--data-run", help="build-data run id to read (default: <experiment>-build-data).")]
RenderRunOpt = Annotated[Optional[str], typer.Option("--render-run", help="render run id to read (default: <experiment>-render).")]
PushOpt = Annotated[Optional[str], typer.Option("--push-to-hub", help="Also upload the folder to this Hugging Face repo (needs network and HF_TOKEN).")]


@app.callback()
def _root() -> None:
    """Controlled LoRA fine-tuning experiments: frozen contract -> data -> train -> eval -> report."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


class RedactSecrets(logging.Filter):
    """Replace secret values (TINKER_API_KEY, HF_TOKEN, ...) in every log line, tracebacks included."""

    def filter(self, record: logging.LogRecord) -> bool:
        from loraexp.artifacts import redact

        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = redact(message), ()
        return True


def echo_error(message: object) -> None:
    """The one `error: ...` line on stderr, with secret values redacted (a key pasted into a flag must not reach a log)."""
    from loraexp.artifacts import redact

    typer.echo(f"error: {redact(str(message))}", err=True)


def friendly_errors(command: Callable) -> Callable:
    """Turn UserError and disk-full OSErrors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            echo_error(exc)
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                echo_error(f"disk full while writing {exc.filename or 'artifacts'}; free space, then rerun the same command (it resumes)")
                raise typer.Exit(2) from None
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted: rerun the same command to resume", err=True)
            raise typer.Exit(130) from None
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug or an unforeseen service error: one line here, the traceback in a file
            echo_error(f"unexpected {type(exc).__name__}: {exc} (traceback in {write_crash_log()}); rerun the same command to resume, and report it if it repeats")
            raise typer.Exit(1) from None

    return wrapper


def check_if_exists(value: str) -> IfExists:
    if value not in ("resume", "overwrite", "fail"):
        raise UserError(f"--if-exists must be resume, overwrite or fail (got {value!r})")
    return value  # type: ignore[return-value]


def load(config: Path) -> Contract:
    setup_logging()
    return load_contract(config)


def start_run(contract: Contract, stage: str, run_id: str, if_exists: str, override: bool, inputs: tuple[Path, ...] = ()):
    """Open a stage's run dir; None when it already finished under this contract, on these input runs, with
    unchanged inputs. A finished run made from other input runs (another --data-run, say) is redone."""
    from loraexp.artifacts import MANIFEST, open_run, read_json

    run = open_run(contract, stage, run_id, check_if_exists(if_exists), override)
    if not run.finished:
        return run
    recorded = read_json(run.path(MANIFEST)).get("inputs") or {}
    other = [path.name for path in inputs if path.name not in recorded]
    if other:
        log.info("%s: %s finished on other input runs; redoing it on %s", stage, run_id, ", ".join(other))
        return open_run(contract, stage, run_id, "overwrite", override)
    log.info("%s: %s already finished with unchanged inputs (pass --if-exists overwrite to redo it)", stage, run_id)
    return None


@app.command()
@friendly_errors
def status(
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Artifacts root to list.")] = Path("artifacts"),
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Read the artifacts root from this contract.")] = None,
) -> None:
    """A table of every run: stage, run id, status, key figure, contract hash, age."""
    from loraexp.status import print_status

    root = Path(load(config).experiment.artifacts_dir) if config else artifacts
    print_status(root)


def _finished(contract: Contract, stage: str, run_id: Optional[str], override: bool, *parts: str | int) -> Path:
    from loraexp.artifacts import find_finished_run, run_id_for

    return find_finished_run(contract, run_id or run_id_for(contract, stage, *parts), stage, override)


def _selected(contract: Contract, condition: Optional[str], seed: Optional[int]) -> list[tuple]:
    conditions = [contract.condition(condition)] if condition else list(contract.lora.conditions)
    seeds = [seed] if seed is not None else list(contract.train.seeds)
    return [(c, s) for c in conditions for s in seeds]


@app.command("build-data")
@friendly_errors
def build_data(config: ConfigOpt, run_id: RunIdOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Original-source rows -> strict gate + manual decisions -> grouped, stratified split (train/val/rejects.jsonl)."""
    from loraexp.artifacts import open_run, run_id_for
    from loraexp.stages import build_data as stage

    contract = load(config)
    run = open_run(contract, "build-data", run_id or run_id_for(contract, "build-data"), check_if_exists(if_exists), override)
    changed = stage.inputs_changed(contract, run)
    if run.finished and not changed:
        log.info("build-data: %s already finished with unchanged source and decisions (pass --if-exists overwrite to rebuild)", run.run_id)
        return
    if changed:
        log.info("build-data: %s changed since %s finished; rebuilding", ", ".join(changed), run.run_id)
    figure = stage.run(contract, run)["key_figure"]
    typer.echo(f"{run.run_id}: {figure['rows_in']} rows in -> {figure['kept']} kept -> {figure['train']} train / {figure['val']} val "
               f"({figure['rejected']} rejected, see rejects.jsonl) in {run.dir}")


@app.command()
@friendly_errors
def audit(config: ConfigOpt, run_id: RunIdOpt = None, data_run: DataRunOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Automatic checks on a build-data run + suspicious and random review packs (JSONL + Markdown)."""
    from loraexp.artifacts import run_id_for
    from loraexp.stages import audit as stage

    contract = load(config)
    data_dir = _finished(contract, "build-data", data_run, override)
    run = start_run(contract, "audit", run_id or run_id_for(contract, "audit"), if_exists, override, (data_dir,))
    if run:
        figure = stage.run(contract, run, data_dir)["key_figure"]
        typer.echo(f"{run.run_id}: {figure['flagged']} of {figure['rows']} rows flagged; review {run.dir / 'review_suspicious.md'} and {run.dir / 'review_random.md'}")


@app.command()
@friendly_errors
def contamination(config: ConfigOpt, run_id: RunIdOpt = None, data_run: DataRunOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Exact (canonical) and 13-gram overlap with the benchmark, train/val overlap; a failed report blocks train."""
    from loraexp.artifacts import run_id_for
    from loraexp.data.sources import load_benchmark
    from loraexp.stages import contamination as stage

    contract = load(config)
    data_dir = _finished(contract, "build-data", data_run, override)
    run = start_run(contract, "contamination", run_id or run_id_for(contract, "contamination"), if_exists, override, (data_dir,))
    if run:
        stage.run(contract, run, data_dir, load_benchmark(contract))
    report = stage.require_contamination_pass(contract, data_dir.name)
    typer.echo(f"contamination: pass for {data_dir.name}; {report}")


ConditionOpt = Annotated[Optional[str], typer.Option("--condition", help="Only this LoRA condition (default: every condition in the contract).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Only this seed (default: every seed in train.seeds).")]


@app.command()
@friendly_errors
def render(config: ConfigOpt, run_id: RunIdOpt = None, data_run: DataRunOpt = None, push_to_hub: PushOpt = None,
           if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Chat-template tokens + loss weights for train/val, token stats, budget, and a hub-ready dataset folder."""
    from loraexp.artifacts import run_id_for
    from loraexp.stages import render as stage

    contract = load(config)
    if push_to_hub:
        stage.require_hf_token()  # before any work, so a missing token costs nothing
    data_dir = _finished(contract, "build-data", data_run, override)
    run = start_run(contract, "render", run_id or run_id_for(contract, "render"), if_exists, override, (data_dir,))
    if run:
        manifest = stage.run(contract, run, data_dir, push_to_hub)
        figure = manifest["key_figure"]
        typer.echo(f"{run.run_id}: {figure['train_rows']} train / {figure['val_rows']} val rows, mean {figure['mean_tokens']} tokens, "
                   f"{figure['rejected']} quarantined; budget in {run.path('budget.json')}")


@app.command()
@friendly_errors
def smoke(config: ConfigOpt, run_id: RunIdOpt = None, render_run: RenderRunOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Both conditions accepted by the backend, a few optimizer steps, validation NLL, SDK versions, backend-owned knobs."""
    from loraexp.artifacts import run_id_for
    from loraexp.backend import connect, rest_client
    from loraexp.stages import smoke as stage

    contract = load(config)
    render_dir = _finished(contract, "render", render_run, override)
    run = start_run(contract, "smoke", run_id or run_id_for(contract, "smoke"), if_exists, override, (render_dir,))
    if run:
        service = connect(contract)
        report = stage.run(contract, service, rest_client(service), run, render_dir)
        for name, result in report["conditions"].items():
            typer.echo(f"{name}: accepted={result['accepted']} trainable={result['trainable_parameters']['count']} "
                       f"val NLL {result['val_mean_nll_before']:.4f} -> {result['val_mean_nll_after']:.4f}")


@app.command("lr-select")
@friendly_errors
def lr_select(config: ConfigOpt, run_id: RunIdOpt = None, render_run: RenderRunOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """LR grid x condition on the first rows with the selection seed; batch-size candidates; throughput probe."""
    from loraexp.artifacts import run_id_for
    from loraexp.backend import connect
    from loraexp.stages import lr_select as stage

    contract = load(config)
    render_dir = _finished(contract, "render", render_run, override)
    run = start_run(contract, "lr-select", run_id or run_id_for(contract, "lr-select"), if_exists, override, (render_dir,))
    if run:
        selection = stage.run(contract, connect(contract), run, render_dir, check_if_exists(if_exists))
        for name, choice in selection["conditions"].items():
            typer.echo(f"{name}: learning_rate={choice['selected_lr']:g} batch_size={choice['selected_batch_size']} (val NLL {choice['selected_val_nll']:.4f})")


@app.command()
@friendly_errors
def train(config: ConfigOpt, condition: ConditionOpt = None, seed: SeedOpt = None, render_run: RenderRunOpt = None, data_run: DataRunOpt = None,
          lr_select_run: Annotated[Optional[str], typer.Option("--lr-select-run", help="lr-select run to inherit the LR from.")] = None,
          if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Train conditions x seeds (or one with --condition/--seed); resumes a killed run from its last checkpoint."""
    from loraexp.artifacts import run_id_for
    from loraexp.backend import connect
    from loraexp.stages import train as stage
    from loraexp.stages.contamination import require_contamination_pass

    contract = load(config)
    require_contamination_pass(contract, data_run or run_id_for(contract, "build-data"))
    render_dir = _finished(contract, "render", render_run, override)
    lr_dir = None if contract.train.learning_rate is not None else _finished(contract, "lr-select", lr_select_run, override)
    service = None
    for lora_condition, lora_seed in _selected(contract, condition, seed):
        run = start_run(contract, "train", run_id_for(contract, "train", lora_condition.name, f"seed{lora_seed}"), if_exists, override,
                        (render_dir,) + ((lr_dir,) if lr_dir else ()))
        if run:
            service = service or connect(contract)
            summary = stage.run(contract, service, run, render_dir, lora_condition, lora_seed, lr_dir)
            typer.echo(f"{run.run_id}: selected step {summary['selected_step']} (val NLL {summary['val_nll']:.4f})")


@app.command()
@friendly_errors
def export(config: ConfigOpt, run_id: RunIdOpt = None, push_to_hub: PushOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Selected checkpoints -> sampler weights + PEFT adapters under checkpoints/best-checkpoints/."""
    from loraexp.artifacts import run_id_for
    from loraexp.backend import connect, rest_client
    from loraexp.stages import export as stage

    contract = load(config)
    train_dirs = [_finished(contract, "train", None, override, c.name, f"seed{s}") for c, s in _selected(contract, None, None)]
    run = start_run(contract, "export", run_id or run_id_for(contract, "export"), if_exists, override, tuple(train_dirs))
    if run:
        service = connect(contract)
        result = stage.run(contract, service, rest_client(service), run, train_dirs, push_to_hub)
        typer.echo(f"exported {len(result['checkpoints'])} adapters under {run.dir / 'checkpoints' / 'best-checkpoints'}")


@app.command("eval")
@friendly_errors
def evaluate(config: ConfigOpt, condition: ConditionOpt = None, seed: SeedOpt = None,
             checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="A sampler_weights path to evaluate (needs --condition and --seed).")] = None,
             baseline_only: Annotated[bool, typer.Option("--baseline-only", help="Evaluate only the untouched base model.")] = False,
             limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions (a probe; its run id gets a -probeN suffix).")] = None,
             render_run: RenderRunOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Greedy eval of the baseline first, then every exported checkpoint, with strict + lenient scoring."""
    from loraexp.artifacts import read_json, run_id_for
    from loraexp.backend import connect
    from loraexp.data.sources import load_benchmark
    from loraexp.stages import eval as stage

    contract = load(config)
    if checkpoint and (condition is None or seed is None):
        raise UserError("--checkpoint needs --condition and --seed, so the predictions are filed under the right run")
    if checkpoint and not checkpoint.startswith("tinker://"):
        raise UserError("--checkpoint must be a tinker://<run>/sampler_weights/<name> path (the sampler_path in the export run's exports.json)")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of questions (got {limit}); leave it out to evaluate the whole benchmark")
    render_dir = _finished(contract, "render", render_run, override)
    models = [{"condition": "baseline", "seed": None, "sampler_path": None}]
    if checkpoint:
        models = [{"condition": contract.condition(condition).name, "seed": seed, "sampler_path": checkpoint}]
    elif not baseline_only:
        exports = read_json(_finished(contract, "export", None, override) / "exports.json")["checkpoints"]
        models += [{"condition": e["condition"], "seed": e["seed"], "sampler_path": e["sampler_path"], "step": e["step"]}
                   for e in exports if (condition is None or e["condition"] == condition) and (seed is None or e["seed"] == seed)]
    tokenizer, benchmark, service = stage.load_render_tokenizer(render_dir), load_benchmark(contract), None
    for model in models:
        parts = ["baseline"] if model["seed"] is None else [model["condition"], f"seed{model['seed']}"]
        run = start_run(contract, "eval", run_id_for(contract, "eval", *parts) + (f"-probe{limit}" if limit else ""), if_exists, override, (render_dir,))
        if run:
            service = service or connect(contract)
            run.add_input(render_dir, ["tokenizer/tokenizer.json"])
            summary = stage.run(contract, service, run, tokenizer, benchmark, model, limit)
            typer.echo(f"{run.run_id}: strict accuracy {summary['strict_accuracy']:.4f} ({summary['correct']}/{summary['total']}), lenient {summary['lenient_accuracy']:.4f}")


@app.command()
@friendly_errors
def figures(config: ConfigOpt, run_id: RunIdOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Comparison, decision rule, paired statistics, fig_01..fig_08 and report.md from the eval, train, lr-select and export runs."""
    from loraexp.artifacts import run_id_for
    from loraexp.stages import figures as stage

    contract = load(config)
    run = start_run(contract, "figures", run_id or run_id_for(contract, "figures"), if_exists, override)
    if run:
        comparison = stage.run(contract, run, override)
        paired = comparison["comparison"]
        typer.echo(f"{run.run_id}: {paired['decision']} (gap {paired['gap_points']:+.2f} points, pooled McNemar p={paired['pooled']['mcnemar_p']:.3g}); "
                   f"report at {run.path('report.md')}")


def _stage_commands() -> dict[str, Callable[..., None]]:
    """Stage name -> the plain function behind its CLI command (errors propagate to the pipeline)."""
    from loraexp.pipeline import STAGES

    commands = {}
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        if name in STAGES:
            commands[name] = getattr(info.callback, "__wrapped__", info.callback)
    missing = [stage for stage in STAGES if stage not in commands]
    if missing:
        raise UserError(f"this installation lacks the stage command(s) {missing}; reinstall loraexp")
    return commands


def _run_all(config: Path, start: Optional[str], only: Optional[str]) -> None:
    from loraexp.pipeline import StageFailed, run_pipeline

    contract = load(config)
    try:
        run_pipeline(contract, config, _stage_commands(), start, only, report=typer.echo)
    except StageFailed as exc:
        echo_error(exc)
        raise typer.Exit(1) from None


@app.command("run")
@friendly_errors
def run_all(config: ConfigOpt,
            start: Annotated[Optional[str], typer.Option("--from", help="Start at this stage (the ones before must be finished).")] = None,
            only: Annotated[Optional[str], typer.Option("--only", help="Run just this stage.")] = None) -> None:
    """The whole experiment in order, skipping finished stages and resuming interrupted ones."""
    _run_all(config, start, only)


def demo_config() -> Path:
    """configs/demo.toml of this checkout (or of the current directory)."""
    for candidate in (Path(__file__).resolve().parents[2] / "configs" / "demo.toml", Path("configs/demo.toml")):
        if candidate.is_file():
            return candidate
    raise UserError("configs/demo.toml not found: run `loraexp demo` from the loraexp checkout")


@app.command()
@friendly_errors
def demo(config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Demo contract (default: configs/demo.toml).")] = None) -> None:
    """The whole pipeline offline on the embedded default (generated data, tiny Qwen3, local client); <= 10 min on 2 cores."""
    import time

    started = time.perf_counter()
    config = config or demo_config()
    _run_all(config, None, None)
    contract = load(config)
    from loraexp.artifacts import results_root, run_id_for

    report = results_root(contract) / run_id_for(contract, "figures") / "report.md"
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; report: {report}")
    if report.exists():
        table = [line for line in report.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
        typer.echo("\n".join(table[:12]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
