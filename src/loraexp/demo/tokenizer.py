"""The offline demo's tokenizer "loraexp/tiny-qwen3-demo": a byte-level BPE with Qwen3's layout, built offline.

A few hundred ids (digits one per token, Qwen2's pre-tokenizer), then Qwen3's 26 added tokens and the
Qwen3 chat template, trained deterministically on the demo generator's text and cached under
`<cache_root>/tokenizers/tiny-qwen3-demo/` (rebuilt when its recipe changes).
"""

from __future__ import annotations

from pathlib import Path

from loraexp.demo.data import clean_examples
from loraexp.tokenization import (
    cached_build,
    chat_template_text,
    qwen_pipeline,
    sha256_bytes,
    wrap_with_qwen3_layout,
)

DEMO_TOKENIZER = "loraexp/tiny-qwen3-demo"
DEMO_BPE_VOCAB = 768  # 256 byte symbols + up to 512 merges (fewer if the corpus runs out of pairs) + 26 added tokens
DEMO_SYSTEM_PROMPT = "You are a careful math solver. Solve the problem step by step. Put the final answer in \\boxed{}."
DEMO_TOKENIZER_CORPUS_ROWS = 4000  # clean demo examples the demo BPE is trained on
DEMO_TOKENIZER_CORPUS_SEED = 12345  # fixed, distinct from the data and benchmark seeds


def demo_tokenizer_dir(cache_root: Path) -> Path:
    """The saved demo tokenizer, built on first use."""
    return cached_build(cache_root / "tokenizers" / "tiny-qwen3-demo", _demo_recipe(), _build_demo_tokenizer)


def _demo_corpus() -> list[str]:
    """The text the demo BPE is trained on: the demo generator's clean examples, the fixed prompt words, role names."""
    # the template's words and the demo system prompt appear once per example, as they do in rendered rows
    fixed = ("system\n", "user\n", "assistant\n", "\n\n", DEMO_SYSTEM_PROMPT)
    texts = []
    for question, solution in clean_examples(DEMO_TOKENIZER_CORPUS_ROWS, DEMO_TOKENIZER_CORPUS_SEED):
        texts.extend((*fixed, question, solution))
    return texts


def _demo_recipe() -> dict:
    corpus = "\x00".join(_demo_corpus()).encode("utf-8")
    return {
        "recipe": "tiny-qwen3-demo/1",
        "bpe_vocab": DEMO_BPE_VOCAB,
        "corpus_sha256": sha256_bytes(corpus),
        "chat_template_sha256": sha256_bytes(chat_template_text().encode("utf-8")),
    }


def _build_demo_tokenizer():
    """A byte-level BPE with DEMO_BPE_VOCAB ids trained on the demo corpus, then Qwen3's added tokens and template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False, ignore_merges=False))
    qwen_pipeline(tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=DEMO_BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_demo_corpus(), trainer=trainer)
    return wrap_with_qwen3_layout(tokenizer)
