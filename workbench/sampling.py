"""Batch samplers: which rows share a batch, for in-batch losses, for training on several
datasets at once (each batch from one dataset, so each dataset keeps its own loss), and for
batches of rows of similar token length (less padding).
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Iterator, Mapping

import numpy as np
from torch.utils.data import Dataset, Sampler

logger = logging.getLogger(__name__)

# Key under which rows of a `NamedConcatDataset`, and the batches made of them, name their dataset.
DATASET_KEY = "dataset"
LABEL_COLUMNS = ("label", "labels")
STRATEGIES = ("proportional", "round_robin")
# Length grouping sorts runs of this many batches by length (the Trainer's LengthGroupedSampler
# uses 50 too): long enough to cut padding, short enough to keep batches random.
GROUP_BATCHES = 50
# Rows read from a dataset at a time when scanning a column (lengths, duplicate texts).
_SCAN_ROWS = 1024


class NamedConcatDataset(Dataset):
    """Several datasets end to end; each row also carries its dataset's name under `dataset`.

    This is the index space of `MultiDatasetBatchSampler`: the rows of the first dataset, then
    those of the second, in mapping order.

    Args:
        datasets: Name -> rows (a `datasets.Dataset`, or any sized indexable of dict rows).

    Raises:
        ValueError: If the mapping is empty, a dataset has no rows, or one has a `dataset`
            column (the name is reserved for the tag).

    Example:
        >>> both = NamedConcatDataset({"pairs": pairs, "tuples": tuples})
        >>> both[len(pairs)]["dataset"]
        'tuples'
    """

    def __init__(self, datasets: Mapping[str, Dataset]) -> None:
        if not datasets:
            raise ValueError(
                "`NamedConcatDataset` expects at least one dataset, but got an empty mapping. "
                "Pass {name: dataset}."
            )
        self.datasets = dict(datasets)
        self.offsets: dict[str, int] = {}
        total = 0
        for name, dataset in self.datasets.items():
            _check_part(name, dataset)
            self.offsets[name] = total
            total += len(dataset)
        self._starts = list(self.offsets.values())
        self._names = list(self.offsets)
        self._length = total

    def __len__(self) -> int:
        return self._length

    def locate(self, index: int) -> tuple[str, int]:
        """The dataset name and the row number inside it of a global `index`."""
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} is out of range for {self._length} rows")
        position = bisect.bisect_right(self._starts, index) - 1
        return self._names[position], index - self._starts[position]

    def __getitem__(self, index: int) -> dict:
        name, local = self.locate(index)
        return {**self.datasets[name][local], DATASET_KEY: name}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Rows of a batch; one batched read when all come from one dataset (the usual case)."""
        located = [self.locate(i) for i in indices]
        names = {name for name, _ in located}
        dataset = self.datasets[located[0][0]] if located else None
        if len(names) == 1 and hasattr(dataset, "__getitems__"):
            name = names.pop()
            rows = dataset.__getitems__([local for _, local in located])
            return [{**row, DATASET_KEY: name} for row in rows]
        return [{**self.datasets[name][local], DATASET_KEY: name} for name, local in located]


class _EpochBatchSampler(Sampler[list[int]]):
    """Base of the samplers here: one plan of batches per epoch, fixed by the seed and the epoch.

    The plan is made once per epoch and kept, so `len` is exact and iterating repeats it.
    """

    def __init__(self, batch_size: int, *, drop_last: bool, seed: int) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"{type(self).__name__} expects batch_size to be a positive integer, but got "
                f"{batch_size!r}."
            )
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None
        self._first_len: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (the Trainer calls this at the start of each epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        length = len(self._batches())
        if self._first_len is None:
            self._first_len = length
        return length

    def _batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._cached = (self.epoch, self._plan(rng))
            self._warn_if_longer(self._cached[1])
        return self._cached[1]

    def _warn_if_longer(self, batches: list[list[int]]) -> None:
        # Known gap: the Trainer reads `len` once and sizes every epoch by it. A later epoch whose
        # shuffle needs more (short) batches has its last ones skipped; say so rather than hide it.
        extra = len(batches) - (self._first_len or len(batches))
        if extra > 0:
            logger.warning(
                "Epoch %d has %d batches, %d more than the first; a loop that sizes every epoch "
                "by the first `len` (the Trainer does) skips the last %d (%d rows) this epoch",
                self.epoch,
                len(batches),
                extra,
                extra,
                sum(map(len, batches[-extra:])),
            )

    def _plan(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError


class _RandomBatchSampler(_EpochBatchSampler):
    """Shuffled rows cut into batches: the Trainer's default, per dataset.

    With `lengths`, rows are grouped by length first (see `LengthGroupedBatchSampler`).
    """

    def __init__(
        self,
        length: int,
        *,
        batch_size: int,
        drop_last: bool,
        seed: int,
        lengths: np.ndarray | None = None,
    ) -> None:
        super().__init__(batch_size, drop_last=drop_last, seed=seed)
        self.length = length
        self.lengths = _check_lengths(lengths, length)

    def _plan(self, rng: np.random.Generator) -> list[list[int]]:
        if self.lengths is None:
            order = rng.permutation(self.length).tolist()
        else:
            order = length_grouped_order(rng, self.lengths, GROUP_BATCHES * self.batch_size)
        batches = [order[i : i + self.batch_size] for i in range(0, self.length, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.lengths is not None:
            batches = shuffle_batches(rng, batches, self.lengths)
        return batches


class LengthGroupedBatchSampler(_RandomBatchSampler):
    """Shuffled batches of rows of similar token length: less padding, every row once per epoch.

    Rows are shuffled, runs of `GROUP_BATCHES` batches' worth are sorted by length and cut into
    batches, and the batches are shuffled, with the one holding the longest row first (the worst
    memory shows at once). This is `train_sampling_strategy="group_by_length"` for text rows,
    which the Trainer's own `LengthGroupedSampler` cannot measure.

    Args:
        lengths: Each row's length in tokens (see `token_lengths`).
        batch_size: Rows per batch.
        drop_last: Drop the one short batch.
        seed: Seed of the shuffles; the plan depends only on it and the epoch.

    Raises:
        ValueError: If `batch_size` is not positive.

    Example:
        >>> lengths = token_lengths(pairs, model.tokenizer, max_length=256)
        >>> sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=12)
    """

    def __init__(self, lengths, *, batch_size: int, drop_last: bool = False, seed: int = 0) -> None:
        lengths = np.asarray(lengths)
        super().__init__(
            len(lengths), batch_size=batch_size, drop_last=drop_last, seed=seed, lengths=lengths
        )


class NoDuplicatesBatchSampler(_EpochBatchSampler):
    """Batches in which no text appears twice, for in-batch losses.

    In-batch losses (`MultipleNegativesRankingLoss`, `CachedMultipleNegativesRankingLoss`) take
    the other rows' passages as negatives: a second row with the same query or passage would turn
    a positive into a negative. Rows are shuffled, then each batch takes the next rows none of
    whose texts (every value of the text columns, each element of a list column such as
    `documents`) is in the batch yet; a row that clashes goes first in the next batch. No row is
    dropped: when the rows left share texts, the last batches come out short, and their count is
    logged.

    The plan depends only on `seed` and the epoch (`set_epoch`, which the Trainer calls).

    Args:
        dataset: Rows with named columns (a `datasets.Dataset`).
        batch_size: Rows per batch.
        columns: Columns whose values may not repeat in a batch; all but `label` and `labels`
            when None.
        drop_last: Drop the short batches (their count and rows are logged).
        seed: Seed of the shuffle.
        lengths: Each row's token length; when given, rows are taken in length-grouped order
            (see `LengthGroupedBatchSampler`) and the batches then shuffled.

    Raises:
        TypeError: If `dataset` has no `column_names`.
        ValueError: If `batch_size` is not positive, a column is missing, or `lengths` does
            not have one value per row.

    Example:
        >>> sampler = NoDuplicatesBatchSampler(tuples, batch_size=16, seed=12)
        >>> loader = DataLoader(tuples, batch_sampler=sampler, collate_fn=TextCollator())
    """

    def __init__(
        self,
        dataset,
        *,
        batch_size: int,
        columns: list[str] | None = None,
        drop_last: bool = False,
        seed: int = 0,
        lengths: np.ndarray | None = None,
    ) -> None:
        super().__init__(batch_size, drop_last=drop_last, seed=seed)
        names = getattr(dataset, "column_names", None)
        if names is None:
            raise TypeError(
                "`NoDuplicatesBatchSampler` expects a `datasets.Dataset` (with column_names), "
                f"but got {type(dataset).__name__}. Build one with `datasets.Dataset.from_dict`."
            )
        columns = [c for c in names if c not in LABEL_COLUMNS] if columns is None else columns
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(
                f"`NoDuplicatesBatchSampler` expects columns {missing!r} in the dataset, but it "
                f"has {names!r}. Pass `columns` from those."
            )
        self.columns = list(columns)
        self._texts = _row_texts(dataset, self.columns)
        self.lengths = _check_lengths(lengths, len(self._texts))

    def _plan(self, rng: np.random.Generator) -> list[list[int]]:
        if self.lengths is None:
            queue = deque(rng.permutation(len(self._texts)).tolist())
        else:
            group = GROUP_BATCHES * self.batch_size
            queue = deque(length_grouped_order(rng, self.lengths, group))
        batches = []
        while queue:
            batches.append(self._fill(queue))

        short = [b for b in batches if len(b) < self.batch_size]
        if short:
            logger.info(
                "No-duplicates batches, epoch %d: %d of %d came out short of %d rows (%d rows "
                "left at the end share texts, or the rows do not divide evenly)",
                self.epoch,
                len(short),
                len(batches),
                self.batch_size,
                sum(map(len, short)),
            )
        if self.drop_last and short:
            logger.info("Dropped the %d short batches, as drop_last asks", len(short))
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.lengths is not None:
            batches = shuffle_batches(rng, batches, self.lengths)
        return batches

    def _fill(self, queue: deque) -> list[int]:
        """Take one batch from the front of `queue`; rows that clash go back to its front."""
        batch, seen, waiting = [], set(), []
        while queue and len(batch) < self.batch_size:
            index = queue.popleft()
            texts = self._texts[index]
            if seen.isdisjoint(texts):
                batch.append(index)
                seen.update(texts)
            else:
                waiting.append(index)
        # Each waiting row is scanned again per batch: cheap unless most rows share one text.
        queue.extendleft(reversed(waiting))
        return batch


class MultiDatasetBatchSampler(_EpochBatchSampler):
    """Batches over several datasets, each batch from exactly one of them.

    Indices are global in `dataset` (a `NamedConcatDataset`), whose rows name their dataset, so
    every batch records where it came from and the trainer can apply that dataset's loss. Inside
    each dataset, rows are shuffled (or arranged by `NoDuplicatesBatchSampler`) into batches.

    Strategies:
        - `"proportional"`: every batch of every dataset, once per epoch, interleaved at random;
          each dataset gives batches in proportion to its size.
        - `"round_robin"`: one batch from each dataset in turn, in mapping order, until the
          smallest dataset runs out: each gives as many batches as the smallest has, and the
          other datasets' remaining batches wait for the next epoch's reshuffle.

    Args:
        dataset: The datasets end to end.
        batch_size: Rows per batch.
        strategy: `"proportional"` or `"round_robin"`.
        no_duplicates: Arrange each dataset's batches with `NoDuplicatesBatchSampler`.
        drop_last: Drop each dataset's incomplete batches.
        seed: Seed of the shuffles.
        lengths: Token length of each row of `dataset` (global order); when given, each
            dataset's batches are length-grouped.

    Raises:
        TypeError: If `dataset` is not a `NamedConcatDataset`.
        ValueError: If `strategy` is unknown or `batch_size` is not positive.

    Example:
        >>> both = NamedConcatDataset({"pairs": pairs, "tuples": tuples})
        >>> sampler = MultiDatasetBatchSampler(both, batch_size=16, strategy="round_robin")
    """

    def __init__(
        self,
        dataset: NamedConcatDataset,
        *,
        batch_size: int,
        strategy: str = "proportional",
        no_duplicates: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        lengths: np.ndarray | None = None,
    ) -> None:
        super().__init__(batch_size, drop_last=drop_last, seed=seed)
        if not isinstance(dataset, NamedConcatDataset):
            raise TypeError(
                "`MultiDatasetBatchSampler` expects a `NamedConcatDataset`, but got "
                f"{type(dataset).__name__}. Wrap the datasets: `NamedConcatDataset({{name: ...}})`."
            )
        if strategy not in STRATEGIES:
            raise ValueError(
                f"`MultiDatasetBatchSampler` expects strategy in {STRATEGIES}, but got "
                f"{strategy!r}."
            )
        self.dataset = dataset
        self.strategy = strategy
        # Each dataset shuffles with its own seed, so equal-sized datasets differ in order.
        options = {"batch_size": batch_size, "drop_last": drop_last}
        lengths = _check_lengths(lengths, len(dataset))
        self.samplers: dict[str, _EpochBatchSampler] = {}
        for k, (name, part) in enumerate(dataset.datasets.items()):
            start = dataset.offsets[name]
            options |= {
                "seed": seed + 1 + k,
                "lengths": None if lengths is None else lengths[start : start + len(part)],
            }
            self.samplers[name] = (
                NoDuplicatesBatchSampler(part, **options)
                if no_duplicates
                else _RandomBatchSampler(len(part), **options)
            )

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle every dataset and the interleaving for `epoch`."""
        super().set_epoch(epoch)
        for sampler in self.samplers.values():
            sampler.set_epoch(epoch)

    def _plan(self, rng: np.random.Generator) -> list[list[int]]:
        local = {name: list(sampler) for name, sampler in self.samplers.items()}
        if self.strategy == "proportional":
            order = [name for name, batches in local.items() for _ in batches]
            rng.shuffle(order)
        else:
            rounds = min(len(batches) for batches in local.values())
            order = list(local) * rounds
            self._log_left_out(local, rounds)

        cursors = {name: iter(batches) for name, batches in local.items()}
        offsets = self.dataset.offsets
        return [[offsets[name] + i for i in next(cursors[name])] for name in order]

    def _log_left_out(self, local: dict[str, list], rounds: int) -> None:
        left_out = sum(len(batches) - rounds for batches in local.values())
        if left_out:
            smallest = min(local, key=lambda name: len(local[name]))
            logger.info(
                "Round robin, epoch %d: %d batches from each dataset (as many as %r has); %d "
                "batches of the larger datasets sit this epoch out",
                self.epoch,
                rounds,
                smallest,
                left_out,
            )


def _check_part(name: str, dataset) -> None:
    """Raise `ValueError` for a dataset that cannot join a `NamedConcatDataset`."""
    if len(dataset) == 0:
        raise ValueError(f"Dataset {name!r} has no rows; drop it or fill it before training.")
    if DATASET_KEY in (getattr(dataset, "column_names", None) or []):
        raise ValueError(
            f"Dataset {name!r} has a {DATASET_KEY!r} column, but that name is reserved for the "
            "dataset tag of each row. Rename the column."
        )


def length_grouped_order(rng: np.random.Generator, lengths: np.ndarray, group: int) -> list[int]:
    """A random order of rows in which each run of `group` rows is sorted longest first."""
    order = rng.permutation(len(lengths))
    runs = [order[i : i + group] for i in range(0, len(order), group)]
    return [int(i) for run in runs for i in run[np.argsort(-lengths[run], kind="stable")]]


def shuffle_batches(
    rng: np.random.Generator, batches: list[list[int]], lengths: np.ndarray
) -> list[list[int]]:
    """Batches in random order, except that the one holding the longest row goes first and a
    short batch goes last (where DDP's batch sharding expects it; elsewhere it drops a round)."""
    if not batches:
        return batches
    size = max(len(b) for b in batches)
    short = [b for b in batches if len(b) < size]
    batches = [b for b in batches if len(b) == size]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    if not batches:
        return short
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b]].max())
    return [batches[longest], *batches[:longest], *batches[longest + 1 :], *short]


def token_lengths(
    dataset, tokenizer, *, max_length: int | None = None, column: str = "length"
) -> np.ndarray:
    """Each row's length in tokens: what its batch will be padded to, at most.

    A row's length is its longest (query, text) pair after truncation to `max_length`, over
    every other text column and each element of a list column (`documents`); the loss pads a
    batch to its longest pair. A `column` of precomputed lengths (the Trainer's
    `length_column_name`) is used as it is. Rows are read and tokenized in chunks, so the
    texts are never all held in memory at once.

    Args:
        dataset: Rows with a `query` column (a `datasets.Dataset` or a `NamedConcatDataset`).
        tokenizer: The model's tokenizer.
        max_length: Truncation length of the model.
        column: Name of a column of precomputed lengths.

    Returns:
        Shape (len(dataset),), integers.

    Raises:
        ValueError: If a dataset has no `query` column.
    """
    if isinstance(dataset, NamedConcatDataset):
        parts = [
            token_lengths(d, tokenizer, max_length=max_length, column=column)
            for d in dataset.datasets.values()
        ]
        return np.concatenate(parts)
    names = list(dataset.column_names)
    if column in names:
        return np.asarray(dataset[column], dtype=np.int64)
    if "query" not in names:
        raise ValueError(
            f"`token_lengths` expects a 'query' column, but the dataset has {names!r}. Pass "
            f"precomputed lengths in a {column!r} column instead."
        )
    others = [c for c in names if c not in ("query", DATASET_KEY, *LABEL_COLUMNS)]
    lengths = []
    for chunk in _chunks(dataset, ["query", *others]):
        lengths += _chunk_lengths(chunk, others, tokenizer, max_length)
    return np.asarray(lengths, dtype=np.int64)


def _chunk_lengths(chunk: dict, others: list[str], tokenizer, max_length) -> list[int]:
    """Token lengths of one chunk of rows: the longest (query, text) pair of each row."""
    queries, texts, owner = [], [], []
    for row, query in enumerate(chunk["query"]):
        for column in others:
            value = chunk[column][row]
            for text in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(text, str):
                    queries.append(query)
                    texts.append(text)
                    owner.append(row)
    longest = np.zeros(len(chunk["query"]), dtype=np.int64)
    if queries:
        encoded = tokenizer(
            queries,
            texts,
            truncation="longest_first" if max_length else False,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        sizes = np.fromiter(map(len, encoded["input_ids"]), dtype=np.int64, count=len(queries))
        np.maximum.at(longest, np.asarray(owner), sizes)
    return longest.tolist()


def _chunks(dataset, columns: list[str]):
    """The dataset's columns, `_SCAN_ROWS` rows at a time, as column -> list."""
    if hasattr(dataset, "iter"):
        yield from dataset.select_columns(columns).iter(batch_size=_SCAN_ROWS)
        return
    for start in range(0, len(dataset), _SCAN_ROWS):
        rows = [dataset[i] for i in range(start, min(start + _SCAN_ROWS, len(dataset)))]
        yield {c: [row[c] for row in rows] for c in columns}


def _check_lengths(lengths, rows: int) -> np.ndarray | None:
    if lengths is None:
        return None
    lengths = np.asarray(lengths)
    if lengths.shape != (rows,):
        raise ValueError(
            f"Batch samplers expect one length per row ({rows}), but got lengths of shape "
            f"{lengths.shape}. Compute them with `token_lengths(dataset, tokenizer)`."
        )
    return lengths


def _row_texts(dataset, columns: list[str]) -> list[frozenset[int]]:
    """Each row's texts as hashes: equal texts always hash equal, so no repeat is missed.

    Hashes keep memory small on large sets; a hash collision only holds a row back a batch.
    Columns are read in chunks, so the texts are never all held in memory at once.
    """
    if not columns:
        return [frozenset()] * len(dataset)
    rows = []
    for chunk in _chunks(dataset, columns):
        for row in zip(*(chunk[column] for column in columns), strict=True):
            texts = set()
            for value in row:
                items = value if isinstance(value, (list, tuple)) else [value]
                texts.update(hash(item) for item in items if isinstance(item, str))
            rows.append(frozenset(texts))
    return rows
