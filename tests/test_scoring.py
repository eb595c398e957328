"""Both scorers on a table of tricky generations: strict is the frozen contract, lenient only adds."""

from __future__ import annotations

import threading
import time

import pytest

from loraexp.scoring.scorers import _with_deadline, lenient_number, score_lenient, score_strict

# (generation, reference, strict extracted, strict correct, lenient correct)
TRICKY = [
    ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}", True, True),  # nested braces
    ("so \\boxed{\\frac{1}{2}}", "0.5", "\\frac{1}{2}", False, True),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt{2}}{2}", True, True),
    ("first \\boxed{3}, then \\boxed{5}", "5", "5", True, True),  # last box wins
    ("first \\boxed{3}, then \\boxed{5}", "3", "5", False, False),  # an earlier box never counts
    ("\\boxed 5", "5", None, False, True),  # no braces: strict has no box, math-verify reads it
    ("\\boxed{\\$18}", "18", "\\$18", False, True),
    ("\\boxed{1,000}", "1000", "1,000", False, True),
    ("\\boxed{1,000}", "100", "1,000", False, False),
    ("\\boxed{\\$1,000.00}", "1000", "\\$1,000.00", False, True),
    ("\\boxed{\\frac{3}{4}}", "0.75", "\\frac{3}{4}", False, True),
    ("\\boxed{50\\%}", "50", "50\\%", False, True),
    ("\\boxed{18 \\text{ dollars}}", "18", "18 \\text{ dollars}", False, True),
    ("\\boxed{18 dollars}", "18", "18 dollars", False, True),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", "\\dfrac{1}{2}", True, True),
    ("\\boxed{\\left(1, 2\\right)}", "(1, 2)", "\\left(1, 2\\right)", True, True),
    ("The answer is 18.", "18", None, False, True),  # no box: strict has no fallback
    ("nothing useful here", "18", None, False, False),
    ("\\boxed{}", "18", "", False, False),  # empty box
    ("$\\boxed{18}$", "18", "18", True, True),
    ("\\boxed{18.0}", "18", "18.0", True, True),
    ("\\boxed{-7}", "-7", "-7", True, True),
    ("\\boxed{7}", "-7", "7", False, False),
    ("\\boxed{17}", "18", "17", False, False),
    ("\\boxed{18}", "180", "18", False, False),
]


@pytest.mark.parametrize(("generation", "reference", "extracted", "strict", "lenient"), TRICKY)
def test_tricky_outputs(generation, reference, extracted, strict, lenient):
    scored = score_strict(generation, reference)
    assert scored["extracted"] == extracted
    assert scored["correct"] is strict
    assert score_lenient(generation, reference) is lenient


def test_strict_reports_normalized_forms():
    scored = score_strict("thus $\\boxed{ \\dfrac{1}{2} }$", " \\tfrac{1}{2}")
    assert scored == {
        "extracted": " \\dfrac{1}{2} ",
        "normalized_prediction": "\\frac{1}{2}",
        "normalized_reference": "\\frac{1}{2}",
        "correct": True,
    }


def test_lenient_never_drops_a_strict_correct_answer():
    for generation, reference, _, strict, _ in TRICKY:
        if strict:
            assert score_lenient(generation, reference)


@pytest.mark.parametrize(
    ("answer", "number"),
    [("\\$1,234", "1234"), ("12,345,678", "12345678"), ("50\\%", "50"), ("18 \\text{ dollars}", "18"),
     ("-3.5 km", "-3.5"), ("3/4", None), ("18 + 2", None), ("1,00", None), ("x", None)],
)
def test_lenient_number(answer, number):
    value = lenient_number(answer)
    assert (str(value) if value is not None else None) == number


def test_math_verify_errors_and_timeouts_become_false():
    def raises(timeout_seconds):
        raise RuntimeError("sympy blew up")

    assert _with_deadline(raises, 1) is False


def test_math_verify_off_the_main_thread_gives_up_at_the_deadline():
    verdicts = []

    def slow(timeout_seconds):
        assert timeout_seconds is None  # signal alarms are main-thread only; the watcher is the timeout
        time.sleep(3)
        return True

    started = time.monotonic()
    worker = threading.Thread(target=lambda: verdicts.append(_with_deadline(slow, 1)))
    worker.start()
    worker.join()
    assert verdicts == [False]
    assert time.monotonic() - started < 2.5


def test_lenient_scores_from_a_worker_thread():
    verdicts = []
    worker = threading.Thread(target=lambda: verdicts.append(score_lenient("\\boxed{\\frac{3}{4}}", "0.75")))
    worker.start()
    worker.join()
    assert verdicts == [True]


def test_the_scorer_identity_hashes_all_the_code_the_scorers_run():
    """A change to what a scorer computes must change the identity every eval contract records."""
    import hashlib
    import inspect
    from pathlib import Path

    from loraexp.scoring import answers, scorers
    from loraexp.stages.eval import eval_contract
    from loraexp.contracts import load_contract

    identity = scorers.scorer_identity()
    hashed = [Path(scorers.__file__).parent / name for name in scorers.SCORER_CODE]
    assert identity["code_sha256"] == hashlib.sha256(b"".join(path.read_bytes() for path in hashed)).hexdigest()
    # every loraexp function the two scorers call lives in a hashed file
    for function in (scorers.score_strict, scorers.score_lenient, scorers.lenient_number, scorers.math_verify_equal,
                     answers.last_boxed, answers.find_boxed, answers.normalize, answers.strict_equal, answers.as_decimal):
        assert Path(inspect.getsourcefile(function)).resolve() in {path.resolve() for path in hashed}, function.__name__
    assert identity["math_verify"]  # the lenient scorer's verdicts depend on math-verify's version too
    contract = load_contract(Path(__file__).resolve().parents[1] / "configs" / "demo.toml")
    assert eval_contract(contract, contract.benchmark_specs[0])["scorer"] == identity
