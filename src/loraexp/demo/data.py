"""Deterministic offline stand-ins for OpenMathInstruct-2 and GSM8K: one-step +/- word problems.

Everything is short (problem + solution under ~40 words) so the demo's tiny model can learn it on a
CPU. The problem space is split in two by a hash of the canonical question
(`canonical_for_contamination`): one in eight questions is reserved for the benchmark, the rest feed
the training rows and `clean_examples`. The demo benchmark is therefore disjoint from every training
question for any n and any seed, and the demo's contamination check passes by construction.

`generate_omi2_rows` plants, at fixed positions (every 25th row, cycling through `PLANTED_KINDS`, so
every kind is present once n >= 275), rows for each build-data rejection reason and rows that pass the
gate but that the audit must flag. The planted phrases are those of configs/demo.toml.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from loraexp.data.text import canonical_for_contamination

NAMES = ("Tom", "Ana", "Lena", "Omar", "Maya", "Ben", "Kofi", "Sara", "Ivan", "Mei", "Raj", "Zoe")
OBJECTS = ("apples", "books", "marbles", "stickers", "pencils", "coins", "cards", "shells", "eggs", "stamps")

# (question template, operation); {name} {obj} {a} {b} are filled in, {c} is the answer
QUESTIONS = {
    "gsm8k": (
        ("{name} has {a} {obj}. {name} buys {b} more. How many {obj} does {name} have now?", "+"),
        ("{name} picks {a} {obj} in the morning and {b} in the afternoon. How many {obj} in all?", "+"),
        ("{name} has {a} {obj} and gives {b} to a friend. How many {obj} are left?", "-"),
        ("There are {a} {obj} in a box. {name} takes out {b}. How many {obj} remain in the box?", "-"),
    ),
    "augmented_gsm8k": (
        ("A shop sells {a} {obj} on Monday and {b} on Tuesday. How many {obj} does it sell?", "+"),
        ("A jar holds {a} {obj}. {name} uses {b} of them. How many {obj} are still in the jar?", "-"),
    ),
    "math": (
        ("Compute ${a} + {b}$.", "+"),
        ("What is ${a} - {b}$?", "-"),
        ("Find the value of ${a} + {b}$.", "+"),
        ("Evaluate ${a} - {b}$.", "-"),
    ),
    "augmented_math": (
        ("Calculate ${a} + {b}$ and simplify.", "+"),
        ("Simplify the expression ${a} - {b}$.", "-"),
    ),
}
WORD_SOLUTIONS = {
    "+": (
        "{name} starts with {a} {obj} and gets {b} more, so {a} + {b} = {c}.",
        "{a} + {b} = {c}, so the answer is {c}.",
        "Adding {b} to {a} gives {c} {obj}.",
    ),
    "-": (
        "{name} starts with {a} {obj} and loses {b}, so {a} - {b} = {c}.",
        "{a} - {b} = {c}, so the answer is {c}.",
        "Taking {b} away from {a} leaves {c} {obj}.",
    ),
}
SYMBOL_SOLUTIONS = {
    "+": ("We add: ${a} + {b} = {c}$.", "${a} + {b} = {c}$.", "Adding {b} to {a} gives ${c}$."),
    "-": ("We subtract: ${a} - {b} = {c}$.", "${a} - {b} = {c}$.", "Subtracting {b} from {a} gives ${c}$."),
}
SOURCE_WEIGHTS = {"gsm8k": 0.45, "math": 0.35, "augmented_gsm8k": 0.10, "augmented_math": 0.10}
PLANTED_KINDS = (
    "boxed_mismatch", "no_boxed", "suspicious_phrase", "prompt_debris", "missing_field", "empty_field",
    "non_string_field", "exact_duplicate",
    # these three pass the gate; the audit must flag them
    "several_boxes", "fractional_count", "text_after_box",
)
ORIGINAL_SOURCES = ("gsm8k", "math")  # the sources build-data keeps; planted rows use them
PLANT_EVERY = 25  # one planted row every 25 rows -> 4% of the demo data
REPEAT_SHARE = 0.15  # share of clean rows that re-solve an earlier problem with another phrasing
BENCHMARK_SHARE = 8  # one question in 8 (by hash) is reserved for the benchmark


@dataclass(frozen=True)
class Problem:
    source: str
    question: str
    op: str
    fill: dict

    @property
    def answer(self) -> int:
        return self.fill["c"]

    def solution(self, variant: int) -> str:
        """Solution phrasing number `variant`, ending with the boxed answer."""
        table = WORD_SOLUTIONS if self.source.endswith("gsm8k") else SYMBOL_SOLUTIONS
        return table[self.op][variant].format(**self.fill) + f" \\boxed{{{self.answer}}}"


def reserved_for_benchmark(question: str) -> bool:
    """True for the 1-in-8 slice of the problem space that only the demo benchmark may use."""
    digest = hashlib.sha256(canonical_for_contamination(question).encode("utf-8")).digest()
    return digest[0] % BENCHMARK_SHARE == 0


def _draw(rng: random.Random, source: str) -> Problem:
    template, op = rng.choice(QUESTIONS[source])
    a = rng.randint(0, 99)
    # word problems never go negative; "Compute $12 - 40$" may
    b = rng.randint(0, a) if op == "-" and source.endswith("gsm8k") else rng.randint(0, 99)
    fill = {"name": rng.choice(NAMES), "obj": rng.choice(OBJECTS), "a": a, "b": b, "c": a + b if op == "+" else a - b}
    return Problem(source, template.format(**fill), op, fill)


def _draw_training(rng: random.Random, source: str) -> Problem:
    while True:
        problem = _draw(rng, source)
        if not reserved_for_benchmark(problem.question):
            return problem


def _row(problem: Problem, solution: str, expected: object = None) -> dict:
    return {
        "problem": problem.question,
        "generated_solution": solution,
        "expected_answer": str(problem.answer) if expected is None else expected,
        "problem_source": problem.source,
    }


def _planted(kind: str, rng: random.Random, earlier: list[dict]) -> dict:
    """One row that the gate must reject (first eight kinds) or the audit must flag (last three)."""
    if kind == "exact_duplicate" and earlier:
        return dict(rng.choice(earlier))
    source = rng.choice(ORIGINAL_SOURCES)
    problem = _draw_training(rng, source)
    c = problem.answer
    sentence = problem.solution(0).rsplit(" \\boxed", 1)[0]
    if kind == "boxed_mismatch":
        return _row(problem, f"{sentence} \\boxed{{{c + 1}}}")
    if kind == "no_boxed":
        return _row(problem, f"{sentence} The answer is {c}.")
    if kind == "suspicious_phrase":
        return _row(problem, f"{sentence} There seems to be a mistake in the problem. \\boxed{{{c}}}")
    if kind == "prompt_debris":
        return {**_row(problem, problem.solution(0)), "problem": f"New problem:\n{problem.question}"}
    if kind == "missing_field":
        row = _row(problem, problem.solution(0))
        del row[rng.choice(("problem", "generated_solution", "expected_answer"))]
        return row
    if kind == "empty_field":
        return {**_row(problem, problem.solution(0)), rng.choice(("problem", "generated_solution")): "  "}
    if kind == "non_string_field":
        return _row(problem, problem.solution(0), expected=c)
    if kind == "several_boxes":
        return _row(problem, f"First \\boxed{{{problem.fill['a']}}}, then {sentence} \\boxed{{{c}}}")
    if kind == "text_after_box":
        return _row(problem, f"{problem.solution(0)} Then we check it by counting all of them again and")
    return _fractional_row(rng)


def _fractional_row(rng: random.Random) -> dict:
    """A gsm8k 'how many' problem whose answer is not a whole number (audit: fractional count)."""
    while True:
        name, obj, a = rng.choice(NAMES), rng.choice(OBJECTS), 2 * rng.randint(0, 49) + 1
        question = f"{name} shares {a} {obj} equally between 2 friends. How many {obj} does each friend get?"
        if not reserved_for_benchmark(question):
            break
    half = f"{a / 2:g}"
    solution = f"Each friend gets {a} / 2 = {half} {obj}. \\boxed{{{half}}}"
    return {"problem": question, "generated_solution": solution, "expected_answer": half, "problem_source": "gsm8k"}


def generate_omi2_rows(n: int, seed: int) -> list[dict]:
    """`n` OpenMathInstruct-2-shaped rows (problem, generated_solution, expected_answer, problem_source)."""
    rng = random.Random(f"omi2-{seed}")
    sources, weights = list(SOURCE_WEIGHTS), list(SOURCE_WEIGHTS.values())
    rows: list[dict] = []
    clean: list[dict] = []
    solved: list[tuple[Problem, set[int]]] = []
    for index in range(n):
        if index % PLANT_EVERY == PLANT_EVERY // 2:
            kind = PLANTED_KINDS[(index // PLANT_EVERY) % len(PLANTED_KINDS)]
            rows.append(_planted(kind, rng, clean))
            continue
        if solved and rng.random() < REPEAT_SHARE:
            problem, used = rng.choice(solved)
            unused = [v for v in range(3) if v not in used]
            if unused:
                variant = rng.choice(unused)
                used.add(variant)
                rows.append(_row(problem, problem.solution(variant)))
                continue
        problem = _draw_training(rng, rng.choices(sources, weights)[0])
        variant = rng.randrange(3)
        solved.append((problem, {variant}))
        rows.append(_row(problem, problem.solution(variant)))
        if problem.source in ORIGINAL_SOURCES:  # a planted duplicate must reach the gate, not the source filter
            clean.append(rows[-1])
    return rows


def generate_benchmark_rows(n: int, seed: int) -> list[dict]:
    """`n` GSM8K-shaped rows (question, answer ending in `#### N`), disjoint from all training questions."""
    rows = []
    for problem in _benchmark_problems(random.Random(f"gsm8k-test-{seed}"), "gsm8k", n):
        a, b, c, op = problem.fill["a"], problem.fill["b"], problem.answer, problem.op
        rows.append({"question": problem.question, "answer": f"{a} {op} {b} = <<{a}{op}{b}={c}>>{c}\n#### {c}"})
    return rows


def _benchmark_problems(rng: random.Random, source: str, n: int) -> list:
    """`n` distinct problems of `source` phrasings whose questions no training row can use (`reserved_for_benchmark`)."""
    problems, seen = [], set()
    while len(problems) < n:
        problem = _draw(rng, source)
        key = canonical_for_contamination(problem.question)
        if key not in seen and reserved_for_benchmark(problem.question):
            seen.add(key)
            problems.append(problem)
    return problems


def clean_examples(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (question, solution ending in \\boxed{N}) pairs like the gsm8k-source demo rows; never a benchmark question."""
    rng = random.Random(f"clean-{seed}")
    pairs = []
    for _ in range(n):
        problem = _draw_training(rng, "gsm8k")
        pairs.append((problem.question, problem.solution(rng.randrange(3))))
    return pairs


def generate_math_benchmark_rows(n: int, seed: int) -> list[dict]:
    """`n` MATH-500-shaped rows (problem, solution, answer): word problems in the demo's `augmented_gsm8k` phrasings, which
    neither the demo base nor the demo's training rows use, disjoint from every training question; the second benchmark
    family of the offline follow-up demo (its reference is the answer field)."""
    return [{"problem": problem.question, "solution": problem.solution(0), "answer": str(problem.answer)}
            for problem in _benchmark_problems(random.Random(f"math-test-{seed}"), "augmented_gsm8k", n)]
