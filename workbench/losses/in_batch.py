"""In-batch losses: each query's positive competes with hard negatives and other rows' passages."""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import nn

from workbench.losses.base import (
    RerankingLoss,
    check_single_label,
    full_precision,
    negative_columns,
)

ACTIVATIONS = ("sigmoid", "identity")


class MultipleNegativesRankingLoss(RerankingLoss):
    """Softmax cross-entropy picking each query's positive among its negatives.

    Input: tuples (`query`, `positive`, optional `negative_1..n`), no labels. Each query is also
    paired with passages from the other rows (their positives and hard negatives), so a batch of
    (query, positive) rows alone is enough. Requires a model with `num_labels == 1`. The in-batch
    negatives idea is from Henderson et al., 2017, "Efficient Natural Language Response Suggestion
    for Smart Reply" (arXiv:1705.00652).

    Args:
        model: The `CrossEncoder` being trained.
        num_negatives: In-batch negatives drawn at random per query; all other rows' passages
            when None or when fewer are available. Hard negatives always count.
        scale: Multiplies the activated logits before the softmax (a temperature of 1 / scale).
        activation: `"sigmoid"` or `"identity"`, applied to the logits before scaling.

    Raises:
        ValueError: On a model with several labels, a negative count or scale out of range, or
            an unknown activation.

    Example:
        >>> loss = MultipleNegativesRankingLoss(model, num_negatives=8)
    """

    data_format = "tuples"

    def __init__(
        self,
        model,
        *,
        num_negatives: int | None = 4,
        scale: float = 10.0,
        activation: str = "sigmoid",
    ) -> None:
        super().__init__(model)
        check_single_label(self)
        if num_negatives is not None and num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0 or None, got {num_negatives!r}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.num_negatives = num_negatives
        self.scale = scale
        self.activation = activation

    def forward(self, inputs: dict[str, list], labels: torch.Tensor | None = None) -> torch.Tensor:
        """Return the mean cross-entropy of the positives over the batch.

        Args:
            inputs: Columns `query`, `positive` and optional `negative_1..n`.
            labels: Ignored; the positive is always the right answer.
        """
        queries, passages = self.candidate_pairs(inputs)
        return self.loss_from_logits(self.score(queries, passages), len(inputs["query"]))

    def candidate_pairs(self, inputs: dict[str, list]) -> tuple[list[str], list[str]]:
        """Every (query, passage) pair to score, column after column.

        Columns: the positives, then the in-batch negatives, then the hard negatives; each column
        holds one passage per query, in batch order.

        Returns:
            Queries and passages, each of length batch * columns.
        """
        hard = [inputs[column] for column in negative_columns(inputs)]
        columns = [inputs["positive"], *self._in_batch_negatives([inputs["positive"], *hard])]
        columns += hard
        passages = [p for column in columns for p in column]
        return inputs["query"] * len(columns), passages

    def loss_from_logits(self, logits: torch.Tensor, batch: int) -> torch.Tensor:
        """The loss from logits laid out as `candidate_pairs`, (batch * columns,)."""
        with full_precision(logits.device):
            scores = logits.float().view(-1, batch).T  # (batch, 1 + num_negatives)
            if self.activation == "sigmoid":
                scores = scores.sigmoid()
            target = torch.zeros(batch, dtype=torch.long, device=scores.device)
            return nn.functional.cross_entropy(scores * self.scale, target)

    def _in_batch_negatives(self, candidates: list[list[str]]) -> list[list[str]]:
        """Columns of passages from other rows, one passage per query in each column."""
        batch, flat = len(candidates[0]), [p for column in candidates for p in column]
        # others[i, j]: flat passage j belongs to another row than query i.
        others = ~torch.eye(batch, dtype=torch.bool).repeat(1, len(candidates))
        available = (batch - 1) * len(candidates)
        if self.num_negatives == 0:
            return []
        if self.num_negatives is not None and self.num_negatives < available:
            picks = torch.multinomial(others.float(), self.num_negatives)  # (batch, num_negatives)
        else:
            picks = torch.arange(len(flat)).expand(batch, -1)[others].view(batch, available)
        # Known gap: a passage that is also another row's positive (duplicate text) counts as a
        # negative here; deduplicate positives when building the dataset.
        return [[flat[j] for j in column] for column in picks.T.tolist()]

    def config(self) -> dict:
        return {
            "num_negatives": self.num_negatives,
            "scale": self.scale,
            "activation": self.activation,
        }


class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """`MultipleNegativesRankingLoss` for large batches in bounded memory (GradCache).

    The pairs are scored in mini-batches without a graph; the loss's gradient with respect to
    each logit is cached; on backward, each mini-batch is scored again with a graph (replaying
    its random state, so dropout matches) and back-propagated with its cached gradient. Only one
    mini-batch's activations are alive at a time, and the parameter gradients equal the uncached
    loss's. From Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
    Limited Setup" (arXiv:2101.06983).

    Input and requirements as `MultipleNegativesRankingLoss`.

    Args:
        model: The `CrossEncoder` being trained.
        num_negatives: In-batch negatives drawn at random per query; all when None.
        scale: Multiplies the activated logits before the softmax.
        activation: `"sigmoid"` or `"identity"`, applied to the logits before scaling.
        mini_batch_size: (query, passage) pairs per forward pass.

    Raises:
        ValueError: As `MultipleNegativesRankingLoss`, or if `mini_batch_size` is not positive.
    """

    def __init__(
        self,
        model,
        *,
        num_negatives: int | None = 4,
        scale: float = 10.0,
        activation: str = "sigmoid",
        mini_batch_size: int = 32,
    ) -> None:
        super().__init__(model, num_negatives=num_negatives, scale=scale, activation=activation)
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive number, got {mini_batch_size!r}")
        self.mini_batch_size = mini_batch_size

    def forward(self, inputs: dict[str, list], labels: torch.Tensor | None = None) -> torch.Tensor:
        """Return the loss; its backward pass runs the model again, one mini-batch at a time.

        Args:
            inputs: Columns `query`, `positive` and optional `negative_1..n`.
            labels: Ignored; the positive is always the right answer.
        """
        queries, passages = self.candidate_pairs(inputs)
        batch, device = len(inputs["query"]), self.model.device
        size = self.mini_batch_size
        chunks = [slice(i, i + size) for i in range(0, len(queries), size)]

        # (1) Logits without a graph, noting the random state before each chunk.
        states, logits = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(_rng_state(device))
                logits.append(self.score(queries[chunk], passages[chunk]))
        logits = torch.cat(logits)  # (batch * columns,)
        if not torch.is_grad_enabled():
            return self.loss_from_logits(logits, batch)

        # (2) The loss, and its gradient with respect to each logit.
        logits.requires_grad_()
        loss = self.loss_from_logits(logits, batch)
        (cached,) = torch.autograd.grad(loss, logits)

        # (3) On backward, replay each chunk with a graph and feed it its cached gradient.
        loss = loss.detach().requires_grad_()
        replay = partial(self._replay, queries, passages, chunks, states, cached, _autocast(device))
        loss.register_hook(replay)
        return loss

    def _replay(
        self, queries, passages, chunks, states, cached, autocast, grad_output: torch.Tensor
    ) -> None:
        # grad_output carries the outer scaling (gradient accumulation, fp16 loss scaling).
        with torch.enable_grad():
            for chunk, state in zip(chunks, states, strict=True):
                with _replayed_rng(state), autocast:
                    logits = self.score(queries[chunk], passages[chunk])
                logits.backward(cached[chunk] * grad_output)

    def config(self) -> dict:
        return {**super().config(), "mini_batch_size": self.mini_batch_size}


def _rng_state(device: torch.device) -> tuple:
    """The CPU random state, and the accelerator's when the model runs on one."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.get_rng_state(), device, torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.get_rng_state(), device, torch.mps.get_rng_state()
    return torch.get_rng_state(), device, None


def _set_rng_state(state: tuple) -> None:
    cpu, device, accelerator = state
    torch.set_rng_state(cpu)
    if device.type == "cuda":
        torch.cuda.set_rng_state(accelerator, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(accelerator)


@contextlib.contextmanager
def _replayed_rng(state: tuple):
    """Run a block with the random state `state`, then restore the state from before it."""
    outer = _rng_state(state[1])
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(outer)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast setting active now, to re-enter in the backward pass.

    The backward pass runs outside the training step's autocast block; without this, the replay
    would score in fp32 while the cached gradients came from bf16 or fp16 logits.
    """
    kind = torch.device(device).type
    if not torch.is_autocast_enabled(kind):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.get_autocast_dtype(kind))
