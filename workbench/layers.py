"""Recipe switches that act on the encoder's layers: freezing the bottom ones and attention dropout.

Both are the main job's defaults and the two largest training speedups measured on CPU
(`benchmarks/vs_sentence_transformers.py`): dropout masks cost more there than the matmuls they
sit between.
"""

from __future__ import annotations

import logging

from torch import nn

from workbench.model import CrossEncoder

logger = logging.getLogger(__name__)


def freeze_bottom_layers(model: CrossEncoder, count: int) -> None:
    """Freeze the embeddings and the first `count` transformer layers (0 freezes nothing).

    Frozen modules also run in eval mode during training, so they apply no dropout: their
    output feeds the trained layers as fixed features, and dropout there would only add noise
    and cost (on 2 CPU cores it took half the step time of the main job's recipe).

    Args:
        model: A BERT-style cross-encoder (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM).
        count: Layers to freeze, from the bottom.

    Raises:
        NotImplementedError: If the encoder has no `embeddings` and `encoder.layer`.
    """
    if count <= 0:
        return
    base, layers = _bert_parts(model, "freeze_layers")
    for module in [base.embeddings, *layers[:count]]:
        module.requires_grad_(False)
        # The Trainer calls model.train() every step; each frozen module turns itself back.
        if not hasattr(module, "_workbench_eval_hook"):
            module._workbench_eval_hook = module.register_forward_pre_hook(_stay_in_eval)
    logger.info("Froze embeddings and %d of %d layers", min(count, len(layers)), len(layers))


def set_attention_dropout(model: CrossEncoder, probability: float) -> None:
    """Set the dropout on attention probabilities in every layer.

    Hidden-state and classifier dropout keep the checkpoint's values; the saved config records
    the new value. With 0.0, attention runs on its fused path in training too.

    Args:
        model: A BERT-style cross-encoder.
        probability: Dropout probability in [0, 1).

    Raises:
        ValueError: If `probability` is outside [0, 1).
        NotImplementedError: If the encoder is not BERT-style.
    """
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"attention_dropout expects a value in [0, 1), but got {probability!r}")
    _, layers = _bert_parts(model, "attention_dropout")
    for layer in layers:
        attention = getattr(getattr(layer, "attention", None), "self", None)
        dropout = getattr(attention, "dropout", None)
        if isinstance(dropout, nn.Dropout):
            dropout.p = probability
    model.model.config.attention_probs_dropout_prob = probability
    logger.info("Attention dropout set to %s in %d layers", probability, len(layers))


def _bert_parts(model: CrossEncoder, option: str):
    base = model.model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(base, "embeddings"):
        raise NotImplementedError(
            f"{option} is not supported with {type(base).__name__} yet (BERT-style only)"
        )
    return base, layers


def _stay_in_eval(module: nn.Module, args) -> None:
    # A module unfrozen later (requires_grad back on) trains with dropout again.
    if module.training and not any(p.requires_grad for p in module.parameters()):
        module.eval()
