"""`loraexp status`: one row per run with its stage, status, key figure, contract hash and age."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loraexp.artifacts import list_runs
from loraexp.pipeline import STAGE_NAMES


def _age(mtime: float) -> str:
    seconds = max(0, int(time.time() - mtime))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _key_figure(figure: dict) -> str:
    """The first three figures a stage chose to show (the manifest holds them all)."""
    figure = dict(list(figure.items())[:3])
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in figure.items())


def print_status(root: Path) -> None:
    """Print the run table for `<root>/results` (an empty table says where it looked)."""
    order = {stage: index for index, stage in enumerate(STAGE_NAMES)}
    order["lr-select-point"] = order["lr-select"]
    runs = sorted(list_runs(root), key=lambda run: (order.get(run.get("stage", "?"), len(order)), run["run_id"]))
    console = Console(width=max(Console().width, 120))
    if not runs:
        console.print(f"no runs under {root / 'results'} yet: start with `loraexp demo` or `loraexp run --config <file>`")
        return
    table = Table(title=f"runs under {root / 'results'}")
    table.add_column("stage", no_wrap=True)
    table.add_column("run_id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("key figure", overflow="fold")
    table.add_column("contract", no_wrap=True)
    table.add_column("age", no_wrap=True)
    for run in runs:
        status = run.get("status", "?")
        style = "green" if status == "pass" else "yellow"
        table.add_row(
            run.get("stage", "?"), run["run_id"], f"[{style}]{status}[/{style}]",
            _key_figure(run.get("key_figure") or {}), (run.get("contract_sha256") or "")[:12], _age(run["mtime"]),
        )
    console.print(table)
