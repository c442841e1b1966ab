"""Typed experiment configuration: TOML in and out, ``--set key=value`` overrides, validation.

Every problem is reported as a one-line :class:`FedquadError` naming the key, the bad value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from fedquad.errors import FedquadError, did_you_mean, unknown_key
from fedquad.methods_registry import method, method_names

Deadline = Literal["anchored", "search", "adaptive"]
Infeasible = Literal["ignore", "checkpoint", "sit-out"]
Robust = Literal["none", "median", "trimmed-mean"]
RankDistribution = Literal["halving", "uniform", "linear"]
Engine = Literal["local", "flower-sim", "flower"]
Partition = Literal["iid", "dirichlet", "shards", "inner-dirichlet"]
Optimizer = Literal["adamw", "sgd"]
Weighting = Literal["samples", "uniform"]
QuantPosition = Literal["bottom", "top"]
QuantBits = Literal[8, 4, 2]
Task = Literal["classification", "causal-lm"]
Precision = Literal["fp32", "bf16"]
TrainDevice = Literal["auto", "cpu", "cuda", "mps"]

# The allowed values as tuples, for messages and for callers that list them.
DEADLINES: tuple[Deadline, ...] = typing.get_args(Deadline)
INFEASIBLE_CHOICES: tuple[Infeasible, ...] = typing.get_args(Infeasible)
ROBUST_CHOICES: tuple[Robust, ...] = typing.get_args(Robust)
RANK_DISTRIBUTIONS: tuple[RankDistribution, ...] = typing.get_args(RankDistribution)
ENGINES: tuple[Engine, ...] = typing.get_args(Engine)
PARTITIONS: tuple[Partition, ...] = typing.get_args(Partition)
OPTIMIZERS: tuple[Optimizer, ...] = typing.get_args(Optimizer)
WEIGHTINGS: tuple[Weighting, ...] = typing.get_args(Weighting)
QUANT_POSITIONS: tuple[QuantPosition, ...] = typing.get_args(QuantPosition)
QUANT_BITS: tuple[QuantBits, ...] = typing.get_args(QuantBits)
TASKS: tuple[Task, ...] = typing.get_args(Task)
PRECISIONS: tuple[Precision, ...] = typing.get_args(Precision)
TRAIN_DEVICES: tuple[TrainDevice, ...] = typing.get_args(TrainDevice)


@dataclass
class ModelConfig:
    name: str = "minilm"
    """Built-in name (minilm, smollm2-135m), a local model directory, or a hub id."""
    task: Task = "classification"
    """``classification`` (a sequence classifier with a trained head) or ``causal-lm``
    (instruction tuning of a decoder on prompt/response pairs; the LM head stays frozen)."""
    max_length: int = 64
    """Tokens per example (truncated / padded)."""

    def __post_init__(self) -> None:
        _check_choice("model.task", self.task, TASKS)
        _check_positive("model.max_length", self.max_length)


@dataclass
class DataConfig:
    name: str = "fine-foods"
    """Built-in name (fine-foods, sst2; for causal-lm chatterbot, fine-foods-prompts), a local
    CSV/TSV/JSONL/Parquet file or directory, or a Hugging Face dataset name."""
    text_column: str | None = None
    """Text field (default ``text``); for causal-lm the prompt field (default ``instruction``)."""
    label_column: str | None = None
    """Label field (default ``label``); for causal-lm the response field (default ``response``)."""
    test_fraction: float = 0.2
    """Hold-out fraction when the dataset has no test split."""
    max_train_samples: int | None = None
    """Use at most this many training examples, drawn with the run's seed (default: all)."""
    max_test_samples: int | None = None
    """Evaluate on at most this many test examples, drawn with the run's seed (default: all)."""
    partition: Partition = "dirichlet"
    """How the training set is split across devices: iid, dirichlet (label skew per class),
    inner-dirichlet (label mix per device, equal sizes; docs/methods.md §8) or shards."""
    alpha: float = 1.0
    """Dirichlet concentration: smaller means more label skew. For inner-dirichlet, each
    device's label mix is drawn from Dir(alpha · p), p the global label shares."""
    shards_per_partition: int = 2
    """Label-sorted shards each device gets (``partition = "shards"``)."""
    min_partition_size: int = 10
    """The Dirichlet split is redrawn until every device has at least this many examples."""

    def __post_init__(self) -> None:
        _check_choice("data.partition", self.partition, PARTITIONS)
        _check_positive("data.shards_per_partition", self.shards_per_partition)
        _check_optional_positive("data.max_train_samples", self.max_train_samples)
        _check_optional_positive("data.max_test_samples", self.max_test_samples)
        _check_number_above_zero("data.alpha", self.alpha)
        if not 0 < self.test_fraction < 1:
            raise FedquadError(
                f"data.test_fraction = {self.test_fraction!r}: use a number between 0 and 1"
            )
        if self.min_partition_size < 0:
            raise FedquadError(
                f"data.min_partition_size = {self.min_partition_size}: use a number >= 0"
            )


@dataclass
class LoraConfig:
    depth: int | None = None
    """Global LoRA depth D: the top D blocks carry LoRA (default: every block)."""
    rank: int = 8
    """Uniform LoRA rank ``r`` of every LoRA block (when `ranks` is not given)."""
    scale: float = 2.0
    """LoRA scale ``alpha_l / r_l`` of every block: ``alpha_l = scale · r_l`` (docs/methods.md §5),
    so blocks and methods of different ranks train at the same scale."""
    alpha: float | None = None
    """One fixed ``lora_alpha`` for every block instead (its scale then varies with the rank)."""
    dropout: float = 0.0
    """LoRA dropout. Off by default: on a CPU each LoRA layer's dropout mask costs about as much
    as the layer (0.84 → 0.56 s per MiniLM step at batch 16, sequence 64)."""
    ranks: list[int] | None = None
    """Per-block rank distribution from the output: ranks[0] is block L-1. Overrides `rank`."""

    def __post_init__(self) -> None:
        _check_positive("lora.rank", self.rank)
        _check_optional_positive("lora.depth", self.depth)
        if not 0 <= self.dropout < 1:
            raise FedquadError(f"lora.dropout = {self.dropout!r}: use a number in [0, 1)")
        if self.ranks is not None:
            if not self.ranks or any(r < 1 for r in self.ranks):
                raise FedquadError(
                    f"lora.ranks = {self.ranks!r}: use a non-empty list of ranks >= 1"
                )
            if self.depth is not None and len(self.ranks) != self.depth:
                raise FedquadError(
                    f"lora.ranks has {len(self.ranks)} entries but lora.depth = "
                    f"{self.depth}: give one rank per LoRA block"
                )
        if not _positive_number(self.scale):
            raise FedquadError(f"lora.scale = {self.scale!r} is not allowed: use a number > 0")
        if self.alpha is not None and not _positive_number(self.alpha):
            raise FedquadError(
                f"lora.alpha = {self.alpha!r} is not allowed: use a number > 0, or leave it "
                "unset for alpha = lora.scale x rank"
            )


@dataclass
class TrainConfig:
    local_steps: int = 10
    """Local optimizer steps ``τ`` per device per round."""
    batch_size: int = 16
    """Examples per local training step."""
    lr: float = 1e-3
    """Learning rate of the LoRA parameters."""
    head_lr: float | None = None
    """Learning rate of the task head (default: `lr`)."""
    optimizer: Optimizer = "adamw"
    """Local optimizer: adamw or sgd (plain SGD, no optimizer state)."""
    weight_decay: float = 0.0
    """Weight decay of the local optimizer."""
    frozen_prefix_eval: bool = True
    """Run the embeddings and the frozen blocks below a device's span without dropout: they are
    not trained on that device, and CPU dropout masks are a large share of a step."""
    eval_batch_size: int = 64
    """Examples per batch when the server evaluates the global model."""

    trim_batches: bool = True
    """Cut each training batch to its longest sample: exact under the attention mask (right
    padding), and a short sample then costs what it is. The cost profile and the virtual clock
    still describe batches of ``model.max_length`` tokens."""
    precision: Precision = "fp32"
    """``fp32``, or ``bf16``: autocast, with the frozen base weights stored in bfloat16 (LoRA,
    head and optimizer state stay float32). Evaluation and profiling run in it too."""
    device: TrainDevice = "auto"
    """Where the model trains: ``auto`` (cuda if present, else mps, else cpu), cpu, cuda or mps."""

    def __post_init__(self) -> None:
        _check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _check_positive("train.local_steps", self.local_steps)
        _check_positive("train.batch_size", self.batch_size)
        _check_positive("train.eval_batch_size", self.eval_batch_size)
        _check_number_above_zero("train.lr", self.lr)
        if self.head_lr is not None and not self.head_lr > 0:
            raise FedquadError(f"train.head_lr = {self.head_lr!r}: use a number > 0")
        if not isinstance(self.trim_batches, bool):
            raise FedquadError(
                f"train.trim_batches = {self.trim_batches!r} is not allowed: use true or false"
            )
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_choice("train.device", self.device, TRAIN_DEVICES)


@dataclass
class QuantConfig:
    """Activation quantization of the tensors saved for backward (docs/methods.md §2)."""

    bits: QuantBits = 8
    """8, 4 or 2 bits per code."""
    group_size: int = 128
    """Elements per quantization group (one scale and minimum each) along the flattened tensor."""
    position: QuantPosition = "bottom"
    """Which blocks of a device's span are quantized: the lowest q (bottom) or the highest (top)."""
    min_numel: int = 1024
    """Tensors smaller than this are kept as they are."""
    blocks: int = 0
    """q for methods that do not choose it per device (fedlora): quantize this many blocks of
    every device's span (capped at its depth)."""

    def __post_init__(self) -> None:
        _check_choice("quant.bits", self.bits, QUANT_BITS)
        _check_positive("quant.group_size", self.group_size)
        for key, value in [("quant.blocks", self.blocks), ("quant.min_numel", self.min_numel)]:
            if value < 0:
                raise FedquadError(f"{key} = {value!r} is not allowed: use a whole number >= 0")
        _check_choice("quant.position", self.position, QUANT_POSITIONS)


@dataclass
class FederationConfig:
    rounds: int = 20
    """Federated rounds to run."""
    num_devices: int | None = None
    """Devices in the fleet (default: the fleet's own count; the built-in fleets have 80)."""
    devices_per_round: int | None = None
    """Devices sampled per round (default: the fleet's ``per_round``; 10 for the built-in ones)."""
    eval_every: int = 1
    """Rounds between evaluations of the global model on the test set (the last round is always
    evaluated)."""
    weighting: Weighting = "samples"
    """Aggregation weights: by sample count, or uniform."""
    target_accuracy: float | None = None
    """Accuracy that defines "time to target" (default: 95% of the run's final accuracy)."""
    checkpoint_every: int = 1
    """Rounds between server checkpoints in the run directory (0: none); resume with
    ``fedquad run --resume DIR``."""
    save_adapter_every: int = 0
    """Rounds between snapshots of the global adapter, ``adapter/round-XXXX/`` in the run
    directory (0: none; the final adapter is always saved in ``adapter/``)."""
    robust: Robust = "none"
    """Per-layer aggregation statistic: none (weighted mean), median or trimmed-mean
    (coordinate-wise, unweighted; per-layer methods only)."""
    trim_fraction: float = 0.1
    """Share of the largest and of the smallest values dropped per coordinate (trimmed-mean)."""
    norm_bound: float = 10.0
    """Reject an update whose distance from the global state is more than this many times the
    round's median (0: off)."""
    deadline_slack: float = 0.5
    """The server waits for the planner's predicted round time x (1 + slack); a device not done
    by then is left out of the round's aggregation."""
    round_deadline: float | None = None
    """A fixed round deadline in (virtual) seconds instead of the derived one."""
    over_selection: float = 0.0
    """Sample up to this fraction more devices than ``devices_per_round`` when devices have
    been failing: ``⌈k·p/(1-p)⌉`` more for the moving average ``p`` of the share of planned
    devices whose update was not aggregated (0: off)."""

    def __post_init__(self) -> None:
        _check_choice("federation.weighting", self.weighting, WEIGHTINGS)
        _check_positive("federation.rounds", self.rounds)
        _check_positive("federation.eval_every", self.eval_every)
        if self.checkpoint_every < 0:
            raise FedquadError(
                f"federation.checkpoint_every = {self.checkpoint_every}: "
                "use a whole number >= 0 (0: no checkpoints)"
            )
        _check_optional_positive("federation.num_devices", self.num_devices)
        _check_optional_positive("federation.devices_per_round", self.devices_per_round)
        target = self.target_accuracy
        if target is not None and not 0 < target <= 1:
            raise FedquadError(
                f"federation.target_accuracy = {target!r} is not allowed: use a number in (0, 1]"
            )
        _check_choice("federation.robust", self.robust, ROBUST_CHOICES)
        if not 0 <= self.trim_fraction < 0.5:
            raise FedquadError(f"federation.trim_fraction = {self.trim_fraction!r}: use [0, 0.5)")
        if not 0 <= self.over_selection <= 10:
            raise FedquadError(
                f"federation.over_selection = {self.over_selection!r}: "
                "use a fraction from 0 (off) to 10"
            )
        if not self.deadline_slack >= 0:
            raise FedquadError(
                f"federation.deadline_slack = {self.deadline_slack!r}: use a number >= 0"
            )
        rd = self.round_deadline
        if rd is not None and not rd > 0:
            raise FedquadError(f"federation.round_deadline = {rd!r}: use a number of seconds > 0")
        if not self.norm_bound >= 0:
            raise FedquadError(f"federation.norm_bound = {self.norm_bound!r}: use a number >= 0")
        if (
            self.devices_per_round is not None
            and self.num_devices is not None
            and self.devices_per_round > self.num_devices
        ):
            raise FedquadError(
                f"federation.devices_per_round = {self.devices_per_round} is more than "
                f"federation.num_devices = {self.num_devices}"
            )
        every = self.save_adapter_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise FedquadError(
                f"federation.save_adapter_every = {every!r}: use a whole number >= 0 "
                "(0: only the final adapter)"
            )


@dataclass
class FleetConfig:
    """The simulated devices (docs/methods.md §6)."""

    name: str = "default"
    """``default`` (small/medium/large tiers 30/40/10), ``papers`` (the same tiers with the
    published prototype's memory ladder), ``decorrelated`` (each speed class split half low,
    half high memory), each also as ``<name>-jetson`` (every step timed by the Jetson boards'
    composition), ``uniform`` (identical devices as fast as this host, memory for any config),
    or a fleet TOML file (docs/methods.md §6)."""
    kappa: float = 0.1
    """Safety margin: a config fits a device when its memory is at most (1 - kappa) x budget."""
    capacity_gamma: float = 0.7
    """Weight of history in each device's moving average of its reported capacity."""

    def __post_init__(self) -> None:
        if not 0 <= self.kappa < 1:
            raise FedquadError(f"fleet.kappa = {self.kappa!r}: use a number in [0, 1)")
        if not 0 <= self.capacity_gamma < 1:
            raise FedquadError(
                f"fleet.capacity_gamma = {self.capacity_gamma!r}: use a number in [0, 1)"
            )


@dataclass
class PlannerConfig:
    """Options of the planners (docs/methods.md §4); each applies to the methods named."""

    min_depth: int = 1
    """``d_min`` (fedquad, legend, joint, fedquad-noquant)."""
    epsilon: float = 0.05
    """Deadline slack: ``T* = (1 + ε)·max_i T_i(cheapest)`` (fedquad, legend, joint)."""
    deadline: Deadline = "anchored"
    """``anchored`` (straggler-anchored greedy), ``search`` (best progress per second, waiting
    longer than the straggler) or ``adaptive`` (``search`` that may also leave the slowest
    devices out of the round)."""
    min_participation: float = 0.5
    """The least fraction of the devices able to train that ``deadline = adaptive`` keeps."""
    progress_lambda: float = 0.25
    """``λ``: the progress cost of one quantized block in ``deadline = search``."""
    block_weights: list[float] | None = None
    """``w_k`` of the k-th block from the output in ``deadline = search`` (default all 1)."""
    rank_distribution: RankDistribution = "halving"
    """LEGEND's ranks over its ``D`` blocks (legend, joint): halving, uniform or linear."""
    rank_total: int | None = None
    """LEGEND's total rank ``R`` (default ``lora.rank × L``: as many parameters as uniform
    rank on every block)."""
    legend_depth: int | None = None
    """LEGEND's global depth ``D`` (default ``⌈L/2⌉``)."""
    hetlora_ranks: list[int] | None = None
    """Ranks HetLoRA and FlexLoRA choose from (default ``r/4, r/2, r, 2r``)."""
    infeasible: Infeasible = "sit-out"
    """What a device does whose memory cannot hold the method's config (fedlora, hetlora,
    flexlora; docs/methods.md §4.4): ``sit-out`` (it does not train, the round does not wait),
    ``ignore`` (memory is not enforced: it trains and is waited for, recorded ``over_budget``)
    or ``checkpoint`` (it checkpoints the activations of the fewest of its lowest unquantized
    blocks that make it fit). The other methods fit every config to memory: with them any
    value but ``sit-out`` is an error."""

    def __post_init__(self) -> None:
        _check_choice("planner.deadline", self.deadline, DEADLINES)
        _check_choice("planner.infeasible", self.infeasible, INFEASIBLE_CHOICES)
        _check_choice("planner.rank_distribution", self.rank_distribution, RANK_DISTRIBUTIONS)
        if not self.epsilon >= 0:
            raise FedquadError(f"planner.epsilon = {self.epsilon!r}: use a number >= 0")
        if not 0 < self.min_participation <= 1:
            raise FedquadError(
                f"planner.min_participation = {self.min_participation!r}: use a fraction in (0, 1]"
            )
        if not self.progress_lambda >= 0:
            raise FedquadError(
                f"planner.progress_lambda = {self.progress_lambda!r}: use a number >= 0"
            )
        if self.block_weights is not None and any(not w >= 0 for w in self.block_weights):
            raise FedquadError(f"planner.block_weights = {self.block_weights!r}: use numbers >= 0")
        if self.hetlora_ranks is not None and (
            not self.hetlora_ranks or any(r < 1 for r in self.hetlora_ranks)
        ):
            raise FedquadError(
                f"planner.hetlora_ranks = {self.hetlora_ranks!r}: "
                "use a non-empty list of ranks >= 1"
            )
        _check_positive("planner.min_depth", self.min_depth)
        _check_optional_positive("planner.rank_total", self.rank_total)
        _check_optional_positive("planner.legend_depth", self.legend_depth)


@dataclass
class FaultConfig:
    """Injected faults (tests, robustness experiments): per device and round, with these
    probabilities, the device crashes mid-round, straggles ``delay_factor`` times slower than
    its profile, sends NaN in its update, or runs out of memory in its first training attempt
    (it then retries once with the server's cheaper fallback config)."""

    crash_probability: float = 0.0
    """Chance that a device crashes mid-round and sends no update."""
    delay_probability: float = 0.0
    """Chance that a device straggles ``delay_factor`` times slower than its profile."""
    delay_factor: float = 3.0
    """How many times slower a straggling device is."""
    corrupt_probability: float = 0.0
    """Chance that a device sends NaN in its update."""
    oom_probability: float = 0.0
    """Chance that a device runs out of memory in its first training attempt."""

    def __post_init__(self) -> None:
        probabilities = [
            self.crash_probability,
            self.delay_probability,
            self.corrupt_probability,
            self.oom_probability,
        ]
        if any(not 0 <= p <= 1 for p in probabilities) or sum(probabilities) > 1:
            raise FedquadError(
                f"faults probabilities {probabilities}: use numbers in [0, 1] summing to <= 1"
            )
        if not self.delay_factor >= 1:
            raise FedquadError(f"faults.delay_factor = {self.delay_factor!r}: use a number >= 1")


@dataclass
class ProfileConfig:
    """How the workload's cost profile is measured (once, then cached)."""

    timed_steps: int = 4
    """Timed steps per timing point (after one warm-up); the fastest is used."""
    timing: str = "reference"
    """Where the time terms ``f, g, o, c`` come from: ``"reference"``, the ones shipped with the
    package for this workload (measured once on an idle machine; a workload without one is
    measured here, with a warning); ``"measure"``, measured on this host (cached); or the path of
    a timing file written by ``fedquad profile --export``. Saved bytes are always measured."""

    def __post_init__(self) -> None:
        _check_positive("profile.timed_steps", self.timed_steps)
        if not isinstance(self.timing, str) or not self.timing.strip():
            raise FedquadError(
                f"profile.timing = {self.timing!r} is not allowed: "
                "use 'reference', 'measure' or the path of a timing file"
            )


@dataclass
class FlowerConfig:
    """The Flower Deployment Engine (``engine = "flower"``): the SuperLink to run on."""

    superlink: str = "127.0.0.1:8000"
    """The SuperLink's address as host:port (its Control, Fleet and Runtime APIs share it)."""
    root_certificates: str | None = None
    """PEM file of the CA that signed the SuperLink's certificate (``ca.crt`` of ``fedquad
    deploy certs``); unset: the system's trusted CAs."""
    secret_file: str | None = None
    """The file the SuperLink was started with as ``--superexec-auth-secret-file``
    (``serverapp.secret`` of ``fedquad deploy certs``): it lets this run take its ServerApp task."""
    insecure: bool = False
    """No TLS: everything, model updates included, travels in clear text (a warning says so)."""
    nodes_timeout: float = 300.0
    """Seconds to wait for one SuperNode per device to connect."""
    reply_timeout: float | None = None
    """Seconds to wait for a round's replies; a device that has not replied by then is left
    out of the round (default: wait for every device — a device whose SuperNode is lost is
    still left out, once the SuperLink misses its heartbeats, about a minute)."""

    def __post_init__(self) -> None:
        host, sep, port = self.superlink.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FedquadError(
                f"flower.superlink = {self.superlink!r}: write it as host:port, e.g. 127.0.0.1:8000"
            )
        if self.insecure and self.root_certificates is not None:
            raise FedquadError(
                "flower.insecure = true turns TLS off: leave flower.root_certificates unset"
            )
        for key, seconds in [
            ("nodes_timeout", self.nodes_timeout),
            ("reply_timeout", self.reply_timeout),
        ]:
            if seconds is not None and not seconds > 0:
                raise FedquadError(f"flower.{key} = {seconds!r}: use a number of seconds > 0")


@dataclass
class EngineConfig:
    """What carries the round's messages to the clients (``[engine]``; the older string form
    ``engine = "local"`` still reads as ``name``)."""

    name: Engine = "local"
    """``local`` (this process and its workers), ``flower-sim`` or ``flower``."""
    workers: int | str = "auto"
    """Local engine: 0 trains every device in this process, one after the other; N >= 1 trains
    the round's devices in N single-thread worker processes; ``auto``: min(cores, devices per
    round), in this process when that is 1. The metrics are the same for any value."""

    def __post_init__(self) -> None:
        _check_choice("engine.name", self.name, ENGINES)
        w = self.workers
        if w != "auto" and (not isinstance(w, int) or isinstance(w, bool) or w < 0):
            raise FedquadError(
                f"engine.workers = {w!r} is not allowed: use auto or a whole number >= 0"
            )


@dataclass
class ExperimentConfig:
    method: str = "fedquad"
    """One of the methods of the registry (``fedquad.methods_registry``)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Where and how devices train (the ``[engine]`` table; ``engine = "local"`` also works)."""
    seed: int = 0
    """Seed of everything random in a run: data split, fleet draws, sampling, training."""
    output_dir: str = "runs"
    """Each run writes into a fresh sub-directory of this one."""
    run_name: str | None = None
    """Name of the run's sub-directory (default: time stamp, method, data, model and seed)."""
    tensorboard: bool = False
    """Also log per-round scalars for TensorBoard under the run's ``tensorboard/``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def __post_init__(self) -> None:
        # Each section checked itself when it was built; what spans sections is checked here.
        _check_choice("method", self.method, method_names())
        if self.run_name is not None and (
            self.run_name in ("", ".", "..") or any(c in self.run_name for c in "/\\")
        ):
            raise FedquadError(
                f"run_name = {self.run_name!r} is not allowed: use a plain name without '/' "
                "(it names one sub-directory of output_dir)"
            )
        if self.planner.infeasible != "sit-out" and method(self.method).adaptive:
            fixed = ", ".join(m for m in method_names() if not method(m).adaptive)
            raise FedquadError(
                f"planner.infeasible = {self.planner.infeasible!r} does not apply to "
                f"{self.method}: it fits every device's config to its memory; use it with "
                f"{fixed}, or leave it sit-out"
            )
        if self.federation.robust != "none" and not method(self.method).robust_ok:
            raise FedquadError(
                f"federation.robust = {self.federation.robust!r} does not apply to {self.method}"
                ": its devices send rank-truncated tensors; use none"
            )

    def validate(self) -> ExperimentConfig:
        """Check everything again (a section may have been changed since it was built)."""
        for section in self.sections():
            section.__post_init__()
        self.__post_init__()
        return self

    def sections(self) -> list[Any]:
        """The option tables (model, data, ...), in declaration order."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return [v for v in values if dataclasses.is_dataclass(v)]


def _drop_none(value: Any) -> Any:
    # TOML has no null: unset options are simply left out.
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _positive_number(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and value > 0


def _check_choice(key: str, value: object, allowed: tuple[Any, ...]) -> None:
    # A bool equals 0 or 1, so compare types too (quant.bits = true is not 1 bit).
    if not any(type(value) is type(a) and value == a for a in allowed):
        hint = did_you_mean(value, allowed)
        tail = f" ({hint})" if hint else ""
        raise FedquadError(f"{key} = {value!r} is not allowed: use {_listed(allowed)}{tail}")


def _listed(allowed: tuple[Any, ...]) -> str:
    if all(isinstance(a, str) for a in allowed):
        return "one of " + ", ".join(allowed)
    *rest, last = (str(a) for a in allowed)
    return f"{', '.join(rest)} or {last}"


def _check_positive(key: str, value: int) -> None:
    if value < 1:
        raise FedquadError(f"{key} = {value!r} is not allowed: use a whole number >= 1")


def _check_optional_positive(key: str, value: int | None) -> None:
    if value is not None:
        _check_positive(key, value)


def _check_number_above_zero(key: str, number: float) -> None:
    if not number > 0:
        raise FedquadError(f"{key} = {number!r} is not allowed: use a number > 0")


# --------------------------------------------------------------------------- building from dicts


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[1:]:  # e.g. ``int | str``: the first type the value is
            if isinstance(value, alternative) and not isinstance(value, bool):
                return value
        return _coerce(key, value, inner[0])
    if origin is Literal:
        # The type first (as for a plain field), then the choice.
        _coerce(key, value, type(args[0]))
        _check_choice(key, value, args)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise FedquadError(f"{key} = {value!r}: expected a list")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise FedquadError(f"{key} = {value!r}: expected {hint.__name__}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise unknown_key(full, sorted(hints))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise FedquadError(f"{full} must be a table of options, got {value!r}")
            kwargs[key] = _build(hint, value, f"{full}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(full, value, hint)
    return cls(**kwargs)


def _engine_table(data: dict[str, Any]) -> dict[str, Any]:
    """``engine = "local"`` (the older form, still in run directories) as ``[engine]``."""
    if isinstance(data.get("engine"), str):
        data = {**data, "engine": {"name": data["engine"]}}
    return data


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    config: ExperimentConfig = _build(ExperimentConfig, _engine_table(data), "")
    return config.validate()


def _parse_value(text: str) -> Any:
    # Values are TOML literals (numbers, booleans, lists, quoted strings); else a string.
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys for sections) to a raw config dict."""
    data = _deep_copy(_engine_table(data))
    for item in overrides:
        if "=" not in item:
            raise FedquadError(f"--set {item!r}: write it as key=value, e.g. federation.rounds=5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FedquadError(f"--set {item!r}: '{part}' is not a section")
        value = _parse_value(text.strip())
        if parts == ["engine"] and isinstance(value, str):
            value = {**data.get("engine", {}), "name": value}  # ``--set engine=flower``
        node[parts[-1]] = value
    return data


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


PRESETS_DIR = Path(__file__).parent / "presets"
"""The built-in configs (``--config quickstart``), shipped inside the package."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def config_path(name: str | Path) -> Path:
    """A config file, or the file of a built-in preset named without a directory or suffix
    (a file of that name in the working directory wins)."""
    path = Path(name)
    preset = PRESETS_DIR / f"{path.name}.toml"
    if not path.exists() and str(name) == path.name and not path.suffix and preset.is_file():
        return preset
    return path


def _missing_config(path: Path) -> str:
    presets = preset_names()
    hint = did_you_mean(path.stem, presets)
    tail = f"; {hint}" if hint else ""
    return f"config file '{path}' does not exist (built-in presets: {', '.join(presets)}){tail}"


def read_toml(path: str | Path) -> dict[str, Any]:
    path = config_path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FedquadError(_missing_config(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FedquadError(f"config file '{path}' cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FedquadError(f"config file '{path}' is not valid TOML: {exc}") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """The config from an optional TOML file with ``key=value`` overrides applied on top."""
    data = read_toml(path) if path is not None else {}
    return from_dict(apply_overrides(data, overrides or []))
