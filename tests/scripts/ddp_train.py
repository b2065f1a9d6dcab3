"""Train the tiny model on 64 real SciFact pairs under torchrun (one process per rank, gloo on
CPU); each rank writes its step count and whether its weights moved, for tests/test_ddp.py.

Run: `torchrun --nproc_per_node 2 tests/scripts/ddp_train.py OUTPUT_DIR`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback, TrainingArguments

from workbench import BinaryCrossEntropyLoss, CrossEncoder, CrossEncoderTrainer
from workbench.job import JobConfig, prepare_data, training_pairs


class StepCounter(TrainerCallback):
    """Counts this rank's optimizer steps."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def main(output: Path) -> None:
    data = prepare_data(JobConfig(dev_queries=0, max_train_queries=16, max_test_queries=1))
    pairs = training_pairs(data, 3).select(range(64))
    model = CrossEncoder("minilm-l6-tiny", max_length=48)
    before = model.model.classifier.weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(output / "checkpoints"),
        per_device_train_batch_size=4,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        ddp_backend="gloo",
        seed=0,
    )
    recorder = StepCounter()
    trainer = CrossEncoderTrainer(
        model,
        args,
        train_dataset=pairs,
        loss=BinaryCrossEntropyLoss(model, pos_weight=3.0),
        metrics_path=output / "metrics.jsonl",
        callbacks=[recorder],
    )
    trainer.train()
    rank = dist.get_rank()
    changed = not model.model.classifier.weight.detach().equal(before)
    record = {"rank": rank, "world": dist.get_world_size(), "steps": recorder.steps}
    record["changed"] = changed
    (output / f"rank{rank}.json").write_text(json.dumps(record))
    if trainer.is_world_process_zero():
        model.save_pretrained(output / "final")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
