"""A random tiny Qwen3 (small vocab) saved as an HF model dir, and fixture rows: test inputs for the local client."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch

VOCAB = 256
EOS_ID = 1


def make_tiny_qwen3(directory: Path, seed: int = 0) -> Path:
    """hidden 64, 2 layers, vocab 256, tied embeddings: ~0.1 M parameters, loads in milliseconds."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True,
                         eos_token_id=EOS_ID, pad_token_id=0, bos_token_id=None)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(directory)
    return directory


def fixture_rows(count: int, seed: int = 0, min_len: int = 12, max_len: int = 30) -> list[dict]:
    """Rendered-row shaped dicts of unequal lengths: weight 0 on a prompt prefix, 1 on the answer."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        length = int(rng.integers(min_len, max_len + 1))
        prompt = int(rng.integers(4, length - 3))
        tokens = rng.integers(2, VOCAB, length).tolist()
        rows.append({"row_id": f"r{index}", "problem_source": "gsm8k", "tokens": tokens, "weights": [0] * prompt + [1] * (length - prompt),
                     "prompt_tokens": prompt, "answer_tokens": length - prompt})
    return rows


class ManualClock:
    """An injectable UTC clock that moves only when told."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)
