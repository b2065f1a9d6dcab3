"""Listwise losses: every candidate of a query is scored, and the whole list is judged at once.

Input for all: lists (`query`, `documents` a list, `labels` a list of the same length); lists in a
batch may differ in length, the collator pads labels with -1.0 and the padding is masked out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from workbench.losses.base import RerankingLoss, check_single_label, full_precision

# Logit of a padded slot: sorts after any real logit; the slot is then masked out.
PAD_LOGIT = -1e16
# Collator value of a padded label slot.
PAD_LABEL = -1.0
WEIGHTING_SCHEMES = ("none", "ndcg_loss1", "ndcg_loss2", "lambdarank", "ndcg_loss2++")


class ListwiseLoss(RerankingLoss):
    """Base of the listwise losses: scores each query's documents and lays them out as a matrix.

    Requires a model with `num_labels == 1`.

    Args:
        model: The `CrossEncoder` being trained.
        mini_batch_size: (query, document) pairs per forward pass; all pairs at once when None.
            Smaller chunks lower the peak memory of a forward pass.

    Raises:
        ValueError: If the model has more than one label or `mini_batch_size` is not positive.
    """

    data_format = "lists"

    def __init__(self, model, *, mini_batch_size: int | None = None) -> None:
        super().__init__(model)
        check_single_label(self)
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ValueError(
                f"mini_batch_size must be a positive number of pairs or None, got "
                f"{mini_batch_size!r}"
            )
        self.mini_batch_size = mini_batch_size

    def score_lists(
        self, inputs: dict[str, list], labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score every (query, document) pair of the batch.

        Args:
            inputs: Columns `query` and `documents`.
            labels: Shape (batch, longest list), padded with -1.0.

        Returns:
            fp32 logits and labels, both (batch, longest list), and the mask of real documents;
            padded logits are `PAD_LOGIT`.

        Raises:
            ValueError: If a list is empty or the labels do not match the documents.
        """
        lengths = [len(documents) for documents in inputs["documents"]]
        _check_lists(type(self).__name__, lengths, labels)
        queries = [q for q, n in zip(inputs["query"], lengths, strict=True) for _ in range(n)]
        documents = [d for row in inputs["documents"] for d in row]
        logits = self.score(queries, documents, mini_batch_size=self.mini_batch_size)

        # Row-major order of the mask is the order of the flattened pairs.
        mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        mask = mask.to(logits.device)  # (batch, longest list)
        scores = logits.new_full(mask.shape, PAD_LOGIT).masked_scatter(mask, logits)
        return scores, labels.float().to(logits.device), mask

    def config(self) -> dict:
        return {"mini_batch_size": self.mini_batch_size}


class LambdaLoss(ListwiseLoss):
    """LambdaLoss: pairwise logistic losses weighted by how much swapping a pair changes NDCG.

    Input: lists with graded relevance labels (0, 1, 2, ...). Requires a model with
    `num_labels == 1`. From Wang et al., 2018, "The LambdaLoss Framework for Ranking Metric
    Optimization" (CIKM); schemes `ndcg_loss2` and `ndcg_loss2++` are the paper's best.

    Args:
        model: The `CrossEncoder` being trained.
        weighting_scheme: `"ndcg_loss2++"` (mu * NDCG-Loss2 + LambdaRank), `"ndcg_loss2"`,
            `"ndcg_loss1"`, `"lambdarank"`, or `"none"` (RankNet).
        k: Keep only pairs with a document in the predicted top `k` (NDCG@k); all when None.
        sigma: Steepness of the logistic on score differences.
        mu: Weight of NDCG-Loss2 in `ndcg_loss2++`.
        eps: Floor of the ideal DCG, for lists without any relevant document.
        reduction_log: `"binary"` (log2, as in the paper) or `"natural"`.
        mini_batch_size: Pairs per forward pass; all at once when None.

    Raises:
        ValueError: On an unknown scheme or `reduction_log`, or `k` below 1.

    Example:
        >>> loss = LambdaLoss(model, weighting_scheme="ndcg_loss2", k=10)
    """

    def __init__(
        self,
        model,
        *,
        weighting_scheme: str | None = "ndcg_loss2++",
        k: int | None = None,
        sigma: float = 1.0,
        mu: float = 10.0,
        eps: float = 1e-10,
        reduction_log: str = "binary",
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, mini_batch_size=mini_batch_size)
        scheme = weighting_scheme or "none"
        if scheme not in WEIGHTING_SCHEMES:
            raise ValueError(
                f"weighting_scheme must be one of {WEIGHTING_SCHEMES} or None, got "
                f"{weighting_scheme!r}"
            )
        if reduction_log not in ("binary", "natural"):
            raise ValueError(f"reduction_log must be 'binary' or 'natural', got {reduction_log!r}")
        if k is not None and k < 1:
            raise ValueError(f"k must be a positive cutoff or None, got {k!r}")
        self.weighting_scheme = scheme
        self.k, self.sigma, self.mu, self.eps = k, sigma, mu, eps
        self.reduction_log = reduction_log

    def forward(self, inputs: dict[str, list], labels: torch.Tensor) -> torch.Tensor:
        """Return the mean weighted pairwise loss over the batch's kept pairs.

        Args:
            inputs: Columns `query` and `documents`.
            labels: Shape (batch, longest list), padded with -1.0.
        """
        scores, targets, mask = self.score_lists(inputs, labels)
        with full_precision(scores.device):
            return self.loss_from_scores(scores, targets.masked_fill(~mask, -math.inf))

    def loss_from_scores(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of fp32 `scores` (batch, n) against `targets` that are -inf where padded."""
        n = scores.shape[1]
        k = min(self.k or n, n)
        positions = torch.arange(n, device=scores.device)

        # Rank by prediction; the labels follow that order.
        ranked, order = scores.sort(descending=True, dim=1)
        truth = targets.gather(1, order)  # (batch, n)
        ideal = targets.sort(descending=True, dim=1).values

        # Pairs (i, j) of real documents where i should rank above j, one of them in the top k.
        gaps = truth[:, :, None] - truth[:, None, :]  # (batch, n, n)
        kept = gaps.isfinite()
        if self.weighting_scheme != "ndcg_loss1":
            kept &= gaps > 0
        kept &= (positions[:, None] < k) | (positions[None, :] < k)

        # Gains are normalized by the ideal DCG@k; padded slots gain nothing.
        discount = torch.log2(positions + 2.0)  # (n,), rank r discounts by log2(1 + r)
        ideal_dcg = ((2 ** ideal.clamp(min=0) - 1) / discount)[:, :k].sum(1).clamp(min=self.eps)
        gain = (2 ** truth.clamp(min=0) - 1) / ideal_dcg[:, None]  # (batch, n)
        weights = self._weights(gain, discount, positions)

        diffs = (ranked[:, :, None] - ranked[:, None, :]).clamp(min=-1e8, max=1e8)
        log_likelihood = weights * nn.functional.logsigmoid(self.sigma * diffs)
        if self.reduction_log == "binary":
            log_likelihood = log_likelihood / math.log(2)
        chosen = log_likelihood[kept]
        return -chosen.sum() / max(chosen.numel(), 1)

    def _weights(
        self, gain: torch.Tensor, discount: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Pair weights, broadcastable to (batch, n, n)."""
        if self.weighting_scheme == "none":
            return gain.new_tensor(1.0)
        if self.weighting_scheme == "ndcg_loss1":
            return (gain / discount)[:, :, None]
        gain_gaps = (gain[:, :, None] - gain[:, None, :]).abs()
        inverse = 1 / discount
        lambdarank = (inverse[:, None] - inverse[None, :]).abs() * gain_gaps
        if self.weighting_scheme == "lambdarank":
            return lambdarank

        # NDCG-Loss2: discount step between ranks |i - j| and |i - j| + 1 (zero on the diagonal).
        steps = torch.cat([inverse.new_zeros(1), (inverse[:-1] - inverse[1:]).abs()])
        ndcg_loss2 = steps[(positions[:, None] - positions[None, :]).abs()] * gain_gaps
        if self.weighting_scheme == "ndcg_loss2":
            return ndcg_loss2
        return self.mu * ndcg_loss2 + lambdarank

    def config(self) -> dict:
        return {
            "weighting_scheme": self.weighting_scheme,
            "k": self.k,
            "sigma": self.sigma,
            "mu": self.mu,
            "eps": self.eps,
            "reduction_log": self.reduction_log,
            **super().config(),
        }


class ListNetLoss(ListwiseLoss):
    """ListNet: cross-entropy between the softmax of the labels and the softmax of the logits.

    Input: lists with graded labels or teacher scores. Requires a model with `num_labels == 1`.
    From Cao et al., 2007, "Learning to Rank: From Pairwise Approach to Listwise Approach" (ICML),
    top-one probabilities.

    Args:
        model: The `CrossEncoder` being trained.
        mini_batch_size: Pairs per forward pass; all at once when None.
    """

    def forward(self, inputs: dict[str, list], labels: torch.Tensor) -> torch.Tensor:
        """Return the mean over queries of the cross-entropy between the two distributions.

        Args:
            inputs: Columns `query` and `documents`.
            labels: Shape (batch, longest list), padded with -1.0.
        """
        scores, targets, mask = self.score_lists(inputs, labels)
        with full_precision(scores.device):
            target = targets.masked_fill(~mask, -math.inf).softmax(dim=1)
            log_predicted = scores.masked_fill(~mask, -math.inf).log_softmax(dim=1)
            cross_entropy = -(target * log_predicted.masked_fill(~mask, 0.0)).sum(dim=1)
            return cross_entropy.mean()


class PListMLELoss(ListwiseLoss):
    """Position-aware ListMLE: the Plackett-Luce likelihood of the true order, top ranks weighted.

    Input: lists whose documents come in relevance order, best first (or set
    `respect_input_order=False` to sort them by label). Requires a model with `num_labels == 1`.
    From Lan et al., 2014, "Position-Aware ListMLE: A Sequential Learning Process for Ranking"
    (UAI). The default weight of rank r in a list of n is 2^(n - r) - 1, normalized per list.

    Args:
        model: The `CrossEncoder` being trained.
        rank_discount: Maps the mask of real documents (batch, n) to weights of the same shape;
            the default discount when None.
        respect_input_order: Take the documents' order as the true ranking; when False, sort
            them by label (ties keep input order).
        mini_batch_size: Pairs per forward pass; all at once when None.
    """

    def __init__(
        self,
        model,
        *,
        rank_discount: Callable[[torch.Tensor], torch.Tensor] | None = None,
        respect_input_order: bool = True,
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, mini_batch_size=mini_batch_size)
        self.rank_discount = rank_discount or default_rank_discount
        self.respect_input_order = respect_input_order

    def forward(self, inputs: dict[str, list], labels: torch.Tensor) -> torch.Tensor:
        """Return the mean over queries of the (weighted) negative log-likelihood.

        Args:
            inputs: Columns `query` and `documents`.
            labels: Shape (batch, longest list), padded with -1.0.
        """
        scores, targets, mask = self.score_lists(inputs, labels)
        with full_precision(scores.device):
            if not self.respect_input_order:
                order = targets.masked_fill(~mask, -math.inf).sort(
                    descending=True, dim=1, stable=True
                )[1]
                scores, mask = scores.gather(1, order), mask.gather(1, order)
            return plackett_luce_nll(scores, mask, self.weights(mask)).mean()

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Per-rank weights (batch, n) that sum to 1 over each list."""
        weights = self.rank_discount(mask).float()
        return weights / (weights.sum(dim=1, keepdim=True) + 1e-10)

    def config(self) -> dict:
        custom = self.rank_discount is not default_rank_discount
        return {
            "rank_discount": getattr(self.rank_discount, "__name__", "custom") if custom else None,
            "respect_input_order": self.respect_input_order,
            **super().config(),
        }


class ListMLELoss(PListMLELoss):
    """ListMLE: the Plackett-Luce negative log-likelihood of the true order, all ranks alike.

    Input: lists whose documents come in relevance order, best first (or set
    `respect_input_order=False` to sort them by label). Requires a model with `num_labels == 1`.
    From Xia et al., 2008, "Listwise Approach to Learning to Rank: Theory and Algorithm" (ICML).

    Args:
        model: The `CrossEncoder` being trained.
        respect_input_order: Take the documents' order as the true ranking; when False, sort
            them by label (ties keep input order).
        mini_batch_size: Pairs per forward pass; all at once when None.
    """

    def __init__(
        self, model, *, respect_input_order: bool = True, mini_batch_size: int | None = None
    ) -> None:
        super().__init__(
            model, respect_input_order=respect_input_order, mini_batch_size=mini_batch_size
        )

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Weight 1 for every real document."""
        return mask.float()

    def config(self) -> dict:
        config = super().config()
        del config["rank_discount"]
        return config


def default_rank_discount(mask: torch.Tensor) -> torch.Tensor:
    """Weight 2^(n - r) - 1 for rank r (from 1) of a list of n real documents, 0 for padding.

    Args:
        mask: Real documents, (batch, longest list).

    Returns:
        Unnormalized fp32 weights of the same shape.
    """
    counts = mask.sum(dim=1, keepdim=True).float()  # (batch, 1)
    ranks = torch.arange(1, mask.shape[1] + 1, device=mask.device).float()
    # Lists past 127 documents are scaled down by 2^shift so 2^(n - r) stays within fp32.
    shift = (counts - 127).clamp(min=0)
    weights = torch.pow(2.0, counts - ranks - shift) - torch.pow(2.0, -shift)
    return weights * mask


def plackett_luce_nll(
    scores: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Negative log-likelihood of each list's order under the Plackett-Luce model.

    Args:
        scores: Logits in the true order, (batch, n).
        mask: Real documents; padding comes last in each row.
        weights: Per-rank weights of the log-probabilities, or None for all 1.

    Returns:
        Shape (batch,).
    """
    # Log of the partition over each rank and all ranks after it.
    masked = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    tails = masked.flip(1).logcumsumexp(dim=1).flip(1)
    log_probs = scores - tails  # (batch, n)
    if weights is not None:
        log_probs = log_probs * weights
    return -log_probs.masked_fill(~mask, 0.0).sum(dim=1)


def _check_lists(loss_name: str, lengths: list[int], labels: torch.Tensor | None) -> None:
    """Raise `ValueError` unless the padded labels line up with the document lists."""
    expected = (len(lengths), max(lengths, default=0))
    if labels is None or tuple(labels.shape) != expected:
        shape = None if labels is None else tuple(labels.shape)
        raise ValueError(
            f"`{loss_name}` expects lists (columns query, documents and labels, a list as long as "
            f"documents): labels of shape {expected} for this batch, but got {shape!r}. Give "
            "each row a `labels` list with one number per document."
        )
    if 0 in lengths:
        raise ValueError(
            f"`{loss_name}` expects at least one document per query, but row "
            f"{lengths.index(0)} has none. Drop rows with empty `documents`."
        )
    for row, length in enumerate(lengths):
        if (labels[row, length:] != PAD_LABEL).any():
            raise ValueError(
                f"`{loss_name}` expects one label per document, but row {row} has more labels "
                f"than its {length} documents. Make `labels` and `documents` equally long."
            )
