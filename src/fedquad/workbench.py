"""Everything a run is built from: data per device, the model with LoRA, the fleet, the profile.

``fedquad run``, ``fedquad profile`` and ``fedquad fleet show`` all start here, so they see the
same workload (and so the same cached cost profile).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from fedquad.config import ExperimentConfig
from fedquad.cost.fleet import TIERED_FLEETS, FleetSpec, Tier, load_fleet
from fedquad.cost.model import CostProfile
from fedquad.cost.profiler import (
    ProfileSettings,
    StepTiming,
    cached_profile,
    profile_key,
    profile_workload,
)
from fedquad.cost.timing import (
    MAX_LOAD,
    REFERENCE_THREADS,
    TimingSource,
    check_load,
    host_provenance,
    load_average,
    measure_reference,
    measured_source,
    reference_key,
    resolve_timing,
    write_timing,
)
from fedquad.data import load_text_classification, partition_dataset, tokenize_dataset
from fedquad.data.chat import tokenize_pairs
from fedquad.data.prompts import load_prompt_data
from fedquad.data.tokenize import TensorData
from fedquad.errors import FedquadError
from fedquad.models.causal_lm import keep_answer_logits
from fedquad.models.lora import (
    LoraStructure,
    attach_lora,
    block_linear_targets,
    build_structure,
    is_lora_param,
)
from fedquad.models.registry import (
    ModelParts,
    cache_dir,
    describe_model,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
)
from fedquad.names import BUILTIN_FLEETS, check_fleet_name
from fedquad.planners import global_ranks
from fedquad.train.generate import PromptTestSet, first_word
from fedquad.train.placement import model_device, place_model


@dataclass
class Workbench:
    config: ExperimentConfig
    label_names: list[str]
    """Class names; for causal-lm the answer words of recast classification data, or empty."""
    model: PeftModel
    """The classifier or causal LM with LoRA attached."""
    parts: ModelParts
    structure: LoraStructure
    fleet: FleetSpec
    device_data: list[TensorData]
    """Tokenized samples of each device, by device id."""
    test_data: TensorData


@dataclass(frozen=True)
class ProfileResult:
    profile: CostProfile
    path: Path
    measured_now: bool
    timing: TimingSource
    """The time terms' source, which a run copies into its directory as ``timing.json``."""


# --------------------------------------------------------------------------- fleet


def _sized(spec: FleetSpec, num_devices: int, per_round: int) -> FleetSpec:
    """The built-in tiers in their proportions, scaled to ``num_devices`` (largest remainder)."""
    total = spec.num_devices
    exact = [t.count * num_devices / total for t in spec.tiers]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: num_devices - sum(counts)]:
        counts[i] += 1
    tiers = tuple(
        dataclasses.replace(t, count=n) for t, n in zip(spec.tiers, counts, strict=True) if n
    )
    return dataclasses.replace(spec, tiers=tiers, per_round=per_round)


def uniform_fleet(num_devices: int = 80, per_round: int = 10) -> FleetSpec:
    """Identical devices as fast as this host with memory for any config (no constraint)."""
    return FleetSpec(
        tiers=(Tier(name="uniform", count=num_devices, slowdown=1.0, memory=10.0),),
        per_round=per_round,
    )


def resolve_fleet(config: ExperimentConfig) -> FleetSpec:
    """The config's fleet, with ``federation.num_devices`` / ``devices_per_round`` applied."""
    fed, name = config.federation, config.fleet.name
    if name in BUILTIN_FLEETS:
        spec = TIERED_FLEETS[name]() if name in TIERED_FLEETS else uniform_fleet()
        num = fed.num_devices or spec.num_devices
        per_round = fed.devices_per_round or min(spec.per_round, num)
        if per_round > num:
            raise FedquadError(
                f"federation.devices_per_round = {per_round} is more than the fleet's "
                f"{num} devices: use at most {num}"
            )
        return _sized(spec, num, per_round)
    check_fleet_name(name)
    spec = load_fleet(name)
    for key, asked, has in [
        ("num_devices", fed.num_devices, spec.num_devices),
        ("devices_per_round", fed.devices_per_round, spec.per_round),
    ]:
        if asked is not None and asked != has:
            raise FedquadError(
                f"federation.{key} = {asked} but fleet file {name!r} gives {has}: "
                "leave it unset or make them equal"
            )
    return spec


# --------------------------------------------------------------------------- workload


def method_structure(config: ExperimentConfig, num_blocks: int) -> LoraStructure:
    """The global LoRA of the config's method: ``lora.ranks`` when given, else the method's
    own (uniform rank ``r`` on ``lora.depth`` blocks, LEGEND's distribution, HetLoRA's top)."""
    lc = config.lora
    ranks = lc.ranks or global_ranks(config.method, config.planner, num_blocks, lc.rank, lc.depth)
    return build_structure(
        num_blocks, len(ranks), lc.rank, ranks, alpha=lc.alpha, dropout=lc.dropout, scale=lc.scale
    )


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators: before :func:`build_workbench`,
    so that every weight the server does not send is initialised alike everywhere."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_base_model(config: ExperimentConfig, num_labels: int = 2) -> tuple[Any, ModelParts]:
    """The pretrained model of ``config`` (a classifier with ``num_labels`` classes, or a causal
    LM) and its parts; every process that trains (the server's, a worker) loads it so."""
    if config.model.task == "causal-lm":
        model = load_causal_lm(config.model.name)
        # The LM head (often tied to the input embeddings) is neither trained nor exchanged:
        # only the blocks' LoRA is federated.
        return model, dataclasses.replace(describe_model(model), head_names=[])
    model = load_sequence_classifier(config.model.name, num_labels)
    return model, describe_model(model)


def with_lora(
    config: ExperimentConfig, model: Any, parts: ModelParts, structure: LoraStructure
) -> Any:
    """``model`` with the LoRA of ``structure``, on the run's device and in its precision."""
    peft_model = attach_lora(model, parts, structure)
    place_model(peft_model, config.train.device, config.train.precision)
    if config.model.task == "causal-lm":
        keep_answer_logits(peft_model)
    return peft_model


def build_workbench(config: ExperimentConfig) -> Workbench:
    """Load and partition the data and the model for ``config`` (validated first)."""
    config.validate()
    fleet = resolve_fleet(config)
    if config.model.task == "causal-lm":
        return _causal_lm_workbench(config, fleet)
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
    model, parts = load_base_model(config, data.num_labels)
    _check_positions(config, model)
    structure = method_structure(config, parts.num_blocks)
    peft_model = with_lora(config, model, parts, structure)
    train_tok = tokenize_dataset(data.train, tokenizer, config.model.max_length)
    return Workbench(
        config=config,
        label_names=data.label_names,
        model=peft_model,
        parts=parts,
        structure=structure,
        fleet=fleet,
        device_data=_device_data(config, fleet, train_tok),
        test_data=to_tensors(tokenize_dataset(data.test, tokenizer, config.model.max_length)),
    )


def _causal_lm_workbench(config: ExperimentConfig, fleet: FleetSpec) -> Workbench:
    """Instruction tuning: prompt/response pairs, a causal LM whose LM head stays frozen."""
    dc = config.data
    data = load_prompt_data(
        dc.name,
        prompt_column=dc.text_column,
        response_column=dc.label_column,
        test_fraction=dc.test_fraction,
        seed=config.seed,
        max_train_samples=dc.max_train_samples,
        max_test_samples=dc.max_test_samples,
    )
    if dc.partition != "iid" and not data.has_labels:
        raise FedquadError(
            f"data.partition = {dc.partition!r} needs labels, and '{dc.name}' has none "
            "(only recast classification data such as fine-foods-prompts does): use iid"
        )
    tokenizer = load_tokenizer(config.model.name)
    model, parts = load_base_model(config)
    _check_positions(config, model)
    structure = method_structure(config, parts.num_blocks)
    peft_model = with_lora(config, model, parts, structure)
    length = config.model.max_length
    train_tok = tokenize_pairs(data.train, tokenizer, length)
    test_tok = tokenize_pairs(data.test, tokenizer, length, with_prompts=True)
    columns = ["input_ids", "attention_mask", "labels", "prompt_ids", "prompt_mask"]
    test_data = PromptTestSet(
        test_tok.with_format("torch", columns=columns)[:],
        tokenizer,
        prompts=data.test["prompt"],
        references=data.test["response"],
        answers=data.test["response"] if data.has_labels else None,
    )
    return Workbench(
        config=config,
        label_names=data.label_names,
        model=peft_model,
        parts=parts,
        structure=structure,
        fleet=fleet,
        device_data=_device_data(config, fleet, train_tok),
        test_data=test_data,
    )


def _check_positions(config: ExperimentConfig, model: Any) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.model.max_length > limit:
        raise FedquadError(
            f"model.max_length = {config.model.max_length} is more than {config.model.name}'s "
            f"{limit} positions: use at most {limit}"
        )


def _device_data(config: ExperimentConfig, fleet: FleetSpec, train: Any) -> list[TensorData]:
    dc = config.data
    partitions = partition_dataset(
        train,
        fleet.num_devices,
        dc.partition,
        alpha=dc.alpha,
        shards_per_partition=dc.shards_per_partition,
        min_partition_size=dc.min_partition_size,
        seed=config.seed,
    )
    return [to_tensors(p) for p in partitions]


def to_tensors(dataset: Any) -> TensorData:
    """Tokenized dataset → the dict of tensors the trainer batches from: class ids as
    ``labels``, or a causal LM's token labels."""
    # One materialisation into plain tensors: a dataset column is a lazy view that decodes
    # from Arrow on every slice.
    label = "labels" if "labels" in dataset.column_names else "label"
    rows = dataset.with_format("torch", columns=["input_ids", "attention_mask", label])[:]
    return {
        "input_ids": rows["input_ids"],
        "attention_mask": rows["attention_mask"],
        "labels": rows[label],
    }


def held_out_labels(test_data: TensorData, label_names: list[str]) -> list[str] | None:
    """Each test row's label by name, what accuracy is scored against: a class, or for recast
    classification prompts the answer's first word; ``None`` for prompts without answers."""
    if isinstance(test_data, PromptTestSet):
        answers = test_data.answers
        return None if answers is None else [first_word(a) for a in answers]
    ids = test_data["labels"].tolist()
    return [label_names[i] if 0 <= i < len(label_names) else str(i) for i in ids]


def workload_profile(
    bench: Workbench, refresh: bool = False, settings: ProfileSettings | None = None
) -> ProfileResult:
    """The cost profile of the bench's workload: its time terms from ``profile.timing``
    (docs/methods.md §6), its bytes measured by the trainer's hooks; from the cache, or measured
    now and cached."""
    config, parts, structure = bench.config, bench.parts, bench.structure
    settings = settings or ProfileSettings(timed_steps=bench.config.profile.timed_steps)
    train, quant = config.train, config.quant
    fields = workload_fields(bench, settings)
    ref_key = timing_key(bench, fields)
    source = resolve_timing(config.profile.timing, ref_key)
    key = profile_key(
        **fields,
        timing=source.kind if source else "measure",
        timing_hash=source.hash if source else None,
    )
    batch = profiling_batch(bench)

    def measure(timing: StepTiming | None) -> CostProfile:
        given = source.timing if source is not None else timing
        return profile_workload(
            bench.model, parts, structure, batch, train, quant, settings, timing=given
        )

    profile, path, measured = cached_profile(key, measure, cache_dir(), refresh)
    if source is None:
        source = measured_source(StepTiming.of(profile), ref_key)
    return ProfileResult(profile=profile, path=path, measured_now=measured, timing=source)


def export_timing(
    config: ExperimentConfig,
    path: str | Path,
    force: bool = False,
    repeats: int = 8,
    max_load: float = MAX_LOAD,
    own_load: float = 0.0,
) -> TimingSource:
    """Measure the bench's time terms by the reference method and write them to ``path`` as a
    timing file; refused on a loaded machine unless ``force`` (the load is recorded). The load
    is read before the workload is built, so that loading the model does not count as load;
    ``own_load`` is what this process itself still weighs on it (an earlier export of a batch)."""
    before = load_average()
    check_load(before, force, max_load, own=own_load)
    bench = build_workbench(config)
    timing = measure_reference(
        bench.model,
        bench.parts,
        bench.structure,
        profiling_batch(bench),
        config.train,
        config.quant,
        repeats,
    )
    if not timing.shareable:
        raise FedquadError(
            f"lora.depth = {bench.structure.depth} times one depth only, which cannot tell g "
            "from c: export a reference at a global LoRA depth of 2 or more"
        )
    after = load_average()
    check_load(after, force, max_load, own=REFERENCE_THREADS)
    source = TimingSource(
        "reference",
        timing,
        timing_key(bench),
        {
            **host_provenance(),
            "method": "interleaved (1,0) (ceil(D/2),0) (D,0) (D,D), fastest step of each",
            "repeats": repeats,
            "threads": REFERENCE_THREADS,
            "load_before": before,
            "load_after": after,
            "forced": force,
        },
    )
    write_timing(path, source)
    return source


def profiling_batch(bench: Workbench) -> TensorData:
    """The samples the profiler steps on: the first device's with data."""
    return next(d for d in bench.device_data if len(d["labels"]))


def timing_key(bench: Workbench, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reference-timing key of the bench's workload (see :mod:`fedquad.cost.timing`)."""
    config = bench.config
    fields = fields if fields is not None else workload_fields(bench, ProfileSettings())
    if config.model.task == "causal-lm":
        # the head's cost depends on where the answers sit
        fields = {**fields, "dataset": config.data.name}
    return reference_key(
        fields,
        precision=getattr(config.train, "precision", "fp32"),
        device="cpu",
        threads=REFERENCE_THREADS,
    )


def workload_key(bench: Workbench, settings: ProfileSettings) -> dict[str, Any]:
    """The profile cache key of the bench's workload, host fields included, timing source not."""
    return profile_key(**workload_fields(bench, settings))


def workload_fields(bench: Workbench, settings: ProfileSettings) -> dict[str, Any]:
    """What the bench's workload is, for cache and timing keys: the rank layout enters only
    ``ranks`` (the model's size is counted without LoRA), so layouts can share the time terms."""
    config, parts, structure = bench.config, bench.parts, bench.structure
    train, quant = config.train, config.quant
    return dict(
        model=config.model.name,
        family=parts.family,
        num_blocks=parts.num_blocks,
        hidden_size=parts.hidden_size,
        params=sum(p.numel() for n, p in bench.model.named_parameters() if not is_lora_param(n)),
        task="sequence-classification" if config.model.task == "classification" else "causal-lm",
        num_labels=len(bench.label_names),
        batch_size=train.batch_size,
        max_length=config.model.max_length,
        precision=train.precision,
        device=model_device(bench.model).type,
        ranks=list(structure.ranks),
        lora_alpha=structure.alpha,
        lora_scale=structure.scale,
        lora_dropout=structure.dropout,
        targets=block_linear_targets(parts),
        optimizer=train.optimizer,
        frozen_prefix_eval=train.frozen_prefix_eval,
        quant_bits=quant.bits,
        group_size=quant.group_size,
        min_numel=quant.min_numel,
        profiled_bits=list(settings.bits),
        timed_steps=settings.timed_steps,
    )
