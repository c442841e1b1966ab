"""Planning time for a large fleet: every method plans one round of N devices (default 10,000)
drawn from the built-in tiers, on a cost profile with the measured MiniLM numbers.

    .venv/bin/python benchmarks/plan_speed.py [--devices 10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedquad.config import PlannerConfig, QuantConfig
from fedquad.cost.fleet import MIB, Device
from fedquad.cost.model import CostProfile, full_footprint
from fedquad.planners import METHODS, PlanContext, plan_round


def profile() -> CostProfile:
    per_rank = 6912
    return CostProfile(
        num_blocks=6,
        frozen_weight_bytes=round(86.6 * MIB),
        lora_params=(8 * per_rank,) * 6,
        head_params=770,
        saved_bytes=(round(90.4 * MIB),) * 6,
        saved_bytes_bottom=(round(88.0 * MIB),) * 6,
        quant_ratio={8: 0.258, 4: 0.133, 2: 0.070},
        head_saved_bytes=40_000,
        f=0.09,
        g=0.24,
        o=0.05,
        c=0.02,
        lora_ranks=(8,) * 6,
        saved_bytes_path=(round(60.0 * MIB),) * 6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args()
    p = profile()
    footprint = full_footprint(p, 8)
    rng = np.random.default_rng(0)
    tiers = rng.choice(3, args.devices, p=[3 / 8, 4 / 8, 1 / 8])
    devices = [
        Device(
            i,
            ("small", "medium", "large")[t],
            (2.66, 1.44, 1.0)[t],
            int((0.4, 1.2, 2.0)[t] * footprint),
            float(rng.uniform(1e6, 3e6)),
            15e6,
        )
        for i, t in enumerate(tiers)
    ]
    print(f"{'method':16} {'deadline':9} {'seconds':>8} {'train':>6} {'sit out':>8}")
    for deadline in ("anchored", "search"):
        for name in METHODS:
            ctx = PlanContext(
                profile=p,
                lora_depth=6,
                quant=QuantConfig(),
                options=PlannerConfig(deadline=deadline),
                num_samples=dict.fromkeys(range(args.devices), 50),
            )
            start = time.perf_counter()
            plan = plan_round(name, devices, ctx, np.random.default_rng(1))
            seconds = time.perf_counter() - start
            print(
                f"{name:16} {deadline:9} {seconds:8.3f} {len(plan.configs):6} {len(plan.sat_out):8}"
            )


if __name__ == "__main__":
    main()
