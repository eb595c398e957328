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

import typer

from loraexp.artifacts import IfExists
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


def friendly_errors(command: Callable) -> Callable:
    """Turn UserError and disk-full OSErrors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                typer.echo(f"error: disk full while writing {exc.filename or 'artifacts'}; free space, then rerun the same command (it resumes)", err=True)
                raise typer.Exit(2) from None
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted: rerun the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def check_if_exists(value: str) -> IfExists:
    if value not in ("resume", "overwrite", "fail"):
        raise UserError(f"--if-exists must be resume, overwrite or fail (got {value!r})")
    return value  # type: ignore[return-value]


def load(config: Path) -> Contract:
    setup_logging()
    return load_contract(config)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
