"""Causal-LM instruction tuning: chat-template data, answer-only loss, frozen LM head, generation.

Everything runs on a tiny random Llama (4 blocks, hidden 64: LEGEND then has depth 2) and a
word-level tokenizer with a ChatML template, built in code; only the ``slow`` test loads SmolLM2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pytest
import torch

import fedquad
from fedquad.config import load_config
from fedquad.data.chat import IGNORE_INDEX, encode_pair, fit_lengths, tokenize_pairs
from fedquad.data.prompts import FOODS_QUESTION, load_prompt_data
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.methods_registry import METHODS
from fedquad.models.lora import federated_param_names
from fedquad.report.results import read_metrics
from fedquad.train.generate import (
    PromptTestSet,
    answer_accuracy,
    first_word,
    generate_answers,
)
from fedquad.train.local import evaluate, train_local
from fedquad.workbench import build_workbench, workload_profile

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
WORDS = ["user", "assistant", "system", "Review", "great", "other", "good", "bad", "hello", "hi"]


def tiny_tokenizer():
    """Word-level tokenizer with a ChatML chat template; unknown words map to <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    question = FOODS_QUESTION.replace("?", " ? ").replace(".", " . ").replace(":", " : ")
    words = dict.fromkeys([*WORDS, *question.replace("(", " ( ").replace(")", " ) ").split()])
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_tiny_decoder(dest: Path) -> Path:
    """A random 4-block Llama causal LM and its tokenizer, saved as a local model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory) -> Path:
    return write_tiny_decoder(tmp_path_factory.mktemp("tiny-decoder"))


def tiny_overrides(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.name='{model_dir}'",
        "model.task='causal-lm'",
        "model.max_length=48",
        "data.name='fine-foods-prompts'",
        "data.max_train_samples=160",
        "data.max_test_samples=24",
        "data.min_partition_size=5",
        "federation.rounds=2",
        "federation.num_devices=4",
        "federation.devices_per_round=2",
        "train.local_steps=2",
        "train.batch_size=4",
        "train.eval_batch_size=8",
        "profile.timed_steps=1",
        f"output_dir='{out}'",
        *extra,
    ]


def pairs(*rows: tuple[str, str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"prompt": [p for p, _ in rows], "response": [r for _, r in rows]}
    )


# --------------------------------------------------------------------------- data


def test_labels_cover_the_answer_tokens_only():
    tokenizer = tiny_tokenizer()
    data = pairs(("Review : good good", "great"), ("hello", "hi there"))
    rows = tokenize_pairs(data, tokenizer, max_length=24, with_prompts=True)
    end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    for row, answer in zip(rows, ["great", "hi <unk>"], strict=True):
        ids, mask, labels = row["input_ids"], row["attention_mask"], row["labels"]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding
        assert (ids[n:] == pad).all() and (labels[n:] == IGNORE_INDEX).all()
        kept = labels != IGNORE_INDEX
        first = int(kept.nonzero()[0])
        # the prompt (template header included) is masked, the whole answer is kept
        assert (labels[:first] == IGNORE_INDEX).all() and kept[first:n].all()
        assert torch.equal(labels[kept], ids[kept])
        assert tokenizer.decode(ids[first:n]).split()[:-1] == answer.split()
        assert int(ids[n - 1]) == end  # the answer ends the turn: the model learns to stop
        assert tokenizer.decode(ids[:first]).split()[-2:] == ["<|im_start|>", "assistant"]
        # the left-padded prompt is exactly the masked part, what generation continues from
        p = int(row["prompt_mask"].sum())
        assert p == first and torch.equal(row["prompt_ids"][-p:], ids[:first])
        assert not row["prompt_mask"][:-p].any()


def test_a_long_prompt_loses_its_middle_and_the_answer_is_kept():
    prompt, answer = list(range(100)), [900, 901, 902]
    cut_prompt, cut_answer = fit_lengths(prompt, answer, 20)
    assert cut_answer == answer
    assert cut_prompt == list(range(8)) + list(range(91, 100))  # header and question stay
    # an answer longer than the sequence keeps all but a quarter of it for the prompt
    cut_prompt, cut_answer = fit_lengths(prompt, list(range(900, 950)), 20)
    assert (len(cut_prompt), cut_answer) == (5, list(range(900, 915)))
    assert fit_lengths([1, 2], [3], 20) == ([1, 2], [3])

    tokenizer = tiny_tokenizer()
    long_review = "Review : " + "good " * 60
    ids, labels = encode_pair(tokenizer, long_review, "great", 32)
    assert len(ids) + len(labels) == 32
    assert tokenizer.decode(labels).split() == ["great", "<|im_end|>"]
    assert tokenizer.decode(ids).split()[-3:] == ["<|im_end|>", "<|im_start|>", "assistant"]


def test_prompt_data_from_jsonl_with_its_own_field_names(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_prompt_data(str(path), prompt_column="q", response_column="a", test_fraction=0.25)
    assert (len(data.train), len(data.test), data.has_labels) == (15, 5, False)
    assert set(data.train.column_names) == {"prompt", "response"}
    with pytest.raises(FedquadError, match="prompt field 'instruction' not found.*q, a"):
        load_prompt_data(str(path))


def test_builtin_prompt_datasets():
    chat = load_prompt_data("chatterbot", test_fraction=0.1)
    assert len(chat.train) + len(chat.test) == 2025 and not chat.has_labels
    foods = load_prompt_data("fine-foods-prompts", max_test_samples=50)
    assert foods.label_names == ["great", "other"] and len(foods.train) == 4000
    row = foods.test[0]
    assert row["prompt"].endswith(FOODS_QUESTION)
    assert row["response"] == foods.label_names[row["label"]]
    with pytest.raises(FedquadError, match="text_column = 'x' does not apply"):
        load_prompt_data("chatterbot", prompt_column="x")


def test_task_is_validated():
    with pytest.raises(FedquadError, match="model.task = 'seq2seq'.*classification, causal-lm"):
        load_config(None, ["model.task='seq2seq'"])


@pytest.mark.integration
def test_unlabelled_data_needs_an_iid_partition(decoder_dir, tmp_path):
    config = load_config(None, [*tiny_overrides(decoder_dir, tmp_path), "data.name='chatterbot'"])
    with pytest.raises(FedquadError, match="partition = 'dirichlet' needs labels.*use iid"):
        build_workbench(config)


# --------------------------------------------------------------------------- model


@pytest.mark.integration
def test_lm_head_is_neither_trained_nor_exchanged(decoder_dir, tmp_path):
    bench = build_workbench(load_config(None, tiny_overrides(decoder_dir, tmp_path)))
    assert bench.parts.head_names == [] and bench.parts.num_blocks == 4
    assert bench.model.peft_config["default"].modules_to_save is None
    names = federated_param_names(bench.model)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    head = bench.model.get_base_model().get_output_embeddings().weight
    before = head.detach().clone()
    result = train_local(
        bench.model,
        bench.parts,
        bench.structure,
        bench.device_data[0],
        DeviceConfig(depth=4),
        bench.config.train,
        seed=0,
    )
    assert set(result.tensors) == set(names)  # only LoRA goes up
    assert torch.equal(head, before) and not head.requires_grad
    assert math.isfinite(result.loss)


@pytest.mark.integration
def test_logits_at_answer_positions_give_the_same_loss_and_gradients(decoder_dir):
    from fedquad.models.causal_lm import keep_answer_logits
    from fedquad.models.lora import attach_lora, build_structure
    from fedquad.models.registry import describe_model, load_causal_lm

    base = load_causal_lm(str(decoder_dir))
    parts = describe_model(base)
    model = attach_lora(base, parts, build_structure(parts.num_blocks, rank=4))
    data = pairs(("Review : good", "great"), ("bad bad", "other"), ("hello", "hi hi hi"))
    batch = tokenize_pairs(data, tiny_tokenizer(), max_length=32).with_format("torch")[:]
    lora = [p for n, p in model.named_parameters() if ".lora_B." in n]
    for p in lora:
        p.requires_grad_(True)
        torch.nn.init.normal_(p, std=0.02)  # non-zero B, so every LoRA factor gets a gradient

    def loss_and_grads():
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        return out, [p.grad.clone() for p in lora]

    full, full_grads = loss_and_grads()
    handle = keep_answer_logits(model)
    assert handle is not None
    kept, kept_grads = loss_and_grads()
    handle.remove()
    seq = batch["input_ids"].shape[1]
    assert full.logits.shape[1] == seq and kept.logits.shape[1] < seq / 4
    assert kept.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    for a, b in zip(full_grads, kept_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.integration
def test_evaluation_reports_answer_loss_perplexity_and_accuracy(decoder_dir, tmp_path):
    bench = build_workbench(load_config(None, tiny_overrides(decoder_dir, tmp_path)))
    data = bench.test_data
    assert isinstance(data, PromptTestSet) and data.answers is not None
    result = evaluate(bench.model, data, batch_size=8)
    assert set(result) == {"loss", "perplexity", "accuracy"}
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    # the loss is the model's own mean over answer tokens
    with torch.no_grad():
        out = bench.model(
            input_ids=data["input_ids"],
            attention_mask=data["attention_mask"],
            labels=data["labels"],
        )
    assert result["loss"] == pytest.approx(out.loss.item(), rel=1e-4)
    assert 0 <= result["accuracy"] <= 1
    assert len(data.examples) == 4 and {"prompt", "reference", "generated"} <= set(data.examples[0])


# --------------------------------------------------------------------------- generation


def test_first_word_and_answer_accuracy_on_hand_made_cases():
    assert first_word("  Great! It was") == "great"
    assert first_word('"other".') == "other"
    assert first_word("great-tasting") == "great"
    assert first_word("...") == ""
    generated = ["great", "Other.", "This review is great", " GREAT\n", ""]
    answers = ["great", "other", "great", "other", "other"]
    assert answer_accuracy(generated, answers) == pytest.approx(2 / 5)
    assert answer_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        answer_accuracy(["great"], [])


class AnswersWith(torch.nn.Module):
    """Stands in for a causal LM: ``generate`` appends the given tokens to every prompt."""

    def __init__(self, tokens: list[int]) -> None:
        super().__init__()
        self.tokens = torch.tensor(tokens)
        self.widths: list[int] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        assert not attention_mask[:, -1].eq(0).any()  # left padding: every prompt ends last
        self.widths.append(input_ids.shape[1])
        new = self.tokens[:max_new_tokens].expand(len(input_ids), -1)
        return torch.cat([input_ids, new], dim=1)


def test_generated_answers_are_decoded_after_the_prompt_and_scored():
    tokenizer = tiny_tokenizer()
    data = pairs(("good", "great"), ("bad bad bad bad", "other"), ("good good", "great"))
    tok = tokenize_pairs(data, tokenizer, max_length=32, with_prompts=True)
    tensors = tok.with_format("torch")[:]
    test = PromptTestSet(tensors, tokenizer, data["prompt"], data["response"], data["response"])
    great = tokenizer.convert_tokens_to_ids(["great", "<|im_end|>", "<pad>"])
    model = AnswersWith(great)
    texts = generate_answers(model, test, [0, 1, 2], batch_size=2)
    assert [t.strip() for t in texts] == ["great", "great", "great"]  # special tokens dropped
    assert answer_accuracy(texts, test.answers) == pytest.approx(2 / 3)
    lengths = tensors["prompt_mask"].sum(1).tolist()
    # batched by prompt length, each batch cut to its longest prompt
    assert model.widths == [max(sorted(lengths)[:2]), sorted(lengths)[2]]


# --------------------------------------------------------------------------- runs


@pytest.mark.integration
def test_fedquad_run_on_a_tiny_decoder_reports_loss_perplexity_and_examples(decoder_dir, tmp_path):
    config = load_config(None, tiny_overrides(decoder_dir, tmp_path, "method='fedquad'"))
    result = fedquad.run(config)
    metrics = read_metrics(result.run_dir)
    assert [m["round"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["devices"]
        assert m["test_perplexity"] == pytest.approx(math.exp(m["test_loss"]))
        assert 0 <= m["test_accuracy"] <= 1
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["task"] == "causal-lm" and summary["label_names"] == ["great", "other"]
    assert summary["final_test_loss"] == metrics[-1]["test_loss"]
    assert summary["final_test_perplexity"] == metrics[-1]["test_perplexity"]
    assert summary["final_accuracy"] == metrics[-1]["test_accuracy"]
    assert len(summary["examples"]) == 4
    assert summary["examples"][0]["reference"] in ("great", "other")
    shares = summary["test_label_shares"]  # the answer words accuracy is scored against
    assert set(shares) <= {"great", "other"} and sum(shares.values()) == pytest.approx(1.0)
    from safetensors.torch import load_file

    adapter = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)  # no LM head in the adapter


@pytest.mark.integration
def test_chatterbot_run_has_loss_but_no_accuracy(decoder_dir, tmp_path):
    config = load_config(
        None,
        tiny_overrides(
            decoder_dir,
            tmp_path,
            "data.name='chatterbot'",
            "data.partition='iid'",
            "federation.rounds=1",
            "fleet.name='uniform'",
        ),
    )
    result = fedquad.run(config)
    (record,) = read_metrics(result.run_dir)
    assert "test_accuracy" not in record and math.isfinite(record["test_loss"])
    assert result.summary["final_accuracy"] is None
    assert result.summary["final_test_loss"] == record["test_loss"]
    assert result.summary["test_label_shares"] is None  # no answer words: no majority class
    assert len(result.summary["examples"]) == 4


@pytest.mark.integration
@pytest.mark.parametrize("method", [m for m in METHODS if m != "fedquad"])
def test_every_method_plans_and_trains_the_decoder(method, decoder_dir, tmp_path):
    config = load_config(
        None,
        tiny_overrides(
            decoder_dir,
            tmp_path,
            f"method='{method}'",
            "federation.rounds=1",
            "federation.num_devices=8",
            "federation.devices_per_round=4",
            "train.local_steps=1",
        ),
    )
    result = fedquad.run(config)
    (record,) = read_metrics(result.run_dir)
    assert record["devices"], method
    assert math.isfinite(record["test_loss"])


@pytest.mark.integration
def test_profile_covers_every_decoder_block(decoder_dir, tmp_path):
    bench = build_workbench(load_config(None, tiny_overrides(decoder_dir, tmp_path)))
    profile = workload_profile(bench).profile
    assert profile.num_blocks == 4 and profile.head_params == 0
    assert all(b > 0 for b in profile.saved_bytes) and all(n > 0 for n in profile.lora_params)


# --------------------------------------------------------------------------- SmolLM2


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_prompts_use_its_chat_template(tmp_path):
    config = load_config(
        None,
        [
            "model.name='smollm2-135m'",
            "model.task='causal-lm'",
            "model.max_length=96",
            "data.name='fine-foods-prompts'",
            "data.max_train_samples=40",
            "data.max_test_samples=4",
            "data.partition='iid'",
            "federation.num_devices=2",
            "federation.devices_per_round=2",
            f"output_dir='{tmp_path}'",
        ],
    )
    bench = build_workbench(config)
    assert bench.parts.num_blocks == 30 and bench.parts.head_names == []
    data = bench.test_data
    assert isinstance(data, PromptTestSet)
    row = data["input_ids"][0][data["attention_mask"][0].bool()]
    text = data.tokenizer.decode(row)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n" in text
    answer = data.tokenizer.decode(data["labels"][0][data["labels"][0] != IGNORE_INDEX])
    assert answer.split("<|im_end|>")[0] in ("great", "other")
    result = evaluate(bench.model, data, batch_size=4)
    assert math.isfinite(result["loss"]) and 0 <= result["accuracy"] <= 1
