"""The committed real-data fixtures are the files their README describes (rows, fields, digests)."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from datakit import FIXTURES

DIGESTS = {
    "gsm8k_train.jsonl": ("8a91faf84496c11e0a67d192598c9a2b44c2f14df4cca05420ebb98439704c03", 300, {"question", "answer"}),
    "gsm8k_test.jsonl": ("84cb352b080d5aec98bdfbc611b3966ca2b6fb39a16d9aade9ffbe47ae5fa193", 250, {"question", "answer"}),
    "math_train.jsonl": ("58eea2437ce838c44bd84f788cf9a4d52daae1438f9762ef2ddec600cf740758", 57, {"problem", "solution", "answer", "subject", "level", "unique_id"}),
    "math_test.jsonl": ("cf21aa823914a6bca7611918c1d6a55bd8c266ece8ef879e421332f571c3c0db", 40, {"problem", "solution", "answer", "subject", "level", "unique_id"}),
    "omi2_sample.jsonl": ("511293b4821c7a44119b0116d6ea2dbd3d5b8b42549b6301b6fb60f27f572d45", 60, {"problem", "generated_solution", "expected_answer", "problem_source"}),
}


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_fixture_is_the_documented_cut(name):
    digest, rows, fields = DIGESTS[name]
    data = (FIXTURES / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    parsed = [orjson.loads(line) for line in data.splitlines()]
    assert len(parsed) == rows and all(set(row) == fields for row in parsed)
    assert name in (FIXTURES / "README.md").read_text(encoding="utf-8")
