"""Fine-tune a `CrossEncoder` with `transformers.Trainer`.

The loop, optimizer, schedule, mixed precision, checkpointing and resume are the Trainer's; this
module adds per-batch pair tokenization, the loss hook, evaluator metrics, and a metrics file.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from workbench.losses import BinaryCrossEntropyLoss

logger = logging.getLogger(__name__)


class TextCollator:
    """Gather a batch of rows into text columns and a labels tensor.

    Tokenization happens in the loss, which knows how its columns pair up. A `label` column
    (pairs) becomes a float tensor of shape (batch,); a `labels` column of lists (listwise data)
    becomes (batch, longest list), padded with -1. Rows without labels give `labels = None`.
    """

    def __call__(self, rows: list[dict]) -> dict:
        columns = [c for c in rows[0] if c not in ("label", "labels")]
        batch = {"texts": {c: [row[c] for row in rows] for c in columns}}
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([float(row["label"]) for row in rows])
        elif "labels" in rows[0]:
            longest = max(len(row["labels"]) for row in rows)
            padded = [list(row["labels"]) + [-1.0] * (longest - len(row["labels"])) for row in rows]
            batch["labels"] = torch.tensor(padded, dtype=torch.float32)
        return batch


class MetricsFileCallback(TrainerCallback):
    """Append every Trainer log event (training and evaluation) to a JSON-lines file.

    Each line is flushed at once, so a killed run keeps everything logged before it died.

    Args:
        path: The `metrics.jsonl` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.start = time.time()
        self.last_step = (0, self.start)

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run starts counting throughput from its checkpoint's step.
        self.last_step = (state.global_step, time.time())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(now, 3)}
        record |= {"elapsed_s": round(now - self.start, 2), **logs}
        self._add_throughput(record, args, state, now)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if "loss" in logs:
            logger.info(
                "step %d/%d  loss %.4f  lr %.2e  %.1f pairs/s",
                state.global_step,
                state.max_steps,
                logs["loss"],
                logs.get("learning_rate", 0.0),
                record.get("pairs_per_s", 0.0),
            )

    def _add_throughput(self, record: dict, args, state, now: float) -> None:
        if "loss" not in record:
            return
        step0, time0 = self.last_step
        if state.global_step > step0:
            batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
            record["pairs_per_s"] = round((state.global_step - step0) * batch / (now - time0), 2)
        self.last_step = (state.global_step, now)


class CrossEncoderTrainer(Trainer):
    """A `transformers.Trainer` for cross-encoders.

    Args:
        model: The `CrossEncoder` to train (its `.model` is what the Trainer optimizes).
        args: Standard `TrainingArguments`; `remove_unused_columns` is forced off because the
            collator needs the text columns.
        train_dataset: Rows in the loss's format (pairs: `query`, `passage`, `label`).
        eval_dataset: Optional rows of the same shape, for an `eval_loss`.
        loss: A module whose `forward(inputs, labels)` takes the batch's text columns and labels
            and returns a scalar or a dict of named scalars; defaults to
            `BinaryCrossEntropyLoss`. Its `check_columns`, when present, vets the dataset first.
        evaluator: Called with the model at each evaluation; its metrics are logged as
            `eval_<name>_<metric>` and can drive `metric_for_best_model`.
        metrics_path: Where to append the JSON-lines log (e.g. `run/metrics.jsonl`).
        callbacks: Extra Trainer callbacks.

    Example:
        >>> trainer = CrossEncoderTrainer(model, args, train_dataset=pairs, evaluator=dev)
        >>> trainer.train()
    """

    def __init__(
        self,
        model,
        args: TrainingArguments,
        *,
        train_dataset=None,
        eval_dataset=None,
        loss: torch.nn.Module | None = None,
        evaluator=None,
        metrics_path: str | Path | None = None,
        callbacks: list[TrainerCallback] | None = None,
    ) -> None:
        if args.remove_unused_columns:
            args.remove_unused_columns = False
        self.cross_encoder = model
        self.loss = loss if loss is not None else BinaryCrossEntropyLoss(model)
        for dataset in (train_dataset, eval_dataset):
            if dataset is not None and hasattr(self.loss, "check_columns"):
                self.loss.check_columns(dataset.column_names)
        self.evaluator = evaluator
        # Checkpoints then carry activation and max_length, like the final model.
        model.write_settings()

        callbacks = list(callbacks or [])
        if metrics_path is not None:
            callbacks.append(MetricsFileCallback(metrics_path))
        # Trainer refuses an eval strategy without an eval dataset; an evaluator is enough here,
        # so a placeholder passes that check and is cleared right after.
        placeholder = eval_dataset is None and evaluator is not None
        super().__init__(
            model=model.model,
            args=args,
            data_collator=TextCollator(),
            train_dataset=train_dataset,
            eval_dataset={} if placeholder else eval_dataset,
            processing_class=model.tokenizer,
            callbacks=callbacks,
        )
        if placeholder:
            self.eval_dataset = None
        self.cross_encoder.device = self.args.device
        # The loss scales itself per batch; Trainer must not count label tokens for it.
        self.model_accepts_loss_kwargs = False
        self._loss_parts: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Run the loss module on one batch; dict-valued losses are summed, parts logged."""
        loss = self.loss(inputs["texts"], inputs.get("labels"))
        if isinstance(loss, dict):
            for name, part in loss.items():
                self._loss_parts.setdefault(name, []).append(part.detach().item())
            loss = torch.stack(list(loss.values())).sum()
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Eval loss only: the loss module decides what a batch means, labels or not."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each named loss part since the last log to training logs."""
        if "loss" in logs and self._loss_parts:
            logs |= {f"loss_{k}": round(sum(v) / len(v), 6) for k, v in self._loss_parts.items()}
            self._loss_parts = {}
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Eval loss (when an eval dataset is set) plus the evaluator's metrics."""
        metrics = {}
        if eval_dataset is not None or self.eval_dataset is not None:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.evaluator is None:
            return metrics

        start = time.time()
        self.cross_encoder.device = self.args.device
        scores = self.evaluator(self.cross_encoder)
        extra = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
        extra[f"{metric_key_prefix}_evaluator_runtime"] = round(time.time() - start, 2)
        self.log(extra)
        metrics |= extra
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics=metrics
        )
        return metrics
