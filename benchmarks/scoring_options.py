"""Options for the scoring and training paths that the issue lists, measured side by side.

Run by hand: `python benchmarks/scoring_options.py [--quick] [--pairs N] [--steps N]`.
Every option runs in its own process on the same real pairs: SciFact test's BM25 top-30
(ms-marco-MiniLM-L-12-v2, 256 tokens, batch 32) for scoring, and the main job's training pairs
(bottom 8 layers frozen, batch 16) for training. Prints one JSON line per option, then a
Markdown table with each option's ratio to the path the workbench ships (`autocast`).

Scoring options:
- `autocast`: what `predict(precision="bf16")` does: fp32 weights under bf16 autocast;
- `bf16-weights`: the weights cast to bf16 once, no autocast;
- `eager-attention`: autocast with `attn_implementation="eager"` instead of SDPA;
- `compile`: autocast around `torch.compile(model, dynamic=True)`, warm-up excluded;
- `pretokenized`: autocast with every batch tokenized before the clock starts (what caching
  tokens would save at most);
- `fp32`: no autocast, for reference.
Training options: `autocast` (the job's path) and `compile` (the Trainer's `torch_compile`).
`--quick` scores 320 pairs and trains 10 steps (say so when reporting).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import vs_sentence_transformers as bench

MODEL = bench.MODEL
SCORING = ("autocast", "bf16-weights", "eager-attention", "compile", "pretokenized", "fp32")
TRAINING = ("autocast", "compile")


def measure_scoring(option: str, count: int) -> dict:
    import numpy as np
    import torch

    from workbench import CrossEncoder

    pairs = bench.evaluator_pairs(bench.scifact_candidates(None))[:count]
    model = CrossEncoder(MODEL, max_length=256)
    if option == "eager-attention":
        model.model.set_attn_implementation("eager")
    precision = "fp32" if option in ("fp32", "bf16-weights") else "bf16"
    if option == "bf16-weights":
        model.model.to(torch.bfloat16)
    if option == "compile":
        model.model = torch.compile(model.model, dynamic=True)
    order = np.argsort(-model.token_lengths(pairs), kind="stable")
    batches = [[pairs[i] for i in order[s : s + 32]] for s in range(0, len(pairs), 32)]
    features = [model.tokenize(b) for b in batches] if option == "pretokenized" else None

    def run(limit: int | None = None) -> float:
        start = time.perf_counter()
        model.model.eval()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, precision == "bf16"):
            for i, batch in enumerate(batches[:limit]):
                inputs = features[i] if features else model.tokenize(batch)
                model.model(**inputs).logits.float()
        return time.perf_counter() - start

    warmup = run(2)  # compile pays here (and again for each new sequence length range)
    seconds = run()
    return {
        "part": "scoring",
        "option": option,
        "pairs": len(pairs),
        "pairs_per_s": round(len(pairs) / seconds, 2),
        "warmup_s": round(warmup, 1),
        "threads": torch.get_num_threads(),
    }


def measure_training(option: str, steps: int) -> dict:
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from workbench import BinaryCrossEntropyLoss, CrossEncoder, CrossEncoderTrainer
    from workbench.layers import freeze_bottom_layers, set_attention_dropout

    pairs = bench.train_pairs()
    model = CrossEncoder(MODEL, max_length=256)
    freeze_bottom_layers(model, 8)
    set_attention_dropout(model, 0.0)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(
            output_dir=folder,
            per_device_train_batch_size=16,
            max_steps=steps + 2,
            learning_rate=3e-5,
            save_strategy="no",
            report_to="none",
            bf16=True,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            torch_compile=option == "compile",
            train_sampling_strategy="group_by_length",
        )
        loss = BinaryCrossEntropyLoss(model, pos_weight=3.0)
        trainer = CrossEncoderTrainer(model, args, train_dataset=pairs, loss=loss)
        trainer.add_callback(Clock())
        start = time.perf_counter()
        trainer.train()
    # The first two steps pay for warm-up (and compilation); time the rest.
    return {
        "part": "training",
        "option": option,
        "pairs": steps * 16,
        "pairs_per_s": round(steps * 16 / (stamps[-1] - stamps[1]), 2),
        "warmup_s": round(stamps[1] - start, 1),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| part | option | pairs | pairs/s | x shipped | warm-up s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = next(r for r in rows if r["part"] == row["part"] and r["option"] == "autocast")
        lines.append(
            f"| {row['part']} | {row['option']} | {row['pairs']} | {row['pairs_per_s']} "
            f"| {row['pairs_per_s'] / base['pairs_per_s']:.2f} | {row['warmup_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=1600)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--parts", default="scoring,training")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        part, option, size = args.one
        measure = measure_scoring if part == "scoring" else measure_training
        print(json.dumps(measure(option, int(size))))
        return
    if args.quick:
        args.pairs, args.steps = 320, 10
    cases = []
    if "scoring" in args.parts:
        cases += [["scoring", o, str(args.pairs)] for o in SCORING]
    if "training" in args.parts:
        cases += [["training", o, str(args.steps)] for o in TRAINING]
    print(table(bench.run_cases(__file__, cases)))


if __name__ == "__main__":
    main()
