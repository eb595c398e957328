"""What the user sees when something goes wrong: one `error: ...` line, no traceback, no secret.

Logging is configured once per command with every secret value (TINKER_API_KEY, HF_TOKEN, ...) redacted
from every line, tracebacks included. `friendly_errors` wraps each command: a `UserError` (a problem the
user can fix; its message names the fix) or a full disk is one line and exit 2; anything unforeseen is
one line naming a crash log (the redacted traceback) and exit 1.
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
import logging
import sys
from pathlib import Path
from typing import Callable

import click
import typer

from loraexp.artifacts import release_locks
from loraexp.errors import UserError
from loraexp.files import redact


def write_crash_log() -> Path:
    """Save the current exception's traceback (secrets redacted) under artifacts/logs/; return the path."""
    import traceback

    directory = Path("artifacts") / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-{dt.datetime.now().strftime('%Y%m%dT%H%M%S%f')}.txt"
    path.write_text(redact(traceback.format_exc()), encoding="utf-8")
    return path



def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


class RedactSecrets(logging.Filter):
    """Replace secret values (TINKER_API_KEY, HF_TOKEN, ...) in every log line, tracebacks included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = redact(message), ()
        return True


def echo_error(message: object) -> None:
    """The one `error: ...` line on stderr, with secret values redacted (a key pasted into a flag must not reach a log)."""
    typer.echo(f"error: {redact(str(message))}", err=True)


def friendly_errors(command: Callable) -> Callable:
    """UserError and disk-full OSErrors become one line on stderr and exit 2; anything else one line and a crash log.
    Every run lock the command took is released when it returns."""

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
        except (typer.Exit, click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise  # typer 0.29's Exit no longer derives from click's: both are an exit, not a crash
        except Exception as exc:  # a bug or an unforeseen service error: one line here, the traceback in a file
            echo_error(f"unexpected {type(exc).__name__}: {exc} (traceback in {write_crash_log()}); rerun the same command to resume, and report it if it repeats")
            raise typer.Exit(1) from None
        finally:
            release_locks()

    return wrapper
