"""The two evaluation scorers: strict (the frozen contract, primary) and lenient (reported beside it).

strict  = last `\\boxed{...}` by brace depth, no fallback, the contract's normalizations, decimal
          equality (`answers.py`); this is the number every decision uses.
lenient = strict, or math-verify's symbolic equivalence on the whole generation, or the last box
          read with the slack a human grader gives: thousands commas, `\\$`, `%`, trailing units or
          words (`18 \\text{ dollars}`, `18 dollars`). It can only add correct answers, never remove one.
`reference` is always the bare reference answer (for GSM8K: `answers.gsm8k_reference(answer)`).

`scorer_identity()` is what an evaluation records about the scorers: their rules in words and the
SHA-256 of the code that computes them (answers.py + this file), plus the math-verify version the
lenient scorer calls. Any change to what a scorer computes changes the identity, so figures refuses
to compare evaluations scored by different code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import re
import threading
from decimal import Decimal
from pathlib import Path
from typing import Callable

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from loraexp.scoring.answers import as_decimal, last_boxed, normalize, strict_equal

log = logging.getLogger(__name__)

MATH_VERIFY_TIMEOUT_SECONDS = 5  # per parse / verify call; sympy can hang on inputs like 9^{9^{9^9}}
STRICT_RULE = "last \\boxed{} by brace depth, no fallback; trim, strip outer $..$ \\(..\\) \\[..\\], drop \\left \\right, \\dfrac/\\tfrac -> \\frac, collapse whitespace; equal as text or as decimals"
LENIENT_RULE = "strict, or the last box equal once thousands commas, \\$, % and trailing units are dropped, or math-verify equivalence on the whole generation"
SCORER_CODE = ("answers.py", "scorers.py")  # the files whose bytes define what the scorers compute


@functools.cache
def scorer_identity() -> dict:
    """The scorers' rules, the SHA-256 of their code, and the math-verify version (recorded in every eval contract)."""
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in SCORER_CODE)).hexdigest()
    return {"strict": STRICT_RULE, "lenient": LENIENT_RULE, "code_sha256": code, "math_verify": importlib.metadata.version("math-verify")}


def score_strict(generated_text: str, reference: str) -> dict:
    """The frozen contract: last box, normalized, compared as text or as decimals. No fallback."""
    extracted = last_boxed(generated_text)
    normalized_prediction = normalize(extracted) if extracted is not None else None
    return {
        "extracted": extracted,
        "normalized_prediction": normalized_prediction,
        "normalized_reference": normalize(reference),
        "correct": extracted is not None and strict_equal(extracted, reference),
    }


def score_lenient(generated_text: str, reference: str) -> bool:
    """Strict, or math-verify equivalence, or the last box equal once commas, `\\$`, `%` and units are dropped."""
    if score_strict(generated_text, reference)["correct"]:
        return True
    boxed = last_boxed(generated_text)
    if boxed is not None and _same_number(boxed, reference):
        return True
    return math_verify_equal(generated_text, reference)


_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEADING_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)")
_TRAILING_UNITS = re.compile(r"^[\sA-Za-z.'/]*$")  # "dollars", " apples.", "per hour": words only


def lenient_number(answer: str) -> Decimal | None:
    """The number in an answer once `\\$`, `%`, thousands commas and trailing units are dropped, or None."""
    text = _WRAPPERS.sub(r" \1 ", normalize(answer))
    for noise in ("\\$", "$", "\\%", "%", "\\,", "\\!", "\\ ", "~"):
        text = text.replace(noise, " ")
    text = _THOUSANDS_COMMA.sub("", text).strip()
    match = _LEADING_NUMBER.match(text)
    if match is None or not _TRAILING_UNITS.match(text[match.end():]):
        return None
    return as_decimal(match.group(0))


def _same_number(prediction: str, reference: str) -> bool:
    left, right = lenient_number(prediction), lenient_number(reference)
    return left is not None and right is not None and left == right


def math_verify_equal(generated_text: str, reference: str) -> bool:
    """math-verify's verdict, False when it errors or runs past its timeout (never raises)."""

    def compare(timeout_seconds: int | None) -> bool:
        gold = parse(reference, parsing_timeout=timeout_seconds)
        prediction = parse(generated_text, parsing_timeout=timeout_seconds)
        return bool(gold and prediction and verify(gold, prediction, timeout_seconds=timeout_seconds))

    return _with_deadline(compare, MATH_VERIFY_TIMEOUT_SECONDS)


def _with_deadline(compare: Callable[[int | None], bool], seconds: int) -> bool:
    """Run `compare` under a deadline: math-verify's signal alarm on the main thread, a watched thread elsewhere.

    signal.alarm only works on the main thread, so a threaded caller (a concurrent eval) gets a
    daemon worker it stops waiting for after `seconds` (the worker is abandoned, the answer is False).
    """
    if threading.current_thread() is threading.main_thread():
        return _quietly(compare, seconds)
    verdict: list[bool] = []
    worker = threading.Thread(target=lambda: verdict.append(_quietly(compare, None)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        log.warning("math-verify ran past %ds on a worker thread; counted as not correct", seconds)
        return False
    return bool(verdict and verdict[0])


def _quietly(compare: Callable[[int | None], bool], timeout_seconds: int | None) -> bool:
    try:
        return compare(timeout_seconds)
    except (Exception, TimeoutException):  # TimeoutException is a BaseException; a sympy error is not ours to raise
        return False
