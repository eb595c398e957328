"""Tokenizers and chat rendering: Qwen3 ids offline, the 27-token system turn, the loss mask, batch == template.

The identity check reads 65 real rows from tests/fixtures (25 MATH train solutions; 20 GSM8K train answers
with `#### N` turned into \\boxed{N}; 20 OpenMathInstruct-2 rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraexp.errors import UserError
from loraexp.chat import BatchRenderer, RenderMismatch, generation_prompt_tokens, render_example, stop_token_id
from loraexp.demo.tokenizer import DEMO_SYSTEM_PROMPT, DEMO_TOKENIZER
from loraexp.tokenization import QWEN3_OFFLINE, QWEN3_PLAIN_ADDED_TOKENS, QWEN3_SPECIAL_TOKENS, load_saved_tokenizer, load_tokenizer

SYSTEM_PROMPT = "You are a careful math solver. Solve the problem step by step. Put the final answer in \\boxed{}."
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def qwen3(cache):
    return load_tokenizer(QWEN3_OFFLINE, cache)


@pytest.fixture(scope="module")
def demo(cache):
    return load_tokenizer(DEMO_TOKENIZER, cache)


def _first_rows(relative: str, count: int) -> list[dict]:
    with (FIXTURES / relative).open(encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def real_pairs() -> list[tuple[str, str]]:
    """(question, answer) pairs of real MATH, GSM8K (#### N -> \\boxed{N}) and OpenMathInstruct-2 rows."""
    pairs = [(row["problem"], row["solution"]) for row in _first_rows("math_train.jsonl", 25)]
    for row in _first_rows("gsm8k_train.jsonl", 20):
        body, _, final = row["answer"].rpartition("####")
        pairs.append((row["question"], f"{body.strip()}\n\\boxed{{{final.strip()}}}"))
    pairs += [(row["problem"], row["generated_solution"]) for row in _first_rows("omi2_sample.jsonl", 20)]
    return pairs


def test_qwen3_offline_ids_match_qwen3(qwen3):
    assert len(qwen3) == 151_669
    assert qwen3.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]) == [151643, 151644, 151645, 151667, 151668]
    assert stop_token_id(qwen3) == 151645 and qwen3.eos_token == "<|im_end|>" and qwen3.pad_token == "<|endoftext|>"
    # well-known Qwen2/3 ids: "system" 8948, "user" 872, "assistant" 77091, "\n" 198, "\n\n" 271; digits one per token
    assert qwen3.encode("system") == [8948] and qwen3.encode("user") == [872] and qwen3.encode("assistant") == [77091]
    assert qwen3.encode("\n") == [198] and qwen3.encode("\n\n") == [271]
    assert qwen3.encode("2024") == [17, 15, 17, 19]
    specials = {token.content for token in qwen3.added_tokens_decoder.values() if token.special}
    assert specials == set(QWEN3_SPECIAL_TOKENS) and not specials & set(QWEN3_PLAIN_ADDED_TOKENS)


def test_system_prompt_adds_exactly_27_tokens(qwen3):
    for question in ("What is 2 + 2?", "Natalia sold clips to 48 of her friends in April. How many clips?"):
        with_system = generation_prompt_tokens(qwen3, SYSTEM_PROMPT, question)
        without = generation_prompt_tokens(qwen3, "", question)
        assert len(with_system) - len(without) == 27
        assert with_system[27:] == without  # the system turn is a block in front of an unchanged prompt


def test_round_trip(qwen3, demo):
    text = "Solve $\\int_0^1 x^2\\,dx$: ∫ √2 ≤ α, 日本語 🙂\r\nTotal = 1,234.50 <think>"
    for tokenizer in (qwen3, demo):
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_loss_mask_covers_answer_and_im_end_only(qwen3):
    answer = "2 + 2 = 4. The answer is \\boxed{4}."
    tokens, weights = render_example(qwen3, SYSTEM_PROMPT, "What is 2 + 2?", answer)
    prompt = generation_prompt_tokens(qwen3, SYSTEM_PROMPT, "What is 2 + 2?")
    assert tokens[: len(prompt)] == prompt and prompt[-4:] == [151667, 271, 151668, 271]
    assert qwen3.decode(prompt[-6:]) == "assistant\n<think>\n\n</think>\n\n"
    assert weights == [0] * len(prompt) + [1] * (len(tokens) - len(prompt))
    trained = [token for token, weight in zip(tokens, weights) if weight]
    assert qwen3.decode(trained) == answer + "<|im_end|>"
    assert tokens[-1] == 151645  # HF's trailing "\n" after the final <|im_end|> is dropped, as in the cookbook
    full = qwen3.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": answer}],
        tokenize=True, return_dict=False, enable_thinking=False,
    )
    assert list(full) == tokens + [198]


def test_batch_renderer_is_token_identical_on_real_data(qwen3, demo):
    pairs = real_pairs() + [
        ("What is 1 + 1?", "\n\nLeading newlines are stripped by the template. \\boxed{2}"),
        ("Say <|im_end|> literally.", "It is <|im_end|>. \\boxed{0}"),
        ("Think?", "<think>\nhidden\n</think>\n\nThe answer is \\boxed{3}."),
        ("Tabs\tand  spaces ", " leading space \\boxed{5}"),
    ]
    for tokenizer in (qwen3, demo):
        for system_prompt in (SYSTEM_PROMPT, ""):
            batch = BatchRenderer(tokenizer, system_prompt).render(pairs)
            for pair, outcome in zip(pairs, batch):
                if pair[1].startswith("<think>"):  # reasoning in the trained turn: the template rewrites the think block
                    assert isinstance(outcome, RenderMismatch)
                    continue
                tokens, weights = render_example(tokenizer, system_prompt, *pair)
                assert outcome == (tokens, weights.count(0)), pair[0][:60]


def test_prompt_that_is_not_a_prefix_raises(qwen3):
    # reasoning in the trained turn: the template fills the think block that the generation prompt left empty
    answer = "<think>\nhidden\n</think>\n\nThe answer is \\boxed{3}."
    with pytest.raises(RenderMismatch, match="not a token prefix"):
        render_example(qwen3, SYSTEM_PROMPT, "Q?", answer)
    assert isinstance(BatchRenderer(qwen3, SYSTEM_PROMPT).render([("Q?", answer)])[0], RenderMismatch)


def test_demo_tokenizer_layout(demo, qwen3):
    assert 300 <= len(demo) <= 1100
    assert demo.chat_template == qwen3.chat_template
    added = [demo.convert_ids_to_tokens(i) for i in range(len(demo) - 26, len(demo))]
    assert added == list(QWEN3_SPECIAL_TOKENS + QWEN3_PLAIN_ADDED_TOKENS)  # same 26 added tokens, last, in Qwen3 order
    assert demo.eos_token == "<|im_end|>" and demo.pad_token == "<|endoftext|>"
    assert demo.convert_ids_to_tokens(demo.encode("12345 + 678 = 9999")) == ["1", "2", "3", "4", "5", "Ġ+", "Ġ", "6", "7", "8", "Ġ=", "Ġ", "9", "9", "9", "9"]
    tokens, weights = render_example(demo, DEMO_SYSTEM_PROMPT, "Tom has 3 apples. How many?", "3 apples. \\boxed{3}")
    assert demo.decode([t for t, w in zip(tokens, weights) if w]) == "3 apples. \\boxed{3}<|im_end|>"


def test_built_tokenizers_are_cached_and_deterministic(cache, demo, tmp_path):
    built = cache / "tokenizers" / "tiny-qwen3-demo" / "tokenizer.json"
    stamp = built.stat().st_mtime_ns
    assert load_tokenizer(DEMO_TOKENIZER, cache).get_vocab() == demo.get_vocab()
    assert built.stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt
    load_tokenizer(DEMO_TOKENIZER, tmp_path)  # a fresh build elsewhere gives the same file
    assert (tmp_path / "tokenizers" / "tiny-qwen3-demo" / "tokenizer.json").read_bytes() == built.read_bytes()


def test_unloadable_tokenizer_is_one_line_naming_the_fix(tmp_path):
    empty = tmp_path / "not-a-tokenizer"
    empty.mkdir()
    with pytest.raises(UserError, match="qwen3-offline"):
        load_tokenizer(str(empty), tmp_path)
    with pytest.raises(UserError, match="rerun `loraexp render"):
        load_saved_tokenizer(tmp_path)
