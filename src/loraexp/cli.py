"""The `loraexp` command line: typer options and one call per command.

Each stage command builds a `Session` (contract + run policy + how to reach the service) and calls
`stages/<stage>.py::run`; `run` and `demo` call the same functions through `pipeline.py`. Errors the
user can fix print as one line and exit 2; no traceback. Stage modules are imported inside their
command, so `loraexp --help` and `loraexp status` start without torch, tinker or matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from loraexp.artifacts import IfExists
from loraexp.console import echo_error, friendly_errors, setup_logging
from loraexp.contracts import load_contract
from loraexp.errors import UserError
from loraexp.session import Session, StageResult, connect_to_contract_service

app = typer.Typer(
    help="Controlled LoRA fine-tuning experiments: frozen contract -> data -> train -> eval -> report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Experiment contract (TOML), e.g. configs/demo.toml.")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="Run directory name under artifacts/results (default: <experiment>-<stage>).")]
IfExistsOpt = Annotated[str, typer.Option("--if-exists", help="What to do with an existing run dir: resume | overwrite | fail.")]
OverrideOpt = Annotated[bool, typer.Option("--override", help="Allow mixing runs made under another contract; recorded as protocol_mode: override.")]
DataRunOpt = Annotated[Optional[str], typer.Option("--data-run", help="build-data run id to read (default: <experiment>-build-data).")]
RenderRunOpt = Annotated[Optional[str], typer.Option("--render-run", help="render run id to read (default: <experiment>-render).")]
PushOpt = Annotated[Optional[str], typer.Option("--push-to-hub", help="Also upload the folder to this Hugging Face repo (needs network and HF_TOKEN).")]
ConditionOpt = Annotated[Optional[str], typer.Option("--condition", help="Only this LoRA condition (default: every condition in the contract).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Only this seed (default: every seed in train.seeds).")]


@dataclass(frozen=True)
class CliContext:
    """What the commands get from whoever started the app (click's ctx.obj): how to reach the service."""

    connect: Callable = connect_to_contract_service


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Controlled LoRA fine-tuning experiments: frozen contract -> data -> train -> eval -> report."""
    if ctx.obj is None:
        ctx.obj = CliContext()


def session(ctx: typer.Context, config: Path, if_exists: str = "resume", override: bool = False) -> Session:
    """Logging, the contract, and the run policy of one command."""
    setup_logging()
    if if_exists not in ("resume", "overwrite", "fail"):
        raise UserError(f"--if-exists must be resume, overwrite or fail (got {if_exists!r})")
    policy: IfExists = if_exists  # type: ignore[assignment]
    return Session(load_contract(config), config, policy, override, connect=(ctx.obj or CliContext()).connect)


def echo(result: StageResult) -> None:
    for line in result.lines:
        typer.echo(line)


@app.command("build-data")
@friendly_errors
def build_data_command(ctx: typer.Context, config: ConfigOpt, run_id: RunIdOpt = None, if_exists: IfExistsOpt = "resume",
                       override: OverrideOpt = False) -> None:
    """Original-source rows -> strict gate + manual decisions -> grouped, stratified split (train/val/rejects.jsonl)."""
    from loraexp.stages import build_data

    echo(build_data.run(session(ctx, config, if_exists, override), run_id))


@app.command("audit")
@friendly_errors
def audit_command(ctx: typer.Context, config: ConfigOpt, run_id: RunIdOpt = None, data_run: DataRunOpt = None, if_exists: IfExistsOpt = "resume",
                  override: OverrideOpt = False) -> None:
    """Automatic checks on a build-data run + suspicious and random review packs (JSONL + Markdown)."""
    from loraexp.stages import audit

    echo(audit.run(session(ctx, config, if_exists, override), data_run, run_id))


@app.command("contamination")
@friendly_errors
def contamination_command(ctx: typer.Context, config: ConfigOpt, run_id: RunIdOpt = None, data_run: DataRunOpt = None, if_exists: IfExistsOpt = "resume",
                          override: OverrideOpt = False) -> None:
    """Exact (canonical) and 13-gram overlap with the benchmark, train/val overlap; a failed report blocks train."""
    from loraexp.stages import contamination

    echo(contamination.run(session(ctx, config, if_exists, override), data_run, run_id))


@app.command("render")
@friendly_errors
def render_command(ctx: typer.Context, config: ConfigOpt, run_id: RunIdOpt = None, data_run: DataRunOpt = None, push_to_hub: PushOpt = None,
                   if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Chat-template tokens + loss weights for train/val, token stats, budget, and a hub-ready dataset folder."""
    from loraexp.stages import render

    echo(render.run(session(ctx, config, if_exists, override), data_run, push_to_hub, run_id))


@app.command("smoke")
@friendly_errors
def smoke_command(ctx: typer.Context, config: ConfigOpt, run_id: RunIdOpt = None, render_run: RenderRunOpt = None, if_exists: IfExistsOpt = "resume",
                  override: OverrideOpt = False) -> None:
    """Every condition on the backend: a few steps, validation NLL, and the adapter checked from its weights."""
    from loraexp.stages import smoke

    echo(smoke.run(session(ctx, config, if_exists, override), render_run, run_id))


@app.command("lr-select")
@friendly_errors
def lr_select_command(ctx: typer.Context, config: ConfigOpt, run_id: RunIdOpt = None, render_run: RenderRunOpt = None, if_exists: IfExistsOpt = "resume",
                      override: OverrideOpt = False) -> None:
    """LR grid x condition on the first rows with the selection seed; batch-size candidates; throughput probe."""
    from loraexp.stages import lr_select

    echo(lr_select.run(session(ctx, config, if_exists, override), render_run, run_id))


@app.command("train")
@friendly_errors
def train_command(ctx: typer.Context, config: ConfigOpt, condition: ConditionOpt = None, seed: SeedOpt = None, render_run: RenderRunOpt = None,
                  lr_select_run: Annotated[Optional[str], typer.Option("--lr-select-run", help="lr-select run to inherit the LR from.")] = None,
                  if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Train conditions x seeds (or one with --condition/--seed); resumes a killed run from its last checkpoint."""
    from loraexp.stages import train

    echo(train.run(session(ctx, config, if_exists, override), condition, seed, render_run, lr_select_run))


@app.command("export")
@friendly_errors
def export_command(ctx: typer.Context, config: ConfigOpt, run_id: RunIdOpt = None, push_to_hub: PushOpt = None, if_exists: IfExistsOpt = "resume",
                   override: OverrideOpt = False) -> None:
    """Selected checkpoints -> sampler weights + PEFT adapters under checkpoints/best-checkpoints/, each checked from its weights."""
    from loraexp.stages import export

    echo(export.run(session(ctx, config, if_exists, override), push_to_hub, run_id))


@app.command("eval")
@friendly_errors
def eval_command(ctx: typer.Context, config: ConfigOpt, condition: ConditionOpt = None, seed: SeedOpt = None,
                 checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="A sampler path to evaluate (needs --condition and --seed).")] = None,
                 baseline_only: Annotated[bool, typer.Option("--baseline-only", help="Evaluate only the untouched base model.")] = False,
                 limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions (a probe; its run id gets a -probeN suffix).")] = None,
                 benchmark: Annotated[Optional[str], typer.Option("--benchmark", help="Only this benchmark (default: every benchmark in the contract).")] = None,
                 render_run: RenderRunOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Greedy eval of the baseline first, then every exported checkpoint, on every benchmark, with strict + lenient scoring."""
    from loraexp.stages import eval

    echo(eval.run(session(ctx, config, if_exists, override), condition, seed, checkpoint, baseline_only, limit, render_run, benchmark))


@app.command("figures")
@friendly_errors
def figures_command(ctx: typer.Context, config: ConfigOpt, run_id: RunIdOpt = None, if_exists: IfExistsOpt = "resume", override: OverrideOpt = False) -> None:
    """Comparison, decision rule, paired statistics, fig_01..fig_08 and report.md from the eval, train, lr-select and export runs."""
    from loraexp.stages import figures

    echo(figures.run(session(ctx, config, if_exists, override), run_id))


@app.command("compare")
@friendly_errors
def compare_command(
    baseline: Annotated[Path, typer.Option("--baseline", help="Predictions of the untouched base model (any supported format).")],
    run: Annotated[list[str], typer.Option("--run", help="CONDITION:SEED:PATH of one fine-tuned model's predictions; repeat for each.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for comparison.json, report.md and the figures.")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A contract: its decision settings, comparisons, model, ranks and benchmark format (default: the reference contract's decision settings).")] = None,
    benchmark: Annotated[Optional[str], typer.Option("--benchmark-name", help="Name of the benchmark in the report (default: the contract's primary, else 'benchmark').")] = None,
) -> None:
    """Statistics, report and figures over prediction files made anywhere (loraexp, the reference release, lm-eval samples)."""
    from loraexp import compare

    setup_logging()
    echo(compare.run(baseline, run, out, load_contract(config) if config else None, benchmark))


@app.command("run")
@friendly_errors
def run_command(ctx: typer.Context, config: ConfigOpt,
                start: Annotated[Optional[str], typer.Option("--from", help="Start at this stage (the ones before must be finished).")] = None,
                only: Annotated[Optional[str], typer.Option("--only", help="Run just this stage.")] = None) -> None:
    """The whole experiment in order, skipping finished stages and resuming interrupted ones."""
    run_pipeline(session(ctx, config), start, only)


@app.command("demo")
@friendly_errors
def demo_command(ctx: typer.Context, config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Demo contract (default: the packaged demo.toml).")] = None) -> None:
    """The whole pipeline offline on the embedded default (generated data, tiny Qwen3, local client); <= 10 min on 2 cores."""
    import time

    from loraexp import pipeline

    started = time.perf_counter()
    demo = session(ctx, config or pipeline.packaged_demo_config())
    run_pipeline(demo, None, None)
    report = demo.results / demo.run_id("figures") / "report.md"
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; report: {report}")
    if report.exists():
        table = [line for line in report.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
        typer.echo("\n".join(table[:12]))


def run_pipeline(session: Session, start: Optional[str], only: Optional[str]) -> None:
    from loraexp import pipeline

    try:
        pipeline.run_pipeline(session, start, only, report=typer.echo)
    except pipeline.StageFailed as exc:
        echo_error(exc)
        raise typer.Exit(1) from None


@app.command("status")
@friendly_errors
def status_command(
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Artifacts root to list.")] = Path("artifacts"),
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Read the artifacts root from this contract.")] = None,
) -> None:
    """A table of every run: stage, run id, status, key figure, contract hash, age."""
    from loraexp.status import print_status

    setup_logging()
    print_status(Path(load_contract(config).experiment.artifacts_dir) if config else artifacts)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
