"""Prompt/response pairs → fixed-length causal-LM inputs through the tokenizer's chat template.

A pair becomes the templated user turn followed by the assistant's answer (with the template's
end-of-turn tokens). ``labels`` hold the answer's token ids and ``-100`` on the prompt and the
padding, so the loss covers the answer only. Rows are right-padded to ``max_length``; the held-out
split also gets the prompt alone, left-padded, which is what generation continues from.
"""

from __future__ import annotations

import numbers
from typing import Any

import datasets

from fedquad.data.tokenize import _ensure_pad_token
from fedquad.errors import FedquadError

IGNORE_INDEX = -100
"""Label of a position the loss skips (PyTorch's and transformers' default)."""

MIN_LENGTH = 2
"""Tokens a causal-LM example needs: one of prompt and one of answer."""


def chat_texts(tokenizer: Any, prompt: str, response: str) -> tuple[str, str]:
    """The text the model reads before answering, and the answer text it is trained to write.

    With a chat template: the user turn plus the generation prompt, then the rest of the
    conversation with the assistant turn. Without one: the prompt on its own line, then the
    response and EOS.
    """
    eos = tokenizer.eos_token or ""
    if not getattr(tokenizer, "chat_template", None):
        return f"{prompt}\n", f"{response}{eos}"
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": response}], tokenize=False
    )
    if full.startswith(head):
        return head, full[len(head) :]
    # a template that renders earlier turns differently once an answer follows
    return head, f"{response}{eos}"


def fit_lengths(
    prompt: list[int], answer: list[int], max_length: int
) -> tuple[list[int], list[int]]:
    """Cut a pair to ``max_length`` tokens, the prompt first.

    The answer keeps up to ``max_length`` minus a quarter for the prompt. A prompt still too long
    loses its middle: the template's header (system turn) and the prompt's end (where a question
    usually is, followed by the generation prompt) stay.
    """
    reserve = min(len(prompt), max(1, max_length // 4))
    answer = answer[: max_length - reserve]
    budget = max_length - len(answer)
    if len(prompt) > budget:
        head = budget // 2
        prompt = prompt[:head] + prompt[len(prompt) - (budget - head) :]
    return prompt, answer


def encode_pair(
    tokenizer: Any, prompt: str, response: str, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids of the (cut) prompt and answer of one pair; together at most ``max_length``."""
    head, answer = chat_texts(tokenizer, prompt, response)
    # The template already holds the special tokens; encode each part on its own so the
    # prompt's ids are exactly what generation later starts from.
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return fit_lengths(prompt_ids, answer_ids, max_length)


def pad_row(
    prompt: list[int], answer: list[int], max_length: int, pad_id: int
) -> dict[str, list[int]]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (answer tokens only)."""
    ids = prompt + answer
    pad = max_length - len(ids)
    return {
        "input_ids": ids + [pad_id] * pad,
        "attention_mask": [1] * len(ids) + [0] * pad,
        "labels": [IGNORE_INDEX] * len(prompt) + answer + [IGNORE_INDEX] * pad,
    }


def tokenize_pairs(
    dataset: datasets.Dataset, tokenizer: Any, max_length: int, with_prompts: bool = False
) -> datasets.Dataset:
    """Replace ``prompt`` / ``response`` by fixed-length model inputs (torch format).

    ``with_prompts`` adds ``prompt_ids`` / ``prompt_mask``: the cut prompt left-padded to
    ``max_length``, for generation. Other columns (e.g. ``label``) are kept.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
        raise FedquadError(f"max_length={max_length!r} is invalid; use an integer >= {MIN_LENGTH}")
    if max_length < MIN_LENGTH:
        raise FedquadError(
            f"model.max_length = {max_length} is too short for causal-lm: "
            f"use at least {MIN_LENGTH} (prompt and answer)"
        )
    _ensure_pad_token(tokenizer)
    pad_id = int(tokenizer.pad_token_id)
    length = int(max_length)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {}
        for prompt, response in zip(batch["prompt"], batch["response"], strict=True):
            p, a = encode_pair(tokenizer, prompt, response, length)
            row = pad_row(p, a, length, pad_id)
            if with_prompts:
                pad = length - len(p)
                row["prompt_ids"] = [pad_id] * pad + p
                row["prompt_mask"] = [0] * pad + [1] * len(p)
            for key, value in row.items():
                out.setdefault(key, []).append(value)
        return out

    tokenized = dataset.map(
        encode, batched=True, remove_columns=["prompt", "response"], desc="Tokenizing"
    )
    tokenized.set_format("torch")
    return tokenized
