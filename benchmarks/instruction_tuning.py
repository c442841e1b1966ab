"""Before/after of federated instruction tuning: the untuned model's answers to the held-out
prompts, then the federated run of the same config and its tuned answers. Prints the answer
accuracy (normalised first word against the label word), the answer loss and perplexity of
both, the majority-answer share of the held-out prompts, and a few generated examples.

    .venv/bin/python benchmarks/instruction_tuning.py [--config smollm2-foods]
        [--set key=value ...] [--skip-run]
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import fedquad
from fedquad.config import load_config
from fedquad.quiet import quiet_libraries
from fedquad.train.generate import PromptTestSet
from fedquad.train.local import evaluate
from fedquad.workbench import build_workbench


def untuned(config: fedquad.ExperimentConfig) -> tuple[dict[str, float], PromptTestSet]:
    bench = build_workbench(config)
    data = bench.test_data
    if not isinstance(data, PromptTestSet):
        raise SystemExit("this benchmark needs model.task = 'causal-lm'")
    return evaluate(bench.model, data, config.train.eval_batch_size), data


def show(label: str, result: dict[str, float]) -> None:
    accuracy = result.get("accuracy")
    shown = "n/a" if accuracy is None else f"{accuracy:.3f}"
    print(
        f"{label:8} accuracy {shown:>6}  answer loss {result['loss']:.4f}  "
        f"perplexity {result['perplexity']:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="smollm2-foods")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--skip-run", action="store_true", help="evaluate the untuned model only")
    args = parser.parse_args()
    quiet_libraries()
    config = load_config(args.config, args.overrides)
    start = time.perf_counter()
    before, data = untuned(config)
    print(
        f"{len(data['input_ids'])} held-out prompts, untuned in {time.perf_counter() - start:.0f} s"
    )
    if data.answers:
        word, count = collections.Counter(data.answers).most_common(1)[0]
        print(f"majority answer {word!r}: {count / len(data.answers):.3f} of the prompts")
    show("untuned", before)
    print(json.dumps(data.examples, indent=1, ensure_ascii=False))
    if args.skip_run:
        return
    start = time.perf_counter()
    summary = fedquad.run(load_config(args.config, args.overrides)).summary
    after = {
        "accuracy": summary["final_accuracy"],
        "loss": summary["final_test_loss"],
        "perplexity": summary["final_test_perplexity"],
    }
    print(f"run: {time.perf_counter() - start:.0f} s end to end")
    show("tuned", after)
    if before.get("accuracy") is not None and after["accuracy"] is not None:
        print(f"gain: {100 * (after['accuracy'] - before['accuracy']):+.1f} points")
    print(json.dumps(summary["examples"], indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
