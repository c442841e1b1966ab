"""Evaluation of a causal LM on held-out prompts: answer loss, perplexity, generated answers.

The loss and perplexity cover the answer tokens only (the labels are ``-100`` elsewhere). For
classification data recast as prompts, the model also answers each prompt by greedy generation
of a few tokens, and the answer counts as right when its first word, normalised, is the label
word. A few prompts with their reference and generated answers are kept as examples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedquad.data.chat import IGNORE_INDEX
from fedquad.models.causal_lm import accepts_logits_to_keep, answer_positions
from fedquad.train.placement import model_device

MAX_NEW_TOKENS = 8
"""New tokens per generated answer: enough for a label word and the end-of-turn token."""
NUM_EXAMPLES = 4
"""Generated examples kept for the run's summary."""
EXAMPLE_CHARS = 300
"""Longer prompts are shortened in the examples."""


class PromptTestSet(dict[str, torch.Tensor]):
    """Held-out prompts: right-padded ``input_ids`` / ``attention_mask`` / ``labels`` for the
    answer loss, left-padded ``prompt_ids`` / ``prompt_mask`` for generation, and what scoring
    needs beside tensors: the tokenizer, each row's answer word (recast classification data;
    ``None`` otherwise) and the prompt and reference texts shown in examples.

    A dict of tensors like every other split, so executors pass it along unchanged;
    :func:`fedquad.train.local.evaluate` recognises it.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        tokenizer: Any,
        prompts: Sequence[str],
        references: Sequence[str],
        answers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(tensors)
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.references = list(references)
        self.answers = list(answers) if answers is not None else None
        self.examples: list[dict[str, str]] = []
        """Examples of the latest evaluation."""


def first_word(text: str) -> str:
    """The first word of ``text``, lower-cased, without punctuation ("" when there is none)."""
    words = re.findall(r"[^\W_]+", text.lower())
    return words[0] if words else ""


def answer_accuracy(generated: Sequence[str], answers: Sequence[str]) -> float:
    """Share of generated texts whose normalised first word is the answer's."""
    if len(generated) != len(answers):
        raise ValueError(f"{len(generated)} generated answers for {len(answers)} references")
    if not answers:
        return 0.0
    hits = sum(first_word(g) == first_word(a) for g, a in zip(generated, answers, strict=True))
    return hits / len(answers)


@torch.no_grad()
def evaluate_causal_lm(model: nn.Module, data: PromptTestSet, batch_size: int) -> dict[str, float]:
    """``loss`` (mean over answer tokens), ``perplexity`` and, with answer words, ``accuracy``
    of the generated answers; ``data.examples`` is set to a few generated answers."""
    model.eval()
    loss_sum, tokens = answer_loss(model, data, batch_size)
    mean = loss_sum / max(tokens, 1)
    result = {"loss": mean, "perplexity": _exp(mean)}
    n = len(data["input_ids"])
    rows = list(range(n)) if data.answers is not None else list(range(min(NUM_EXAMPLES, n)))
    generated = generate_answers(model, data, rows, batch_size)
    if data.answers is not None:
        result["accuracy"] = answer_accuracy(generated, [data.answers[i] for i in rows])
    data.examples = [
        {
            "prompt": _shorten(data.prompts[i]),
            "reference": data.references[i],
            "generated": text.strip(),
        }
        for i, text in zip(rows[:NUM_EXAMPLES], generated, strict=False)
    ]
    return result


def _exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _shorten(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def answer_loss(
    model: nn.Module, data: dict[str, torch.Tensor], batch_size: int
) -> tuple[float, int]:
    """Summed cross-entropy over the answer tokens, and their number.

    Rows are batched by length and cut to the batch's longest. Logits are computed only at the
    positions that predict an answer token of some row: the vocabulary projection of every
    prompt position would dominate the cost (49k outputs per token for SmolLM2).
    """
    lengths = data["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    keep_arg = accepts_logits_to_keep(model)
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(int(lengths[idx].max()), 1)
        ids, mask = data["input_ids"][idx, :width], data["attention_mask"][idx, :width]
        positions, chosen = answer_positions(data["labels"][idx, :width])
        if positions.numel() == 0:
            continue
        device = model_device(model)
        ids, mask, positions, chosen = (t.to(device) for t in (ids, mask, positions, chosen))
        if keep_arg:
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=positions).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, positions]
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            chosen.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        loss_sum += loss.item()
        tokens += int((chosen != IGNORE_INDEX).sum())
    return loss_sum, tokens


def generate_answers(
    model: nn.Module,
    data: PromptTestSet,
    rows: Sequence[int],
    batch_size: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy continuations of the prompts ``rows`` (decoded, special tokens dropped), in the
    order of ``rows``. Batches are cut to their longest prompt (the prompts are left-padded)."""
    tokenizer = data.tokenizer
    lengths = data["prompt_mask"].sum(dim=1)
    ordered = sorted(rows, key=lambda i: int(lengths[i]))
    texts: dict[int, str] = {}
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        idx = torch.tensor(chunk, dtype=torch.long)
        width = max(int(lengths[idx].max()), 1)
        ids, mask = data["prompt_ids"][idx, -width:], data["prompt_mask"][idx, -width:]
        ids, mask = ids.to(model_device(model)), mask.to(model_device(model))
        out = model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        decoded = tokenizer.batch_decode(out[:, width:].cpu(), skip_special_tokens=True)
        texts.update(zip(chunk, decoded, strict=True))
    return [texts[i] for i in rows]


def causal_lm_summary(metrics: Sequence[dict[str, Any]], test_data: Any) -> dict[str, Any]:
    """What a causal-LM run adds to its summary: the task, the final perplexity and the
    generated examples of the last evaluation (nothing for other tasks)."""
    if not isinstance(test_data, PromptTestSet):
        return {}
    last: dict[str, Any] = next((m for m in reversed(metrics) if "test_loss" in m), {})
    return {
        "task": "causal-lm",
        "final_test_perplexity": last.get("test_perplexity"),
        "examples": list(test_data.examples),
    }
