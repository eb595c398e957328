"""Chat rendering: one place that turns (system prompt, question, answer) into tokens + loss weights.

Rendering follows tinker_cookbook's `qwen3_disable_thinking` renderer: HF `apply_chat_template(enable_thinking=False)`
tokens, loss weight 0 on the prompt prefix (through the empty `<think>\\n\\n</think>\\n\\n` block of the generation
prompt) and 1 on the answer through `<|im_end|>`. HF's template writes one more "\\n" after the final `<|im_end|>`;
the cookbook's sequence ends at `<|im_end|>`, and so does ours: the "\\n" is dropped, never trained on (the
sampler stops at `<|im_end|>`, so the model never has to produce it).
"""

from __future__ import annotations

from typing import Sequence

from loraexp.errors import UserError
from loraexp.tokenization import STOP_TOKEN


class RenderMismatch(ValueError):
    """The generation prompt is not a token prefix of the full rendering, so the loss mask would be wrong."""


def stop_token_id(tokenizer) -> int:
    """The id of `<|im_end|>`, which ends every assistant turn (the sampler's stop token)."""
    token_id = tokenizer.convert_tokens_to_ids(STOP_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UserError(f"tokenizer has no {STOP_TOKEN} token; use a Qwen3-layout tokenizer (render.tokenizer)")
    return token_id


def chat_messages(system_prompt: str, question: str, answer: str | None = None) -> list[dict]:
    """[system?, user, assistant?]: an empty system prompt means no system turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def generation_prompt_tokens(tokenizer, system_prompt: str, question: str, enable_thinking: bool = False) -> list[int]:
    """What the sampler is given: the conversation up to `<|im_start|>assistant\\n` (+ the empty think block)."""
    return list(tokenizer.apply_chat_template(
        chat_messages(system_prompt, question), tokenize=True, return_dict=False,
        add_generation_prompt=True, enable_thinking=enable_thinking,
    ))


def _end_at_stop(tokens: list[int], stop_id: int, tokenizer) -> list[int]:
    """Cut HF's trailing "\\n" after the final `<|im_end|>` (the cookbook's sequence ends at the stop token)."""
    if stop_id not in tokens:
        raise RenderMismatch(f"the rendered conversation has no {STOP_TOKEN}")
    end = len(tokens) - tokens[::-1].index(stop_id)
    if tokenizer.decode(tokens[end:]).strip():
        raise RenderMismatch(f"the chat template writes text after the final {STOP_TOKEN}: {tokenizer.decode(tokens[end:])!r}")
    return tokens[:end]


def render_example(tokenizer, system_prompt: str, question: str, answer: str, enable_thinking: bool = False) -> tuple[list[int], list[int]]:
    """(tokens, weights) of one training conversation: weight 0 on the generation prompt, 1 on answer + `<|im_end|>`."""
    prompt = generation_prompt_tokens(tokenizer, system_prompt, question, enable_thinking)
    full = list(tokenizer.apply_chat_template(
        chat_messages(system_prompt, question, answer), tokenize=True, return_dict=False, enable_thinking=enable_thinking,
    ))
    tokens = _end_at_stop(full, stop_token_id(tokenizer), tokenizer)
    if tokens[: len(prompt)] != prompt or len(tokens) <= len(prompt):
        raise RenderMismatch(
            "the generation prompt is not a token prefix of the full rendering (the template or the tokenizer "
            f"changes the prompt when an answer follows); answer starts with {answer[:40]!r}"
        )
    return tokens, [0] * len(prompt) + [1] * (len(tokens) - len(prompt))


class BatchRenderer:
    """Renders many (question, answer) pairs token-identically to `render_example`, about 10x faster.

    The chat template is rendered once with placeholder contents; its literal text is cut where the
    tokenizer would cut it anyway (at added tokens such as `<|im_start|>`), so the fixed parts are
    tokenized once and only "user\\n"+question and "\\n\\n"+answer are tokenized per row, in Rust batches.
    Rows the template would rewrite (leading newlines, think tags, any added-token text in the
    content) go through `render_example` itself. tests/test_tokenization.py checks identity on real data.
    """

    QUESTION, ANSWER = "\ue000Q\ue000", "\ue001A\ue001"  # private-use code points: never in real text

    def __init__(self, tokenizer, system_prompt: str, enable_thinking: bool = False):
        self.tokenizer, self.system_prompt, self.enable_thinking = tokenizer, system_prompt, enable_thinking
        self.stop_id = stop_token_id(tokenizer)
        self.added_texts = tuple(sorted(tokenizer.get_added_vocab(), key=len, reverse=True))
        prompt_text = tokenizer.apply_chat_template(
            chat_messages(system_prompt, self.QUESTION), tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking,
        )
        full_text = tokenizer.apply_chat_template(
            chat_messages(system_prompt, self.QUESTION, self.ANSWER), tokenize=False, enable_thinking=enable_thinking,
        )
        head, after_question = prompt_text.split(self.QUESTION)
        if not full_text.startswith(prompt_text) or full_text.count(self.ANSWER) != 1:
            raise RenderMismatch("the chat template rewrites the generation prompt when an answer follows; BatchRenderer cannot be used")
        tail = full_text[len(prompt_text) :].split(self.ANSWER)[1]
        # head = [fixed ... last added token][open text]; mid = [close text][fixed added tokens ...][open text]
        self.head_ids, self.user_open = self._fixed_then_open(head)
        self.question_close, self.mid_ids, self.answer_open = self._close_fixed_open(after_question)
        self.answer_close, tail_ids, after_stop = self._close_fixed_open(tail)
        if after_stop.strip():
            raise RenderMismatch(f"the chat template writes text after the final {STOP_TOKEN}: {after_stop!r}")
        self.tail_ids = _end_at_stop(tail_ids, self.stop_id, tokenizer)
        self.answer_open_ids = self._encode([self.answer_open])[0]

    def _split_at_added(self, text: str) -> tuple[int, int]:
        """(start of the first, end of the last) added-token occurrence in `text`, or (-1, -1) if none."""
        present = [added for added in self.added_texts if added in text]
        if not present:
            return -1, -1
        return min(text.find(added) for added in present), max(text.rfind(added) + len(added) for added in present)

    def _fixed_then_open(self, text: str) -> tuple[list[int], str]:
        _, end = self._split_at_added(text)
        if end < 0:
            raise RenderMismatch("the chat template has no added token before the user content; BatchRenderer cannot be used")
        return self._encode([text[:end]])[0], text[end:]

    def _close_fixed_open(self, text: str) -> tuple[str, list[int], str]:
        start, end = self._split_at_added(text)
        if start < 0:
            raise RenderMismatch("the chat template has no added token after a content slot; BatchRenderer cannot be used")
        return text[:start], self._encode([text[start:end]])[0], text[end:]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and not getattr(self.tokenizer, "split_special_tokens", False):
            return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _needs_template(self, question: str, answer: str) -> bool:
        """Content the Qwen3 template rewrites (lstrip of "\\n", think tags) or that holds added-token text."""
        if answer[:1].isspace() or question.startswith("<tool_response>"):
            return True
        return any(added in question or added in answer for added in self.added_texts)

    def render(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int] | RenderMismatch]:
        """(tokens, prompt_tokens) per (question, answer) pair, or the RenderMismatch of a row that cannot be masked."""
        fast = [index for index, (question, answer) in enumerate(pairs) if not self._needs_template(question, answer)]
        questions = self._encode([self.user_open + pairs[index][0] + self.question_close for index in fast])
        answers = self._encode([self.answer_open + pairs[index][1] + self.answer_close for index in fast])
        results: list[tuple[list[int], int] | RenderMismatch | None] = [None] * len(pairs)
        opening = self.answer_open_ids
        for index, question_ids, answer_ids in zip(fast, questions, answers):
            if answer_ids[: len(opening)] != opening or len(answer_ids) == len(opening):
                results[index] = RenderMismatch("the generation prompt is not a token prefix of the full rendering")
                continue
            prompt_len = len(self.head_ids) + len(question_ids) + len(self.mid_ids) + len(opening)
            results[index] = (self.head_ids + question_ids + self.mid_ids + answer_ids + self.tail_ids, prompt_len)
        for index, result in enumerate(results):
            if result is None:
                try:
                    tokens, weights = render_example(self.tokenizer, self.system_prompt, *pairs[index], self.enable_thinking)
                    results[index] = (tokens, weights.count(0))
                except RenderMismatch as exc:
                    results[index] = exc
        return results  # type: ignore[return-value]
