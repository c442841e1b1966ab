"""One LoRA scale (docs/methods.md §5): every block of every method trains at ``alpha_l / r_l``."""

from __future__ import annotations

import copy

import pytest
from peft.tuners.lora import LoraLayer

from fedquad.config import load_config
from fedquad.errors import FedquadError
from fedquad.methods_registry import METHODS
from fedquad.models.lora import attach_lora, block_of, build_structure
from fedquad.models.registry import describe_model, load_sequence_classifier
from fedquad.workbench import method_structure


@pytest.fixture(scope="module")
def minilm():
    model = load_sequence_classifier("minilm", num_labels=2)
    return model, describe_model(model)


def lora_scalings(model, parts) -> dict[str, tuple[int, int, float]]:
    """Every LoRA module: (its block, its rank, its PEFT scaling)."""
    return {
        name: (block_of(f".{name}.", parts), module.r["default"], module.scaling["default"])
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_every_block_of_every_method_trains_at_the_same_scale(minilm, scale):
    base, parts = minilm
    ranks_seen = set()
    for method in METHODS:
        config = load_config(None, [f"method='{method}'", f"lora.scale={scale}"])
        structure = method_structure(config, parts.num_blocks)
        model = attach_lora(copy.deepcopy(base), parts, structure)
        modules = lora_scalings(model, parts)
        assert {block for block, _, _ in modules.values()} == set(structure.lora_blocks), method
        for name, (block, rank, scaling) in modules.items():
            assert rank == structure.rank_of(block), (method, name)
            assert scaling == pytest.approx(scale, rel=1e-12), (method, name, rank)
            ranks_seen.add(rank)
    assert len(ranks_seen) >= 3  # the methods do differ in rank: the test is not vacuous


def test_a_fixed_alpha_gives_each_rank_its_own_scale(minilm):
    base, parts = minilm
    config = load_config(None, ["method='legend'", "lora.alpha=16"])
    structure = method_structure(config, parts.num_blocks)
    modules = lora_scalings(attach_lora(copy.deepcopy(base), parts, structure), parts)
    for block, rank, scaling in modules.values():
        assert scaling == pytest.approx(16 / rank)
        assert structure.scale_of(block) == pytest.approx(16 / rank)
    assert len({rank for _, rank, _ in modules.values()}) > 1


def test_uniform_rank_8_at_scale_2_is_alpha_16():
    structure = build_structure(6, rank=8)
    assert [structure.alpha_of(b) for b in structure.lora_blocks] == [16.0] * 6


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("lora.scale=0", "lora.scale = 0.0"),
        ("lora.scale=-1", "lora.scale = -1.0"),
        ("lora.scale=nan", "lora.scale = nan"),
        ("lora.alpha=0", "lora.alpha = 0.0"),
    ],
)
def test_a_bad_scale_or_alpha_is_one_line(override, needle):
    with pytest.raises(FedquadError, match="use a number > 0") as info:
        load_config(None, [override])
    assert needle in str(info.value) and "\n" not in str(info.value)
