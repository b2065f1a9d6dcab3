"""Training and scoring throughput of the workbench on real SciFact pairs, fp32 vs bf16.

Run by hand: `python benchmarks/train_throughput.py [--model NAME] [--steps N] [--quick]`.
Prints one JSON line per (phase, precision) with pairs/s; paste the figures into the README.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from transformers import TrainerCallback, TrainingArguments

from workbench import CrossEncoder, CrossEncoderTrainer
from workbench.device import fast_bf16
from workbench.job import JobConfig, prepare_data, training_pairs


def measure_training(model_name, pairs, precision, steps, batch_size, max_length, workdir):
    model = CrossEncoder(model_name, max_length=max_length)
    args = TrainingArguments(
        output_dir=workdir,
        per_device_train_batch_size=batch_size,
        max_steps=steps + 1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = CrossEncoderTrainer(model, args, train_dataset=pairs)
    stamps = []
    trainer.add_callback(_StepClock(stamps))
    trainer.train()
    # The first step pays for warm-up; time the rest.
    elapsed = stamps[-1] - stamps[0]
    return steps * batch_size / elapsed


def measure_scoring(model_name, pairs, precision, max_length, count):
    model = CrossEncoder(model_name, max_length=max_length)
    texts = list(zip(pairs["query"][:count], pairs["passage"][:count], strict=True))
    model.predict(texts[:8], precision=precision)
    start = time.perf_counter()
    model.predict(texts, precision=precision, show_progress_bar=False)
    return count / (time.perf_counter() - start)


class _StepClock(TrainerCallback):
    def __init__(self, stamps):
        self.stamps = stamps

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ms-marco-minilm-l12")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--score-pairs", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="3 steps, 64 pairs scored")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.score_pairs = 3, 64

    pairs = training_pairs(prepare_data(JobConfig(max_train_queries=200)), negatives=3)
    pairs = pairs.shuffle(seed=0)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "fast_bf16": fast_bf16("cpu"),
        "torch": torch.__version__,
    }
    print(json.dumps({"machine": machine}))
    for precision in ("fp32", "bf16"):
        train = measure_training(
            args.model,
            pairs,
            precision,
            args.steps,
            args.batch_size,
            args.max_length,
            "/tmp/wb-bench",
        )
        score = measure_scoring(args.model, pairs, precision, args.max_length, args.score_pairs)
        print(
            json.dumps(
                {
                    "model": args.model,
                    "precision": precision,
                    "max_length": args.max_length,
                    "train_pairs_per_s": round(train, 2),
                    "score_pairs_per_s": round(score, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
