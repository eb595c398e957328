"""report.md, written from comparison.json: every sentence picks its wording from the numbers.

Order: the declared rule's outcome first (unchanged, and labelled as a point-estimate rule), then the verdict
the tests and intervals support (a difference, equivalence within the band, or inconclusive), the setting
(model, ranks, learning rates and where they came from, decoding, scorers in words, comma references), the
accuracy tables, each comparison's statistics with what each interval covers, figures, examples, and what
the result supports and does not. No line names a winner without its qualification.
"""

from __future__ import annotations

import re



def _pts(fraction: float | None, signed: bool = False) -> str:
    if fraction is None:
        return "n/a"
    return f"{100 * fraction:+.2f}" if signed else f"{100 * fraction:.2f}"


def _interval(interval: dict) -> str:
    return f"[{_pts(interval['low'], True)}, {_pts(interval['high'], True)}]"


def rule_line(pair: dict) -> str:
    """The declared rule's outcome, as pre-registered: a point-estimate rule, stated as such."""
    rule, band = pair["rule"], _pts(pair["rule"]["min_gap"])
    if rule["outcome"] == "inconclusive":
        outcome = f"inconclusive (|gap| {abs(pair['gap_points']):.2f} < {band} points)"
    else:
        leader = rule["outcome"].removeprefix("winner: ")
        outcome = f"{leader} ahead by {abs(pair['gap_points']):.2f} points (the rule reads the point estimate only)"
    scope = "" if rule["applies"] else " — not the primary benchmark: reported, not decided"
    return f"Declared rule (|mean strict gap| < {band} points ⇒ inconclusive): **{outcome}**{scope}."


def verdict_line(pair: dict, alpha: float) -> str:
    """What the tests and intervals support, in one sentence."""
    two_level, equivalence = pair["intervals"]["two_level"], pair["equivalence"]
    confidence, band = round(100 * (1 - alpha)), _pts(equivalence["band"])
    test = f"item-level sign-flip {p_text(pair['item_level']['sign_flip']['p'])}, Holm-adjusted {p_text(pair['p_adjusted'])}"
    if pair["verdict"] == "difference":
        higher = pair["a"] if pair["gap"] > 0 else pair["b"]
        inside = f"; it is also inside ±{band} points (TOST {p_text(equivalence['p'])}), so it is smaller than the band the contract calls relevant" if pair["within_band"] else ""
        return (f"Verdict: **a difference** — {higher} is higher by {abs(pair['gap_points']):.2f} points; the {confidence}% two-level interval "
                f"{_interval(two_level)} (questions and seeds) excludes 0 ({test}){inside}.")
    if pair["verdict"] == "equivalent":
        return (f"Verdict: **equivalent within ±{band} points** — TOST {p_text(equivalence['p'])}, the {round(100 * equivalence['level'])}% interval "
                f"[{_pts(equivalence['ci_low'], True)}, {_pts(equivalence['ci_high'], True)}] lies inside the band ({test}).")
    reasons = []
    if two_level["low"] <= 0 <= two_level["high"]:
        reasons.append(f"the {confidence}% two-level interval {_interval(two_level)} (questions and seeds) includes 0")
    if pair["p_adjusted"] >= alpha:
        reasons.append(f"the adjusted item-level test is not significant at α={alpha}")
    return (f"Verdict: **inconclusive** — {' and '.join(reasons)} ({test}); the {round(100 * equivalence['level'])}% interval "
            f"[{_pts(equivalence['ci_low'], True)}, {_pts(equivalence['ci_high'], True)}] is not inside ±{band} points either (TOST {p_text(equivalence['p'])}): "
            "no difference was shown, and no equivalence.")


def setting_lines(comparison: dict) -> list[str]:
    """Model, ranks, learning rates and their source, decoding, scorers in words, seeds, checkpoint rule."""
    setting = comparison["setting"]
    unknown = "not known (predictions made outside this experiment's runs)"
    lines = [f"- Base model: `{setting.get('base_model') or unknown}`" + (f" ({setting['backend']} backend)" if setting.get("backend") else "") + "."]
    ranks = setting.get("ranks")
    lines.append("- LoRA rank: " + (", ".join(f"{name} r{rank}" for name, rank in ranks.items()) if ranks else unknown) + ".")
    rates = setting.get("learning_rates")
    lines.append("- Peak learning rate: " + ("; ".join(f"{name} {lr['learning_rate']:g} (batch {lr['batch_size']}, {lr['source']})"
                                                      for name, lr in rates.items()) if rates else unknown) + ".")
    seeds = setting.get("seeds") or {}
    lines.append("- Training seeds: " + "; ".join(f"{name} {', '.join(map(str, values))}" for name, values in seeds.items()) + ".")
    decoding = setting.get("decoding") or {}
    if decoding.get("max_new_tokens") is not None:
        greedy = "greedy" if decoding.get("temperature") == 0 else f"temperature {decoding.get('temperature')}"
        lines.append(f"- Decoding: {greedy}, max_new_tokens {decoding['max_new_tokens']}, thinking {'on' if decoding.get('enable_thinking') else 'off'}.")
    if setting.get("checkpoint_selection_rule"):
        lines.append(f"- Checkpoint per run: {setting['checkpoint_selection_rule']}.")
    scorers = setting.get("scorers") or {}
    lines += [f"- Strict scorer (primary, every decision uses it): {scorers.get('strict', 'see loraexp.scoring.scorers')}.",
              f"- Lenient scorer (reported beside it, never instead): {scorers.get('lenient', 'see loraexp.scoring.scorers')}"
              + (f" (math-verify {scorers['math_verify']}; scorer code `{str(scorers.get('code_sha256'))[:12]}`)." if scorers.get("math_verify") else ".")]
    return lines


def accuracy_lines(comparison: dict, name: str) -> list[str]:
    entry = comparison["benchmarks"][name]
    accuracy = entry["accuracy"]
    lines = ["| condition | strict mean % | strict min-max % | Δ vs baseline (pts) | seed SD (pts) | lenient mean % | lenient Δ (pts) |",
             "|---|---|---|---|---|---|---|",
             f"| baseline | {_pts(accuracy['baseline']['strict'])} | - | - | - | {_pts(accuracy['baseline']['lenient'])} | - |"]
    for condition in comparison["conditions"]:
        strict, lenient = accuracy[condition]["strict"], accuracy[condition]["lenient"]
        lines.append(f"| {condition} | {_pts(strict['mean'])} | {_pts(strict['min'])}-{_pts(strict['max'])} | "
                     f"{accuracy[condition]['strict_delta_vs_baseline_points']:+.2f} | {_pts(strict['seed_sd'])} | {_pts(lenient['mean'])} | "
                     f"{accuracy[condition]['lenient_delta_vs_baseline_points']:+.2f} |")
    return lines + ["", *format_lines(entry), *comma_lines(entry)]


def format_lines(entry: dict) -> list[str]:
    """Where the gain over the untouched base is mostly answer format (strict gains much more than lenient)."""
    lines = []
    for condition, facts in entry["format_vs_skill"].items():
        if facts["mostly_format"]:
            lines.append(f"- {condition}: strict gains {facts['strict_delta_points']:+.2f} points over the baseline but lenient only "
                         f"{facts['lenient_delta_points']:+.2f}: most of the gain is answer format (what goes inside the box), not solving.")
    return lines


def comma_lines(entry: dict) -> list[str]:
    commas = entry["reference_commas"]
    if not commas["count"]:
        return []
    examples = ", ".join(f"`{example}`" for example in commas["examples"])
    return [f"- {commas['count']} of {commas['of']} references carry thousands commas ({examples}): the strict scorer marks `\\boxed{{2125}}` "
            "wrong against `2,125`; the lenient scorer accepts it."]


def pair_lines(comparison: dict, pair: dict) -> list[str]:
    """One comparison: per-seed table, the item-level test, the pooled McNemar (secondary), intervals, TOST, MDE, item vs seed noise."""
    a, b, level, decision = pair["a"], pair["b"], pair["item_level"], comparison["decision"]
    alpha, items, two_level = decision["alpha"], pair["intervals"]["item_only"], pair["intervals"]["two_level"]
    confidence = round(100 * (1 - alpha))
    lines = [f"#### {a} − {b}", "", rule_line(pair), "", verdict_line(pair, alpha), "",
             f"| seed | only {a} right | only {b} right | both right | both wrong | gap (pts) | exact McNemar |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['seed']} | {s['a_only']} | {s['b_only']} | {s['both_correct']} | {s['both_wrong']} | {_pts(s['delta'], True)} | {p_text(s['mcnemar_p'])} |"
              for s in pair["per_seed"]]
    sign_flip, t = level["sign_flip"], level["paired_t"]
    t_text = "n/a" if t["t"] is None else f"t = {t['t']:.2f}, df {t['df']}, {p_text(t['p'])}"
    seeds = ", ".join(f"{name} {count}" for name, count in level["seeds"].items())
    lines += [
        "",
        f"- Mean gap {a} − {b}: **{pair['gap_points']:+.2f} points** strict, {pair['lenient_gap_points']:+.2f} lenient.",
        f"- Primary test, item level ({level['n']} questions; each question's difference averaged over the seeds of each condition: {seeds}): "
        f"paired sign-flip permutation {p_text(sign_flip['p'])} ({sign_flip['method']}); paired t beside it: {t_text}. "
        f"Holm-adjusted over the {comparison['multiplicity']['size']} declared comparison × benchmark tests: {p_text(pair['p_adjusted'])}.",
        f"- Secondary: pooled McNemar {pair['pooled_mcnemar']['a_only']} vs {pair['pooled_mcnemar']['b_only']} discordant, {p_text(pair['pooled_mcnemar']['p'])}; "
        f"{pair['pooled_mcnemar']['assumption']}.",
        f"- {confidence}% intervals of the gap: item-only bootstrap {_interval(items)} covers {items['covers']}; two-level bootstrap "
        f"{_interval(two_level)} covers {two_level['covers']} ({two_level['samples']} resamples, seed {two_level['seed']}).",
        f"- Equivalence (TOST against ±{_pts(pair['equivalence']['band'])} points): {p_text(pair['equivalence']['p'])}, "
        f"{round(100 * pair['equivalence']['level'])}% interval [{_pts(pair['equivalence']['ci_low'], True)}, {_pts(pair['equivalence']['ci_high'], True)}].",
        f"- Noise on the scale of the mean gap: item SE {_pts(pair['item_se'])} points (question sampling); seed SE "
        + (f"{_pts(pair['seed_se'])} points (SD {_pts(pair['seed_sd_gap'])} of one seed's gap / √{len(pair['per_seed'])})." if pair["seed_se"] is not None
           else "n/a (one seed)."),
        f"- Minimum detectable effect of the item-level test (two-sided α={alpha}, power {decision['power']:.0%}, N={level['n']}, observed item SD "
        f"{level['sd']:.3f}): {_pts(pair['mde']['item_level'])} points; planned before training from the baseline accuracy alone "
        f"(one seed, errors assumed independent): {_pts(pair['mde']['planned'])} points.",
        "",
    ]
    return lines


def supports_lines(comparison: dict) -> list[str]:
    """What the numbers support and what they do not, chosen from the verdicts, the MDE and the seed noise."""
    lines = []
    for name, entry in comparison["benchmarks"].items():
        for pair in entry["comparisons"]:
            label = f"{name}: {pair['a']} − {pair['b']}"
            mde = pair["mde"]["item_level"]
            if pair["verdict"] == "difference":
                lines.append(f"- {label}: the data support a difference of {pair['gap_points']:+.2f} points on these questions under this protocol.")
            elif pair["verdict"] == "equivalent":
                lines.append(f"- {label}: the data support equivalence within ±{_pts(pair['equivalence']['band'])} points.")
            else:
                detectable = "below" if mde is not None and abs(pair["gap"]) < mde else "not below"
                lines.append(f"- {label}: neither a difference nor equivalence is shown; the observed |gap| {abs(pair['gap_points']):.2f} points is "
                             f"{detectable} the test's minimum detectable effect ({_pts(mde)} points), and \"no difference shown\" is not evidence of no difference.")
            if pair["seed_se"] is not None and pair["seed_se"] > pair["item_se"]:
                lines.append(f"  The seed moves the gap more (seed SE {_pts(pair['seed_se'])}) than question sampling does (item SE {_pts(pair['item_se'])}): "
                             "more seeds would narrow it more than more questions; only the two-level interval covers it.")
    benchmarks = list(comparison["benchmarks"])
    lines.append(f"- Benchmarks: {', '.join(benchmarks)} (primary: {comparison['primary_benchmark']}); nothing here speaks to other benchmarks, tasks or models.")
    lines.append("- Data, schedule, prompt, extraction and selection rule are the same for every run; the seeds change the LoRA initialisation "
                 "(and the data order when shuffled), so the seed spread says nothing about other hyperparameters.")
    return lines


def _fenced(text: str) -> list[str]:
    """A code block whose fence is longer than any backtick run inside the generation."""
    longest_run = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest_run + 1)
    return [fence + "text", text, fence]


def render_report(comparison: dict, figures: list[tuple[str, str]], examples: list[dict]) -> str:
    """The whole report.md: decisions first, then setting, numbers, figures (name, caption), examples, what it supports."""
    primary = comparison["benchmarks"][comparison["primary_benchmark"]]
    names = " vs ".join(comparison["conditions"])
    lines = [f"# {comparison['experiment']}: {names}", "", f"## Decision on the primary benchmark ({comparison['primary_benchmark']})", ""]
    for pair in primary["comparisons"]:
        lines += [f"- **{pair['a']} − {pair['b']}**: {rule_line(pair)} {verdict_line(pair, comparison['decision']['alpha'])}"]
    contract = f"experiment contract `{comparison['contract_sha256'][:12]}`, " if comparison.get("contract_sha256") else ""
    lines += ["", f"Statistics code `{comparison['statistics_code_sha256'][:12]}`, {contract}rule code `{comparison['rule']['code_sha256'][:12]}`.", "",
              "## Setting", "", *setting_lines(comparison), ""]
    if comparison.get("notes"):
        lines += ["## What was read", "", *[f"- {note}" for note in comparison["notes"]], ""]
    for name, entry in comparison["benchmarks"].items():
        role = "primary" if entry["primary"] else "reported beside the primary, not decided"
        lines += [f"## {name} ({role})", "", f"{entry['size']} questions ({entry.get('source')}, split {entry.get('split')}, {entry.get('format')} format); "
                  f"evaluation contract `{str(entry.get('eval_contract_sha256'))[:12]}`.", "", "### Accuracy", "", *accuracy_lines(comparison, name), "",
                  "### Comparisons", ""]
        for pair in entry["comparisons"]:
            lines += pair_lines(comparison, pair)
    lines += ["## Figures", ""]
    for name, caption in figures:
        lines += [f"### {name}", "", f"![{name}]({name}/{name}.png)", "", caption, ""]
    lines += ["## Disagreement examples (full generations)", ""]
    for example in examples:
        lines += [f"**{example['benchmark']}, seed {example['seed']}, {example['example_id']}: {example['correct_condition']} right, "
                  f"{example['wrong_condition']} wrong** (reference `{example['reference_answer']}`)", "", "> " + " ".join(example["question"].split()), "",
                  f"{example['correct_condition']} (extracted `{example['correct_extracted']}`):", "", *_fenced(example["correct_generation"]), "",
                  f"{example['wrong_condition']} (extracted `{example['wrong_extracted']}`):", "", *_fenced(example["wrong_generation"]), ""]
    lines += ["## What this result supports, and what it does not", "", *supports_lines(comparison), ""]
    return "\n".join(lines)


def p_text(p: float | None) -> str:
    """p-values as a reader should see them: p < 0.001 below the third decimal, never p = 0.000."""
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def captions(comparison: dict) -> dict[str, str]:
    """One caption per figure kind; each states what its bars and intervals mean."""
    seeds = comparison["setting"].get("seeds") or {}
    k = max((len(values) for values in seeds.values()), default=1)
    return {
        "fig_01_comparison": f"Accuracy per condition: mean over {k} seeds, min-max over seeds (the spread the seed causes, not a confidence "
                             "interval), Δ = mean minus the untouched baseline in points; strict scorer primary, lenient beside it. The title gives "
                             "each comparison's verdict (see the report for what each test covers).",
        "fig_02_costs": "Cost per run: adapter size (10^6 bytes), training, validation and evaluation tokens and dollars at the contract's prices.",
        "fig_03_accuracy": f"Accuracy per seed (hollow), mean (filled) and seed range (bar, min-max over {k} seeds, not a confidence interval); "
                           "dotted line: the untouched baseline.",
        "fig_04_disagreement": "Questions answered correctly by exactly one condition, per declared comparison (rows) and seed; exact McNemar per "
                               "seed. The pooled panel sums the discordant counts over seeds and treats them as independent (secondary; the "
                               "item-level test in the report is the primary one).",
        "fig_05_validation_nll": "Validation NLL (token-weighted over answer tokens) at each saved step; the star marks the selected step.",
        "fig_06_lr_selection": "LR selection: lowest validation NLL over the grid's validation steps for each learning rate (log x) and batch size, "
                               "on the reserved-seed slice; the circle marks the selected LR (tie -> smaller LR).",
        "fig_07_disagreement_examples": "For each declared comparison and direction, the first question (seed order, then benchmark order) one "
                                        "condition got right and the other wrong, with both full generations.",
        "fig_08_throughput": "Training throughput of each request shape (the same batches on a fresh client); labels give seconds per step.",
        "fig_09_size_accuracy": "Strict accuracy (mean over seeds, bar = seed min-max) against adapter size: LoRA parameters and adapter bytes, "
                                "measured from the exported adapters; the line joins the conditions no smaller adapter beats (the size/accuracy "
                                "frontier), per benchmark.",
    }
