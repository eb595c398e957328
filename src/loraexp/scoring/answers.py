"""The frozen answer contract: last `\\boxed{...}` by brace depth, the listed normalizations, decimal equality.

Used by the build-data gate, the audit and the strict evaluation scorer, so training data and the
benchmark are judged by the same rule.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

BOXED = "\\boxed"


def find_boxed(text: str) -> list[str]:
    """Contents of every well-formed `\\boxed{...}` in `text`, in order, read with brace-depth parsing.

    `\\boxed 5` (no braces) and an unclosed `\\boxed{` are not boxes: the contract has no fallback.
    """
    contents = []
    start = text.find(BOXED)
    while start != -1:
        cursor = start + len(BOXED)
        if cursor < len(text) and text[cursor] == "{":
            depth, end = 0, None
            for index in range(cursor, len(text)):
                char = text[index]
                if char == "{" and text[index - 1] != "\\":
                    depth += 1
                elif char == "}" and text[index - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        end = index
                        break
            if end is not None:
                contents.append(text[cursor + 1 : end])
                start = text.find(BOXED, end)
                continue
        start = text.find(BOXED, cursor)
    return contents


def last_boxed(text: str) -> str | None:
    """The last well-formed box's content, or None when there is none."""
    boxes = find_boxed(text)
    return boxes[-1] if boxes else None


_OUTER_DELIMITERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def normalize(answer: str) -> str:
    """Trim, strip outer $..$ / \\(..\\) / \\[..\\], drop \\left \\right, \\dfrac/\\tfrac -> \\frac, collapse spaces."""
    text = answer.strip()
    changed = True
    while changed:
        changed = False
        for left, right in _OUTER_DELIMITERS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : len(text) - len(right)].strip()
                changed = True
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+", " ", text).strip()


def as_decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def strict_equal(prediction: str, reference: str) -> bool:
    """Equal after normalization, or numerically equal when both sides parse as decimals."""
    left, right = normalize(prediction), normalize(reference)
    if left == right:
        return True
    left_num, right_num = as_decimal(left), as_decimal(right)
    return left_num is not None and right_num is not None and left_num == right_num


def gsm8k_reference(answer_field: str) -> str | None:
    """GSM8K's reference answer: the text after the last `####`, or None when there is none."""
    if "####" not in answer_field:
        return None
    reference = answer_field.rsplit("####", 1)[1].strip()
    return reference or None
