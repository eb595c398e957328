"""The figures: each function draws one figure and returns it with the table behind it (or None when its data is unknown).

Per benchmark (one folder per benchmark when there are several): fig_01 accuracy table, fig_03 accuracy per
seed, fig_04 discordant questions per comparison and seed, fig_07 disagreement examples. Per experiment,
only when the pipeline's own runs are the input: fig_02 costs, fig_05 validation NLL, fig_06 LR selection,
fig_08 throughput, fig_09 accuracy against adapter size (parameters and bytes) per benchmark.

One fixed color, marker and line style per condition (contract order), distinct in grayscale too; the
baseline is gray / diamonds / dotted. No title names a winner: the declared rule and the verdict are
stated with their qualification in the report.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from loraexp.analysis.comparison import disagreement_examples  # noqa: E402
from loraexp.analysis.evidence import Evidence  # noqa: E402
from loraexp.analysis.report import p_text  # noqa: E402

BASELINE_STYLE = {"color": "#7f7f7f", "marker": "D", "linestyle": ":", "hatch": ".."}
CONDITION_STYLES = (
    {"color": "#08306b", "marker": "o", "linestyle": "-", "hatch": ""},
    {"color": "#f0a000", "marker": "s", "linestyle": "--", "hatch": "//"},
    {"color": "#2ca25f", "marker": "^", "linestyle": "-.", "hatch": "\\\\"},
    {"color": "#c51b8a", "marker": "v", "linestyle": (0, (1, 1)), "hatch": "xx"},
    {"color": "#6baed6", "marker": "P", "linestyle": (0, (5, 1, 1, 1)), "hatch": "--"},
    {"color": "#8c510a", "marker": "X", "linestyle": (0, (3, 1, 1, 1, 1, 1)), "hatch": "++"},
)
TEXT_WRAP = 110  # characters per line in the disagreement examples
SEED_OFFSET = 0.15  # per-seed dots sit beside the mean marker so equal values stay visible
Drawn = tuple[Figure, pd.DataFrame] | None


def style(comparison: dict, name: str) -> dict:
    if name == "baseline":
        return BASELINE_STYLE
    return CONDITION_STYLES[comparison["conditions"].index(name) % len(CONDITION_STYLES)]


def save_figure(figure: Figure, png: Path, pdf: Path) -> None:
    """PNG (130 dpi) and PDF, then free the figure (a dozen figures per report add up)."""
    figure.savefig(png, dpi=130, bbox_inches="tight")
    figure.savefig(pdf, bbox_inches="tight")
    plt.close(figure)


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _table_figure(frame: pd.DataFrame, title: str, width: float) -> Figure:
    figure, axis = plt.subplots(figsize=(width, 0.45 * (len(frame) + 2)))
    axis.axis("off")
    table = axis.table(cellText=frame.values, colLabels=list(frame.columns), loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.4)
    table.auto_set_column_width(col=list(range(len(frame.columns))))
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e0e0e0")
    axis.set_title(title, fontsize=10)
    return figure


def fig_01_comparison(comparison: dict, evidence: Evidence, benchmark: str) -> Drawn:
    """Accuracy per condition: mean, seed min/max/range (strict and lenient) and the gap to the baseline; the verdicts in the title."""
    entry = comparison["benchmarks"][benchmark]
    accuracy = entry["accuracy"]
    rows = [{"condition": "baseline", "seeds": 1, "strict_mean": accuracy["baseline"]["strict"], "strict_min": None, "strict_max": None,
             "strict_range": None, "strict_delta_points": 0.0, "lenient_mean": accuracy["baseline"]["lenient"], "lenient_delta_points": 0.0}]
    for name in comparison["conditions"]:
        strict, lenient = accuracy[name]["strict"], accuracy[name]["lenient"]
        rows.append({"condition": name, "seeds": len(strict["per_seed"]), "strict_mean": strict["mean"], "strict_min": strict["min"],
                     "strict_max": strict["max"], "strict_range": strict["range"], "strict_delta_points": accuracy[name]["strict_delta_vs_baseline_points"],
                     "lenient_mean": lenient["mean"], "lenient_delta_points": accuracy[name]["lenient_delta_vs_baseline_points"]})
    data = pd.DataFrame(rows)
    shown = pd.DataFrame({
        "condition": data["condition"], "seeds": data["seeds"],
        "strict % (mean)": [_points(v) for v in data["strict_mean"]],
        "strict % min-max": ["-" if pd.isna(lo) else f"{100 * lo:.1f}-{100 * hi:.1f}" for lo, hi in zip(data["strict_min"], data["strict_max"])],
        "Δ vs baseline (pts)": [f"{v:+.1f}" for v in data["strict_delta_points"]],
        "lenient % (mean)": [_points(v) for v in data["lenient_mean"]],
        "lenient Δ (pts)": [f"{v:+.1f}" for v in data["lenient_delta_points"]],
    })
    verdicts = [f"{p['a']} - {p['b']}: {p['gap_points']:+.1f} pts, {p['verdict']} (Holm {p_text(p['p_adjusted'])})" for p in entry["comparisons"][:3]]
    more = f"; {len(entry['comparisons']) - 3} more in the report" if len(entry["comparisons"]) > 3 else ""
    title = f"{benchmark}: {entry['size']} questions (strict scorer primary)\n" + "\n".join(verdicts) + more
    return _table_figure(shown, title, 10), data


def fig_02_costs(comparison: dict, evidence: Evidence, benchmark: None = None) -> Drawn:
    """Adapter size, tokens and dollars per condition x seed."""
    if not comparison.get("costs"):
        return None
    data = pd.DataFrame(comparison["costs"])

    def dollars(value: float | None) -> str:
        return "n/a" if value is None or pd.isna(value) else f"${value:.4f}"

    shown = pd.DataFrame({
        "condition": data["condition"], "seed": data["seed"], "adapter MB": [f"{v:.2f}" for v in data["adapter_mb"]],
        "train tokens": [f"{v:,}" for v in data["train_tokens"]], "train $": [dollars(v) for v in data["train_usd"]],
        "val tokens": [f"{v:,}" for v in data["val_tokens"]], "val $": [dollars(v) for v in data["val_usd"]],
        "eval tokens": [f"{v:,}" for v in data["eval_tokens"]], "eval $": [dollars(v) for v in data["eval_usd"]],
    })
    return _table_figure(shown, "Cost per run (validation $ = recorded total minus train tokens x train price; eval over every benchmark)", 12), data


def fig_03_accuracy(comparison: dict, evidence: Evidence, benchmark: str) -> Drawn:
    """Per-seed accuracy dots, the mean, the seed range (min-max bar) and the baseline line; strict and lenient."""
    entry = comparison["benchmarks"][benchmark]
    accuracy, names = entry["accuracy"], comparison["conditions"]
    figure, axes = plt.subplots(1, 2, figsize=(max(10, 2.2 * len(names) + 4), 4.2), sharey=True)
    rows = []
    for axis, scorer in zip(axes, ("strict", "lenient")):
        axis.axhline(100 * accuracy["baseline"][scorer], color=BASELINE_STYLE["color"], linestyle=BASELINE_STYLE["linestyle"],
                     label=f"baseline {_points(accuracy['baseline'][scorer])}%")
        for position, name in enumerate(names):
            values, look = accuracy[name][scorer], style(comparison, name)
            seeds = list(values["per_seed"].items())
            axis.vlines(position, 100 * values["min"], 100 * values["max"], color=look["color"], linewidth=3, alpha=0.5)
            axis.scatter([position - SEED_OFFSET] * len(seeds), [100 * v for _, v in seeds], facecolors="none", edgecolors=look["color"],
                         marker=look["marker"], s=40)
            axis.scatter([position], [100 * values["mean"]], color=look["color"], marker=look["marker"], s=110, zorder=3,
                         label=f"{name} mean {_points(values['mean'])}%")
            rows += [{"scorer": scorer, "condition": name, "seed": seed, "accuracy": value} for seed, value in seeds]
        axis.set_xticks(range(len(names)), names, rotation=10 if len(names) > 2 else 0)
        axis.set_xlim(-0.6, len(names) - 0.4)
        axis.set_title(f"{scorer} scorer")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False)
    values = [100 * r["accuracy"] for r in rows] + [100 * accuracy["baseline"][s] for s in ("strict", "lenient")]
    axes[0].set_ylim(min(values) - 3, max(values) + 3)
    axes[0].set_ylabel(f"accuracy (%) on {entry['size']} questions")
    figure.suptitle(f"{benchmark}: hollow = one seed, filled = mean over seeds, bar = seed min-max (not a confidence interval)")
    figure.tight_layout()
    rows += [{"scorer": s, "condition": "baseline", "seed": None, "accuracy": accuracy["baseline"][s]} for s in ("strict", "lenient")]
    return figure, pd.DataFrame(rows)


def fig_04_disagreement(comparison: dict, evidence: Evidence, benchmark: str) -> Drawn:
    """Per comparison (rows) and seed (columns, pooled last): questions only a got right vs only b got right, exact McNemar p."""
    pairs = comparison["benchmarks"][benchmark]["comparisons"]
    columns = max(len(pair["per_seed"]) for pair in pairs) + 1
    figure, axes = plt.subplots(len(pairs), columns, figsize=(2.5 * columns, 3.3 * len(pairs)), squeeze=False)
    rows = []
    for axes_row, pair in zip(axes, pairs):
        panels = [(f"seed {s['seed']}", s["a_only"], s["b_only"], s["mcnemar_p"]) for s in pair["per_seed"]]
        panels.append(("pooled (secondary:\nassumes independent seeds)", pair["pooled_mcnemar"]["a_only"], pair["pooled_mcnemar"]["b_only"], pair["pooled_mcnemar"]["p"]))
        seed_max = max([max(a_only, b_only) for _, a_only, b_only, _ in panels[:-1]] + [1])
        for axis, (label, a_only, b_only, p) in zip(axes_row, panels + [None] * (columns - len(panels))):
            if label is None:
                axis.axis("off")
                continue
            for position, (name, count) in enumerate(((pair["a"], a_only), (pair["b"], b_only))):
                look = style(comparison, name)
                axis.bar(position, count, color=look["color"], hatch=look["hatch"], edgecolor="black")
                axis.text(position, count, str(count), ha="center", va="bottom", fontsize=9)
            axis.set_xticks([0, 1], [f"only {pair['a']}", f"only {pair['b']}"], fontsize=7, rotation=12)
            axis.set_title(f"{label}\nexact McNemar {p_text(p)}", fontsize=8)
            axis.set_ylim(0, 1.2 * max(max(a_only, b_only) if label.startswith("pooled") else seed_max, 1))  # seed panels share one scale
        rows += [{"a": pair["a"], "b": pair["b"], **s} for s in pair["per_seed"]]
        rows.append({"a": pair["a"], "b": pair["b"], "seed": "pooled", "a_only": pair["pooled_mcnemar"]["a_only"],
                     "b_only": pair["pooled_mcnemar"]["b_only"], "mcnemar_p": pair["pooled_mcnemar"]["p"]})
    axes[0][0].set_ylabel("questions right under one condition only")
    figure.suptitle(f"{benchmark}: discordant questions per seed (same questions, greedy decoding)")
    figure.tight_layout()
    return figure, pd.DataFrame(rows)


def fig_05_validation(comparison: dict, evidence: Evidence, benchmark: None = None) -> Drawn:
    """Validation NLL against step for every condition x seed, the selected checkpoint starred."""
    if not evidence.trains:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    rows = []
    rule = comparison["setting"]["checkpoint_selection_rule"]
    for name in comparison["conditions"]:
        look = style(comparison, name)
        for index, (seed, train) in enumerate(sorted(evidence.trains[name].items())):
            steps = [c["step"] for c in train.checkpoints]
            nll = [c["val_nll"] for c in train.checkpoints]
            axis.plot(steps, nll, color=look["color"], linestyle=look["linestyle"], marker=look["marker"], markersize=4, alpha=0.9,
                      label=name if index == 0 else None)
            selected = train.summary["selected_step"]
            axis.scatter([selected], [train.summary["val_nll"]], marker="*", s=180, color=look["color"], edgecolors="black", zorder=4,
                         label="selected checkpoint" if (index == 0 and name == comparison["conditions"][0]) else None)
            rows += [{"condition": name, "seed": seed, "step": s, "val_nll": v, "selected": s == selected} for s, v in zip(steps, nll)]
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("validation NLL (nats / answer token)")
    axis.set_title(f"Validation NLL; star = selected step ({rule})", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure, pd.DataFrame(rows)


def fig_06_lr_selection(comparison: dict, evidence: Evidence, benchmark: None = None) -> Drawn:
    """Best validation NLL of every LR-grid point (log x), one line per condition and batch size; the choice circled."""
    if not evidence.selection:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    rows = []
    for name, choice in evidence.selection["conditions"].items():
        look = style(comparison, name) if name in comparison["conditions"] else BASELINE_STYLE
        for size in sorted({point["batch_size"] for point in choice["grid"]}):
            points = sorted((p for p in choice["grid"] if p["batch_size"] == size), key=lambda p: p["learning_rate"])
            default_size = size == comparison["setting"]["train_batch_size"]
            axis.plot([p["learning_rate"] for p in points], [_best_nll(p) for p in points], color=look["color"],
                      linestyle=look["linestyle"] if default_size else ":", marker=look["marker"], markersize=7,
                      markerfacecolor=look["color"] if default_size else "white", label=f"{name}, batch {size}")
            rows += [{"condition": name, "batch_size": size, "learning_rate": p["learning_rate"], "best_val_nll": _best_nll(p),
                      "final_val_nll": p["final_val_nll"], "selected": p["learning_rate"] == choice["selected_lr"] and size == choice["selected_batch_size"]}
                     for p in points]
        axis.scatter([choice["selected_lr"]], [_best_nll(_selected_point(choice))], s=300, facecolors="none", edgecolors=look["color"],
                     linewidths=2, label=f"{name} selected: lr={choice['selected_lr']:g}, batch {choice['selected_batch_size']}")
    axis.set_xscale("log")
    axis.set_xlabel("peak learning rate (log scale)")
    axis.set_ylabel("lowest validation NLL over the grid's validation steps")
    axis.set_title("LR selection on the reserved-seed slice (lowest validation NLL, tie -> smaller LR)", fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure, pd.DataFrame(rows)


def _best_nll(point: dict) -> float:
    return min(point["val_nll"].values()) if point.get("val_nll") else point["final_val_nll"]


def _selected_point(choice: dict) -> dict:
    return next(p for p in choice["grid"] if p["learning_rate"] == choice["selected_lr"] and p["batch_size"] == choice["selected_batch_size"])


def fig_07_examples(comparison: dict, evidence: Evidence, benchmark: str) -> Drawn:
    """Per comparison, the first disagreement in each direction, with both full generations (wrapped, monospace)."""
    scores = next(b for b in evidence.benchmarks if b.name == benchmark)
    examples = disagreement_examples(scores, evidence.comparisons)
    blocks = [_example_text(example) for example in examples] or ["no question was answered differently by the compared conditions"]
    lines = sum(block.count("\n") + 2 for block in blocks)
    figure = plt.figure(figsize=(11, max(2.0, 0.16 * lines)))
    # parse_math=False: generations are full of "$5 ... $10", "$\\boxed{18}$" and \frac, which mathtext would try to typeset
    figure.text(0.01, 0.995, "\n\n".join(blocks), family="monospace", fontsize=7.5, va="top", ha="left", parse_math=False)
    return figure, pd.DataFrame(examples)


def _example_text(example: dict) -> str:
    def wrap(text: str) -> str:
        return "\n".join(textwrap.fill(line, TEXT_WRAP, subsequent_indent="    ") or "" for line in str(text).splitlines())

    header = (f"=== seed {example['seed']}: {example['correct_condition']} right, {example['wrong_condition']} wrong — "
              f"{example['example_id']} (reference {example['reference_answer']}) ===")
    return "\n".join([header, wrap("Q: " + example["question"]),
                      f"--- {example['correct_condition']} (extracted {example['correct_extracted']!r}):", wrap(example["correct_generation"]),
                      f"--- {example['wrong_condition']} (extracted {example['wrong_extracted']!r}):", wrap(example["wrong_generation"])])


def fig_08_throughput(comparison: dict, evidence: Evidence, benchmark: None = None) -> Drawn:
    """Training tokens per second for each request shape, seconds per step written on the bars."""
    if not comparison.get("throughput"):
        return None
    data = pd.DataFrame(comparison["throughput"])
    figure, axis = plt.subplots(figsize=(8, 0.7 * len(data) + 1.6))
    hatches = ("", "//", "..", "xx")
    for index, row in data.iterrows():
        axis.barh(index, row["tokens_per_second"], color=["#08306b", "#6a8fc8", "#c6d4ea", "#ffffff"][index % 4],
                  hatch=hatches[index % 4], edgecolor="black")
        axis.text(row["tokens_per_second"], index, f"  {row['seconds_per_step']:.3f} s/step", va="center", fontsize=9)
    axis.set_yticks(range(len(data)), data["request_shape"])
    axis.set_xlim(0, 1.35 * max(data["tokens_per_second"].max(), 1e-9))
    axis.set_xlabel("training tokens per second")
    axis.set_title("Throughput by request shape (same batches, fresh client each)", fontsize=10)
    figure.tight_layout()
    return figure, data


def fig_09_size_accuracy(comparison: dict, evidence: Evidence, benchmark: None = None) -> Drawn:
    """Strict accuracy (mean over seeds, seed range as a bar) against adapter size, parameters and bytes, per benchmark."""
    sizes = comparison.get("adapter_sizes")
    if not sizes:
        return None
    names = [name for name in comparison["conditions"] if name in sizes and isinstance(sizes[name]["parameters"], int)]
    benchmarks = list(comparison["benchmarks"])
    figure, axes = plt.subplots(len(benchmarks), 2, figsize=(10, 3.6 * len(benchmarks)), squeeze=False)
    rows = []
    for axes_row, benchmark_name in zip(axes, benchmarks):
        accuracy = comparison["benchmarks"][benchmark_name]["accuracy"]
        for axis, measure, label in zip(axes_row, ("parameters", "bytes"), ("LoRA parameters (millions)", "adapter file size (MB)")):
            scale = 1e6
            points = sorted(((sizes[name][measure] / scale, accuracy[name]["strict"], name) for name in names), key=lambda p: p[0])
            for x, strict, name in points:
                look = style(comparison, name)
                axis.vlines(x, 100 * strict["min"], 100 * strict["max"], color=look["color"], linewidth=2, alpha=0.5)
                axis.scatter([x], [100 * strict["mean"]], color=look["color"], marker=look["marker"], s=90, zorder=3, label=name)
                axis.annotate(f"r{sizes[name]['rank']}", (x, 100 * strict["mean"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
                rows.append({"benchmark": benchmark_name, "condition": name, "rank": sizes[name]["rank"], "measure": measure,
                             "size": sizes[name][measure], "strict_mean": strict["mean"], "strict_min": strict["min"], "strict_max": strict["max"]})
            axis.axhline(100 * accuracy["baseline"]["strict"], color=BASELINE_STYLE["color"], linestyle=BASELINE_STYLE["linestyle"], label="baseline")
            frontier = _frontier(points)
            axis.plot([p[0] for p in frontier], [100 * p[1]["mean"] for p in frontier], color="black", linewidth=0.8, alpha=0.6)
            axis.set_xlabel(label)
            axis.set_ylabel(f"{benchmark_name} strict accuracy (%)")
            axis.grid(alpha=0.3)
        axes_row[0].legend(fontsize=7)
    figure.suptitle("Accuracy against adapter size (line: the size/accuracy frontier; bars: seed min-max)")
    figure.tight_layout()
    return figure, pd.DataFrame(rows)


def _frontier(points: list[tuple[float, dict, str]]) -> list[tuple[float, dict, str]]:
    """Conditions no smaller adapter beats: each point of the frontier is more accurate than every smaller one."""
    frontier, best = [], float("-inf")
    for point in points:
        if point[1]["mean"] > best:
            frontier.append(point)
            best = point[1]["mean"]
    return frontier


@dataclass(frozen=True)
class FigureSpec:
    name: str
    draw: Callable[..., Drawn]
    per_benchmark: bool
    sources: tuple[str, ...]  # which input runs its provenance.json hashes (eval, train, lr-select, export)


FIGURES = (
    FigureSpec("fig_01_comparison", fig_01_comparison, True, ("eval",)),
    FigureSpec("fig_02_costs", fig_02_costs, False, ("train", "eval", "export")),
    FigureSpec("fig_03_accuracy", fig_03_accuracy, True, ("eval",)),
    FigureSpec("fig_04_disagreement", fig_04_disagreement, True, ("eval",)),
    FigureSpec("fig_05_validation_nll", fig_05_validation, False, ("train",)),
    FigureSpec("fig_06_lr_selection", fig_06_lr_selection, False, ("lr-select",)),
    FigureSpec("fig_07_disagreement_examples", fig_07_examples, True, ("eval",)),
    FigureSpec("fig_08_throughput", fig_08_throughput, False, ("lr-select",)),
    FigureSpec("fig_09_size_accuracy", fig_09_size_accuracy, False, ("eval", "export")),
)
