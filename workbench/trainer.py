"""Fine-tune a `CrossEncoder` with `transformers.Trainer`.

The loop, optimizer, schedule, mixed precision, checkpointing and resume are the Trainer's; this
module adds per-batch pair tokenization, the loss hook, evaluator metrics, a metrics file, and
batch samplers for in-batch losses and for several datasets with a loss each.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler, SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import seed_worker

from workbench.distributed import any_rank, broadcast_from_main
from workbench.guardrails import BaselineFirstCallback, CollapseCallback, DivergenceCallback
from workbench.losses import BinaryCrossEntropyLoss
from workbench.runs import drop_torn_tail
from workbench.sampling import (
    DATASET_KEY,
    STRATEGIES,
    LengthGroupedBatchSampler,
    MultiDatasetBatchSampler,
    NamedConcatDataset,
    NoDuplicatesBatchSampler,
    token_lengths,
)

logger = logging.getLogger(__name__)

BATCH_SAMPLERS = ("default", "no_duplicates")


class TextCollator:
    """Gather a batch of rows into text columns and a labels tensor.

    Tokenization happens in the loss, which knows how its columns pair up. A `label` column
    (pairs) becomes a float tensor of shape (batch,); a `labels` column of lists (listwise data)
    becomes (batch, longest list), padded with -1. Rows without labels give `labels = None`.
    A `dataset` key (rows of a `NamedConcatDataset`) becomes the batch's `dataset` name.

    Raises:
        ValueError: If the rows of one batch name different datasets.
    """

    def __call__(self, rows: list[dict]) -> dict:
        columns = [c for c in rows[0] if c not in ("label", "labels", DATASET_KEY)]
        batch = {"texts": {c: [row[c] for row in rows] for c in columns}}
        if DATASET_KEY in rows[0]:
            batch[DATASET_KEY] = _one_dataset(rows)
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([float(row["label"]) for row in rows])
        elif "labels" in rows[0]:
            longest = max(len(row["labels"]) for row in rows)
            padded = [list(row["labels"]) + [-1.0] * (longest - len(row["labels"])) for row in rows]
            batch["labels"] = torch.tensor(padded, dtype=torch.float32)
        return batch


def _one_dataset(rows: list[dict]) -> str:
    names = sorted({row[DATASET_KEY] for row in rows})
    if len(names) != 1:
        raise ValueError(
            f"`TextCollator` expects the rows of a batch to come from one dataset, but got "
            f"{names!r} under the reserved {DATASET_KEY!r} key. Draw batches with "
            "`MultiDatasetBatchSampler`, or rename a `dataset` column in the data."
        )
    return names[0]


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
        # A killed run may have left half a line; the resumed run's lines must not join it.
        if state.is_world_process_zero:
            drop_torn_tail(self.path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        record = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch}
        record["time"] = round(now, 3)
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
            # Pairs per optimizer step over all processes (DDP: every rank trains a batch).
            batch = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            record["pairs_per_s"] = round((state.global_step - step0) * batch / (now - time0), 2)
        self.last_step = (state.global_step, now)


class StopCallback(TrainerCallback):
    """End training cleanly on request: save a checkpoint at the current step, then stop.

    A request is a call to `request()` (e.g. from a SIGTERM handler) or the file `stop_file`
    appearing (e.g. written by the dashboard). The Trainer then saves at the end of the step it
    is in, so `resume_from_checkpoint` continues from there.

    Args:
        stop_file: Checked at the end of every step; None to rely on `request()` alone.
    """

    def __init__(self, stop_file: str | Path | None = None) -> None:
        self.stop_file = Path(stop_file) if stop_file is not None else None
        self.requested = False
        self.training = False

    def request(self) -> None:
        """Ask training to stop at the end of the current step."""
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_file is not None and self.stop_file.exists():
            self.requested = True
        # Under DDP every rank must stop at the same step, or the others wait forever.
        self.requested = any_rank(self.requested)
        if self.requested and not control.should_training_stop:
            logger.info("Stop requested: saving a checkpoint at step %d", state.global_step)
            control.should_save = True
            control.should_log = True
            control.should_training_stop = True
        return control


class CrossEncoderTrainer(Trainer):
    """A `transformers.Trainer` for cross-encoders.

    Args:
        model: The `CrossEncoder` to train (its `.model` is what the Trainer optimizes).
        args: Standard `TrainingArguments`; `remove_unused_columns` is forced off because the
            collator needs the text columns.
        train_dataset: Rows in the loss's format (pairs: `query`, `passage`, `label`), or a dict
            name -> rows to train on several datasets; then each batch comes from one dataset
            (see `MultiDatasetBatchSampler`) and `trainer.train_dataset` is their
            `NamedConcatDataset`.
        eval_dataset: Optional rows of the same shape, for an `eval_loss`; a dict name -> rows
            logs `eval_<name>_loss` each. With a dict of losses it must be a dict whose keys are
            among the losses' keys.
        loss: A module whose `forward(inputs, labels)` takes the batch's text columns and labels
            and returns a scalar or a dict of named scalars; defaults to
            `BinaryCrossEntropyLoss`. Its `check_columns`, when present, vets the dataset first.
            With a dict of datasets, one loss serves them all, or a dict with the same keys gives
            each dataset its own (each dataset's mean loss is then logged as `loss_<name>`).
        evaluator: Called with the model at each evaluation; its metrics are logged as
            `eval_<name>_<metric>` and can drive `metric_for_best_model`.
        metrics_path: Where to append the JSON-lines log (e.g. `run/metrics.jsonl`).
        callbacks: Extra Trainer callbacks. A `DivergenceCallback` (`trainer.divergence`) always
            stops training at a NaN or infinite loss. With an evaluator, a `CollapseCallback` is
            added unless one is given; add a `BaselineFirstCallback` to end on the best evaluated
            weights, the starting model's included (then see `kept_start_model`).
        batch_sampler: `"default"` (the Trainer's shuffled batches) or `"no_duplicates"` (no
            text twice in a batch, for in-batch losses; see `NoDuplicatesBatchSampler`).
        multi_dataset_sampler: With a dict of datasets, `"proportional"` or `"round_robin"`.

    Raises:
        ValueError: On an unknown sampler name, a dict of losses whose keys differ from the
            datasets', or a dataset whose columns its loss does not take.

    Example:
        >>> trainer = CrossEncoderTrainer(model, args, train_dataset=pairs, evaluator=dev)
        >>> trainer.train()
        >>> losses = {"pairs": BinaryCrossEntropyLoss(model)}
        >>> losses["tuples"] = MultipleNegativesRankingLoss(model)
        >>> both = {"pairs": pairs, "tuples": tuples}
        >>> CrossEncoderTrainer(model, args, train_dataset=both, loss=losses).train()
    """

    def __init__(
        self,
        model,
        args: TrainingArguments,
        *,
        train_dataset=None,
        eval_dataset=None,
        loss: torch.nn.Module | Mapping[str, torch.nn.Module] | None = None,
        evaluator=None,
        metrics_path: str | Path | None = None,
        callbacks: list[TrainerCallback] | None = None,
        batch_sampler: str = "default",
        multi_dataset_sampler: str = "proportional",
    ) -> None:
        if args.remove_unused_columns:
            args.remove_unused_columns = False
        self.cross_encoder = model
        self.batch_sampler = _check_choice("batch_sampler", batch_sampler, BATCH_SAMPLERS)
        self.multi_dataset_sampler = _check_choice(
            "multi_dataset_sampler", multi_dataset_sampler, STRATEGIES
        )

        # Loss and data: each dataset is vetted by its loss before any heavy work.
        self.loss = loss if loss is not None else BinaryCrossEntropyLoss(model)
        train_dataset = self._check_data(train_dataset, "train_dataset")
        eval_dataset = self._check_data(eval_dataset, "eval_dataset")
        if isinstance(train_dataset, Mapping):
            train_dataset = NamedConcatDataset(train_dataset)
        eval_dataset = self._tag_eval_sets(eval_dataset)
        self.evaluator = evaluator
        # Checkpoints then carry activation and max_length, like the final model.
        model.write_settings()

        callbacks = list(callbacks or [])
        self.divergence = DivergenceCallback()
        callbacks.append(self.divergence)
        if evaluator is not None and not any(isinstance(c, CollapseCallback) for c in callbacks):
            callbacks.append(CollapseCallback())
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

    def _check_data(self, data, argument: str):
        """Match a dataset (or dict of them) to the loss (or dict of losses) and vet columns."""
        if data is None:
            return None
        named = data if isinstance(data, Mapping) else {None: data}
        if isinstance(self.loss, Mapping):
            _check_names(self.loss, data, argument)
        for name, dataset in named.items():
            loss = self.loss[name] if isinstance(self.loss, Mapping) else self.loss
            if hasattr(loss, "check_columns"):
                loss.check_columns(dataset.column_names)
        return data

    def _tag_eval_sets(self, data):
        """With a dict of losses, wrap each eval set so its batches name the loss to use."""
        if not (isinstance(data, Mapping) and isinstance(self.loss, Mapping)):
            return data
        return {name: NamedConcatDataset({name: dataset}) for name, dataset in data.items()}

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's loader, or one whose batches come from a batch sampler.

        A batch sampler is used for `batch_sampler="no_duplicates"` and for a dict of datasets;
        the loader is then prepared by accelerate like the Trainer's own.
        """
        sampler = self._train_batch_sampler()
        if sampler is None:
            return super().get_train_dataloader()
        args = self.args
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            prefetch_factor=args.dataloader_prefetch_factor,
            in_order=args.dataloader_in_order,
            worker_init_fn=partial(
                seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index
            ),
        )
        return self.accelerator.prepare(loader)

    def _train_batch_sampler(self) -> Sampler | None:
        """The batch sampler the settings ask for, or None for the Trainer's default.

        `train_sampling_strategy="group_by_length"` groups rows of similar token length into
        batches (less padding) in every sampler here; the Trainer's own length grouping needs
        tokenized rows, and these rows are text.
        """
        multi = isinstance(self.train_dataset, NamedConcatDataset)
        grouped = self.args.train_sampling_strategy == "group_by_length"
        if not multi and self.batch_sampler == "default" and not grouped:
            return None
        if self.args.train_sampling_strategy not in ("random", "group_by_length"):
            logger.warning(
                "train_sampling_strategy=%r is ignored: batches come from a %s batch sampler. "
                "Use 'random' or 'group_by_length' to silence this.",
                self.args.train_sampling_strategy,
                "multi-dataset" if multi else "no-duplicates",
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        options = {
            "batch_size": self._train_batch_size,
            "drop_last": self.args.dataloader_drop_last,
            "seed": seed,
        }
        lengths = self._train_lengths() if grouped else None
        if multi:
            return MultiDatasetBatchSampler(
                self.train_dataset,
                strategy=self.multi_dataset_sampler,
                no_duplicates=self.batch_sampler == "no_duplicates",
                lengths=lengths,
                **options,
            )
        if self.batch_sampler == "no_duplicates":
            return NoDuplicatesBatchSampler(self.train_dataset, lengths=lengths, **options)
        return LengthGroupedBatchSampler(lengths, **options)

    def _train_lengths(self):
        """Token length of every training row, measured once per trainer."""
        if getattr(self, "_lengths", None) is None:
            start = time.time()
            self._lengths = token_lengths(
                self.train_dataset,
                self.cross_encoder.tokenizer,
                max_length=self.cross_encoder.max_length,
                column=self.args.length_column_name,
            )
            logger.info(
                "Token lengths of %d rows for length-grouped batches in %.1f s (mean %.0f)",
                len(self._lengths),
                time.time() - start,
                self._lengths.mean(),
            )
        return self._lengths

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Run the batch's loss module; dict-valued losses are summed, parts logged.

        With several datasets, the batch's `dataset` picks the loss, and in training each
        dataset's loss is also logged as `loss_<name>`.
        """
        name = inputs.get(DATASET_KEY)
        # The loss runs the model through `model`, the Trainer's wrapper (DDP, FSDP,
        # DeepSpeed) when there is one: calling the bare model skips the gradient sync.
        self.cross_encoder.training_module = model if model is not self.model else None
        try:
            loss = self._loss_for(name)(inputs["texts"], inputs.get("labels"))
        finally:
            self.cross_encoder.training_module = None
        if isinstance(loss, dict):
            if model.training:
                for part_name, part in loss.items():
                    self._loss_parts.setdefault(part_name, []).append(part.detach().item())
            loss = torch.stack(list(loss.values())).sum()
        if name is not None and model.training:
            self._loss_parts.setdefault(name, []).append(loss.detach().item())
        if model.training:
            self.divergence.record(loss)
        return (loss, {}) if return_outputs else loss

    def _loss_for(self, name: str | None) -> torch.nn.Module:
        if not isinstance(self.loss, Mapping):
            return self.loss
        if name not in self.loss:
            raise ValueError(
                f"A dict of losses picks the loss by the batch's dataset name, one of "
                f"{sorted(self.loss)!r}, but got {name!r}. Pass datasets as a dict with the "
                "losses' keys."
            )
        return self.loss[name]

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

    def _get_eval_sampler(self, eval_dataset):
        """Eval rows in order. The Trainer's length grouping for eval needs tokenized rows;
        these are text, and the eval loss does not depend on the order."""
        if eval_dataset is None or self.args.world_size > 1:
            return None
        return SequentialSampler(eval_dataset)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Eval loss (when an eval dataset is set) plus the evaluator's metrics."""
        metrics = {}
        eval_dataset = self._tag_eval_sets(eval_dataset)
        sets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(sets, Mapping):
            # One Trainer evaluation per set here, so the evaluator below runs once, not per set.
            for name, dataset in sets.items():
                # A name (not the set) keeps the Trainer's per-set loader cache apart.
                chosen = dataset if eval_dataset is not None else name
                prefix = f"{metric_key_prefix}_{name}"
                metrics |= super().evaluate(chosen, ignore_keys, prefix)
        elif sets is not None:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.evaluator is None:
            return metrics

        start = time.time()
        self.cross_encoder.device = self.args.device
        # Rank 0 scores and the others take its metrics: every rank must see the same values,
        # since checkpoint choices (and the barriers around them) follow from them.
        scores = self.evaluator(self.cross_encoder) if self.is_world_process_zero() else None
        scores = broadcast_from_main(scores)
        extra = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
        extra[f"{metric_key_prefix}_evaluator_runtime"] = round(time.time() - start, 2)
        metrics |= extra
        # Callbacks see the metrics before they are logged, so guardrails can add theirs.
        logged = set(metrics) - set(extra)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics=metrics
        )
        self.log({k: v for k, v in metrics.items() if k not in logged})
        return metrics

    @property
    def kept_start_model(self) -> bool:
        """True when a `BaselineFirstCallback` ended training on the starting model's weights."""
        return any(
            isinstance(c, BaselineFirstCallback) and c.kept_start
            for c in self.callback_handler.callbacks
        )


def _check_choice(argument: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(
            f"`CrossEncoderTrainer` expects {argument} in {choices}, but got {value!r}."
        )
    return value


def _check_names(losses: Mapping, data, argument: str) -> None:
    """Raise `ValueError` unless `data` is a dict whose keys fit the dict of losses."""
    if not isinstance(data, Mapping):
        raise ValueError(
            f"A dict of losses expects {argument} as a dict with the same keys "
            f"({sorted(losses)!r}), but got a {type(data).__name__}. Pass {{name: dataset}}, or "
            "a single loss."
        )
    # Training needs a loss for every dataset and a dataset for every loss; eval sets may be fewer.
    fits = set(data) <= set(losses) if argument == "eval_dataset" else set(data) == set(losses)
    if not fits:
        raise ValueError(
            f"`loss` and {argument} expect matching keys, but the losses have "
            f"{sorted(losses)!r} and {argument} has {sorted(data)!r}. Give each dataset a "
            "loss under its name."
        )
