"""Text canonicalisation shared by the split, the demo generator and the contamination check.

Two strengths, one place:
- `canonical_problem`: NFKC, casefold, whitespace collapsed. Groups the train/validation split, so
  "Tom has 3 apples." and "tom  has 3 apples." never land on both sides.
- `canonical_for_contamination`: the same plus every punctuation character and all whitespace
  removed, so a benchmark question copied with other quotes, commas or full-width digits still matches.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import unicodedata

_WHITESPACE = re.compile(r"\s+")


@functools.cache
def _punctuation_table() -> dict[int, None]:
    """Every Unicode punctuation code point (categories Pc Pd Pe Pf Pi Po Ps), for one str.translate."""
    return dict.fromkeys(index for index in range(sys.maxunicode + 1) if unicodedata.category(chr(index)).startswith("P"))


def canonical_problem(text: str) -> str:
    """NFKC, casefold, whitespace collapsed to single spaces and trimmed."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def canonical_problem_sha(text: str) -> str:
    """SHA-256 of `canonical_problem(text)`: the split's group key."""
    return hashlib.sha256(canonical_problem(text).encode("utf-8")).hexdigest()


def contamination_words(text: str) -> list[str]:
    """Words after NFKC, casefold and punctuation removal: the unit of the n-gram check."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_punctuation_table()).split()


def canonical_for_contamination(text: str) -> str:
    """NFKC, casefold, punctuation and whitespace removed: the key of the exact-overlap check."""
    return "".join(contamination_words(text))


def first_phrase(text: str, phrases: tuple[str, ...]) -> str | None:
    """The first of `phrases` found in `text`, case-insensitively (casefold), or None."""
    folded = text.casefold()
    for phrase in phrases:
        if phrase.casefold() in folded:
            return phrase
    return None
