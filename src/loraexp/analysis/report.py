"""report.md, written from comparison.json: tables, figure captions and what the result does and does not support.

Nothing here is hand-written about a result: every sentence picks its wording from the numbers.
"""

from __future__ import annotations

import re

from loraexp.contracts import Contract


def _pts(fraction: float | None, signed: bool = False) -> str:
    if fraction is None:
        return "n/a"
    return f"{100 * fraction:+.2f}" if signed else f"{100 * fraction:.2f}"


def setting(comparison: dict, contract: Contract) -> str:
    """The sentence every caption shares: benchmark size, decoding, seeds, checkpoint rule."""
    decoding = comparison["decoding"]
    seeds = comparison["seeds"]
    greedy = "greedy" if decoding["temperature"] == 0 else f"temperature {decoding['temperature']}"
    return (f"{comparison['benchmark_size']} benchmark questions ({contract.benchmark.source}, split {contract.benchmark.split}); "
            f"{greedy} decoding, max_new_tokens {decoding['max_new_tokens']}, thinking {'on' if decoding['enable_thinking'] else 'off'}; "
            f"{len(seeds)} training seeds per condition ({', '.join(map(str, seeds))}); checkpoint per run by {comparison['checkpoint_selection_rule']}.")


def captions(comparison: dict, contract: Contract) -> dict[str, str]:
    """One caption per figure folder; each states the setting and what its intervals mean."""
    k, paired = len(comparison["seeds"]), comparison["comparison"]
    common = setting(comparison, contract)
    return {
        "fig_01_comparison": f"Accuracy per condition: mean over {k} seeds, min-max over seeds (the spread the seed causes, not a confidence interval), "
                             f"Δ = mean minus the untrained baseline in percentage points; strict scorer primary, lenient beside it. {common}",
        "fig_02_costs": f"Cost per run: adapter size (10^6 bytes), training, validation and evaluation tokens and dollars at the contract's prices "
                        f"(${contract.prices.train_per_million}/M train, ${contract.prices.sample_per_million}/M sampled, ${contract.prices.prefill_per_million}/M prompt). {common}",
        "fig_03_accuracy": f"Accuracy per seed (hollow), mean (filled) and seed range (bar, min-max over {k} seeds, not a confidence interval); "
                           f"dotted line: the untrained baseline. {common}",
        "fig_04_disagreement": f"Questions answered correctly by exactly one condition, per seed and pooled; p = two-sided exact McNemar test "
                               f"(binomial on the discordant questions); pooled sums the discordant counts over the {k} seeds. {common}",
        "fig_05_validation_nll": f"Validation NLL (token-weighted over answer tokens) at each saved step; the star marks the selected step "
                                 f"({comparison['checkpoint_selection_rule']}). {common}",
        "fig_06_lr_selection": f"LR selection: validation NLL at the last grid step for each learning rate (log x) and batch size, on the first "
                               f"{contract.lr_select.train_rows} train / {contract.lr_select.val_rows} validation rows with the reserved seed "
                               f"{contract.lr_select.seed}; the circle marks the selected LR (lowest validation NLL, tie -> smaller LR).",
        "fig_07_disagreement_examples": f"For each seed, the first question (benchmark order) that {paired['a']} got right and {paired['b']} wrong, "
                                        f"and the reverse, with both full generations. {common}",
        "fig_08_throughput": f"Training throughput of each request shape ({contract.lr_select.throughput_steps} timed optimizer steps each, "
                             f"the same batches on a fresh client); labels give seconds per step.",
    }


def accuracy_lines(comparison: dict) -> list[str]:
    accuracy = comparison["accuracy"]
    lines = ["| condition | strict mean % | strict min-max % | Δ vs baseline (pts) | seed SD (pts) | lenient mean % | lenient Δ (pts) |",
             "|---|---|---|---|---|---|---|",
             f"| baseline | {_pts(accuracy['baseline']['strict'])} | - | - | - | {_pts(accuracy['baseline']['lenient'])} | - |"]
    for name in comparison["conditions"]:
        strict, lenient = accuracy[name]["strict"], accuracy[name]["lenient"]
        lines.append(f"| {name} | {_pts(strict['mean'])} | {_pts(strict['min'])}-{_pts(strict['max'])} | "
                     f"{accuracy[name]['strict_delta_vs_baseline_points']:+.2f} | {_pts(strict['seed_sd'])} | {_pts(lenient['mean'])} | "
                     f"{accuracy[name]['lenient_delta_vs_baseline_points']:+.2f} |")
    return lines


def paired_lines(comparison: dict) -> list[str]:
    paired = comparison["comparison"]
    a, b, interval, mde = paired["a"], paired["b"], paired["bootstrap"], paired["mde"]
    lines = [f"| seed | only {a} right | only {b} right | both right | both wrong | gap {a} - {b} (pts) | exact McNemar p |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['seed']} | {s['a_only']} | {s['b_only']} | {s['both_correct']} | {s['both_wrong']} | {_pts(s['delta'], True)} | {s['mcnemar_p']:.3f} |"
              for s in paired["per_seed"]]
    lines.append(f"| pooled | {paired['pooled']['a_only']} | {paired['pooled']['b_only']} | | | {_pts(paired['gap'], True)} | {paired['pooled']['mcnemar_p']:.3f} |")
    confidence = round(100 * (1 - interval["alpha"]))
    lines += [
        "",
        f"- Mean gap {a} - {b}: **{_pts(paired['gap'], True)} points** (strict), {paired['lenient_gap_points']:+.2f} points (lenient).",
        f"- {confidence}% paired bootstrap interval of the gap: [{_pts(interval['low'], True)}, {_pts(interval['high'], True)}] points "
        f"({interval['samples']} resamples of the questions, drawn jointly for all seeds, seed {interval['seed']}): it covers question sampling only, the seeds stay fixed.",
        f"- Item standard error of the gap (question sampling): {_pts(paired['item_se'])} points; seed SD of the per-seed gap: {_pts(paired['seed_sd_gap'])} points.",
        f"- Pooled McNemar: {paired['pooled']['pooling']}.",
        f"- Minimum detectable effect (two-sided α={mde['alpha']}, power {mde['power']:.0%}, N={mde['n']}): {_pts(mde['planned'])} points planned "
        f"(from the baseline accuracy {_pts(mde['baseline_accuracy'])}% alone, errors assumed independent), {_pts(mde['paired'])} points with the observed "
        f"discordance {_pts(mde['observed_discordance'])}%. Formula: (z_(1-α/2) + z_power) * sqrt(d / N), d = discordant share (planned: 2p(1-p)).",
    ]
    return lines


def verdict_lines(comparison: dict, contract: Contract) -> list[str]:
    """What the numbers support and what they do not, chosen from the decision, the tests and the MDE."""
    paired = comparison["comparison"]
    a, b, gap, band = paired["a"], paired["b"], paired["gap"], paired["min_gap"]
    interval, pooled_p, alpha = paired["bootstrap"], paired["pooled"]["mcnemar_p"], paired["alpha"]
    ci = f"[{_pts(interval['low'], True)}, {_pts(interval['high'], True)}]"
    k = len(comparison["seeds"])
    lines = []
    if paired["decision"] == "inconclusive":
        lines.append(f"- **No winner.** The mean gap {a} - {b} is {_pts(gap, True)} points, inside the inconclusive band "
                     f"(|gap| < {_pts(band)} points): the result does not support calling either condition better.")
    elif paired["significant"]:
        winner = paired["decision"].removeprefix("winner: ")
        lines.append(f"- **{winner} is ahead** by {abs(100 * gap):.2f} points, outside the {_pts(band)}-point band, with pooled McNemar p = {pooled_p:.3f} < {alpha} "
                     f"and a bootstrap interval {ci} that excludes 0: the result supports {winner} over the other condition on this benchmark under this protocol.")
    else:
        winner = paired["decision"].removeprefix("winner: ")
        lines.append(f"- **The rule names {winner}** (gap {_pts(gap, True)} points, outside the {_pts(band)}-point band), but the difference is not "
                     f"statistically significant (pooled McNemar p = {pooled_p:.3f}, bootstrap interval {ci}): the result does not support a claim "
                     f"that {winner} is better beyond these questions and seeds.")
    detectable = "below" if abs(gap) < paired["mde"]["paired"] else "above"
    lines.append(f"- The observed |gap| {abs(100 * gap):.2f} points is {detectable} the minimum detectable effect of {_pts(paired['mde']['paired'])} points "
                 f"({paired['mde']['power']:.0%} power at α={paired['mde']['alpha']}, N={comparison['benchmark_size']}); gaps smaller than that are routinely missed with this many questions.")
    lines.append(_seed_vs_item(paired, k))
    lines += [f"- Against the untrained baseline: {a} {comparison['accuracy'][a]['strict_delta_vs_baseline_points']:+.2f} points, "
              f"{b} {comparison['accuracy'][b]['strict_delta_vs_baseline_points']:+.2f} points (strict, mean over seeds).",
              _lenient_agreement(paired),
              f"- One benchmark ({contract.benchmark.source}, {comparison['benchmark_size']} questions): nothing here speaks to other benchmarks, tasks or models.",
              f"- {k} seeds change only what the seed changes ({_what_the_seed_changes(contract)}); data, rank, schedule, prompt, extraction and "
              f"selection rule are the same for every run, so the seed range says nothing about other hyperparameters."]
    return lines


def _seed_vs_item(paired: dict, k: int) -> str:
    if paired["seed_sd_gap"] is None:
        return f"- With {k} seed there is no seed spread to compare with the item standard error ({_pts(paired['item_se'])} points)."
    spread = f"- The gap varies across seeds by SD {_pts(paired['seed_sd_gap'])} points; its item standard error is {_pts(paired['item_se'])} points: "
    if paired["seed_sd_gap"] > paired["item_se"]:
        return spread + "the seed moves the gap more than question sampling does, and the bootstrap interval (seeds fixed) leaves that out."
    return spread + "question sampling, not the seed, dominates the uncertainty; more questions would narrow it more than more seeds."


def _lenient_agreement(paired: dict) -> str:
    same_sign = (paired["gap"] >= 0) == (paired["lenient_gap_points"] >= 0)
    verdict = "has the same sign" if same_sign else "has the opposite sign, so the ordering depends on the scorer"
    return f"- The lenient scorer's gap ({paired['lenient_gap_points']:+.2f} points) {verdict}; the strict scorer stays primary."


def _what_the_seed_changes(contract: Contract) -> str:
    if contract.train.epoch_order == "shuffle":
        return "LoRA initialisation and the per-epoch data order"
    return "LoRA initialisation; the data order is the file order for every seed"


def _fenced(text: str) -> list[str]:
    """A code block whose fence is longer than any backtick run inside the generation."""
    longest_run = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest_run + 1)
    return [fence + "text", text, fence]


def render_report(comparison: dict, contract: Contract, figure_names: list[str], examples: list[dict]) -> str:
    """The whole report.md: numbers, figures with captions, examples, then what the result supports."""
    paired = comparison["comparison"]
    caption_for = captions(comparison, contract)
    lines = [f"# {comparison['experiment']}: {paired['a']} vs {paired['b']}", "",
             f"Decision (rule: |mean strict gap| < {_pts(paired['min_gap'])} points ⇒ inconclusive): **{paired['decision']}**.", "",
             setting(comparison, contract), f"Evaluation contract `{str(comparison['eval_contract_sha256'])[:12]}`, experiment contract `{comparison['contract_sha256'][:12]}`.", "",
             "## Accuracy", "", *accuracy_lines(comparison), "", "## Paired comparison", "", *paired_lines(comparison), "", "## Figures", ""]
    for name in figure_names:
        lines += [f"### {name}", "", f"![{name}]({name}/{name}.png)", "", caption_for[name], ""]
    lines += ["## Disagreement examples (full generations)", ""]
    for example in examples:
        lines += [f"**seed {example['seed']}, {example['example_id']}: {example['correct_condition']} right, {example['wrong_condition']} wrong** "
                  f"(reference `{example['reference_answer']}`)", "", "> " + " ".join(example["question"].split()), "",
                  f"{example['correct_condition']} (extracted `{example['correct_extracted']}`):", "", *_fenced(example["correct_generation"]), "",
                  f"{example['wrong_condition']} (extracted `{example['wrong_extracted']}`):", "", *_fenced(example["wrong_generation"]), ""]
    lines += ["## What this result supports, and what it does not", "", *verdict_lines(comparison, contract), ""]
    return "\n".join(lines)
