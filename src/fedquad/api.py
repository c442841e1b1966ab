"""The public Python API: ``fedquad.run(config) -> RunResult``. The CLI is a thin layer over it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedquad.config import ExperimentConfig
from fedquad.data import load_text_classification, partition_dataset, tokenize_dataset
from fedquad.engines.local import LocalExecutor, TensorData
from fedquad.models.lora import attach_lora, build_structure, get_state, load_state
from fedquad.models.registry import describe_model, load_sequence_classifier, load_tokenizer
from fedquad.quiet import quiet_libraries
from fedquad.report.progress import RoundProgress
from fedquad.report.results import RunWriter, default_run_name, new_run_dir
from fedquad.server.rounds import RoundSettings, best_accuracy, median_step_seconds, run_rounds


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_tensors(dataset: Any) -> TensorData:
    """Tokenized dataset → the dict of tensors the trainer batches from."""
    # One materialisation into plain tensors: a dataset column is a lazy view that decodes
    # from Arrow on every slice.
    rows = dataset.with_format("torch", columns=["input_ids", "attention_mask", "label"])[:]
    return {
        "input_ids": rows["input_ids"],
        "attention_mask": rows["attention_mask"],
        "labels": rows["label"],
    }


def run(config: ExperimentConfig, *, progress: bool = False) -> RunResult:
    """Run one federated fine-tuning experiment and write its results directory."""
    config.validate()
    quiet_libraries()
    seed_everything(config.seed)
    dc = config.data
    data = load_text_classification(
        dc.name,
        text_column=dc.text_column,
        label_column=dc.label_column,
        test_fraction=dc.test_fraction,
        seed=config.seed,
        max_train_samples=dc.max_train_samples,
        max_test_samples=dc.max_test_samples,
    )
    tokenizer = load_tokenizer(config.model.name)
    model = load_sequence_classifier(config.model.name, data.num_labels)
    parts = describe_model(model)
    lc = config.lora
    structure = build_structure(parts.num_blocks, lc.depth, lc.rank, lc.ranks, lc.alpha, lc.dropout)
    peft_model = attach_lora(model, parts, structure)
    train_tok = tokenize_dataset(data.train, tokenizer, config.model.max_length)
    partitions = partition_dataset(
        train_tok,
        config.federation.num_devices,
        dc.partition,
        alpha=dc.alpha,
        shards_per_partition=dc.shards_per_partition,
        min_partition_size=dc.min_partition_size,
        seed=config.seed,
    )
    executor = LocalExecutor(
        peft_model,
        parts,
        structure,
        [to_tensors(p) for p in partitions],
        to_tensors(tokenize_dataset(data.test, tokenizer, config.model.max_length)),
        config.train,
        config.quant,
    )
    name = config.run_name or default_run_name(
        config.method, dc.name, config.model.name, config.seed
    )
    writer = RunWriter(new_run_dir(config.output_dir, name))
    writer.write_config(config.to_toml())
    fed = config.federation
    settings = RoundSettings(
        method=config.method,
        rounds=fed.rounds,
        devices_per_round=fed.devices_per_round,
        eval_every=fed.eval_every,
        weighting=fed.weighting,
        seed=config.seed,
        quant=config.quant,
    )
    with RoundProgress(fed.rounds, enabled=progress) as bar:

        def on_round(record: dict[str, Any]) -> None:
            writer.append_metrics(record)
            bar.update(record)

        outcome = run_rounds(settings, structure, executor, get_state(peft_model), on_round)
    load_state(peft_model, outcome.state)
    peft_model.save_pretrained(str(writer.adapter_dir))
    (writer.adapter_dir / "fedquad.json").write_text(
        json.dumps({"model": config.model.name, "label_names": data.label_names}, indent=2)
    )
    summary = summarize(config, outcome.metrics, data.label_names, parts.num_blocks)
    summary["adapter_dir"] = str(writer.adapter_dir)
    writer.write_summary(summary)
    return RunResult(run_dir=writer.dir, metrics=outcome.metrics, summary=summary)


def summarize(
    config: ExperimentConfig, metrics: list[dict[str, Any]], labels: list[str], num_blocks: int
) -> dict[str, Any]:
    last_eval: dict[str, Any] = next((m for m in reversed(metrics) if "test_accuracy" in m), {})
    return {
        "method": config.method,
        "model": config.model.name,
        "dataset": config.data.name,
        "label_names": labels,
        "num_blocks": num_blocks,
        "rounds": len(metrics),
        "final_accuracy": last_eval.get("test_accuracy"),
        "final_test_loss": last_eval.get("test_loss"),
        "best_accuracy": best_accuracy(metrics),
        "bytes_up": sum(m["bytes_up"] for m in metrics),
        "bytes_down": sum(m["bytes_down"] for m in metrics),
        "host_seconds": metrics[-1]["host_seconds_total"] if metrics else 0.0,
        "median_step_seconds": median_step_seconds(metrics),
    }
