"""ONNX export of a `CrossEncoder` (fp32 and dynamically quantized int8) and an ONNX Runtime
reranker with the same `predict` / `rank` API.

The export lands next to the PyTorch checkpoint, in the layout sentence-transformers' ONNX backend
reads: `<folder>/onnx/model.onnx` and `<folder>/onnx/model_qint8.onnx`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from workbench.model import CrossEncoder, Reranker, _check_activation

logger = logging.getLogger(__name__)

ONNX_FOLDER = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
# Opset 17 has LayerNormalization as one op; onnxruntime fuses it.
OPSET_VERSION = 17


def export_onnx(
    model: CrossEncoder | str | Path,
    folder: str | Path,
    *,
    quantize: bool = True,
    opset_version: int = OPSET_VERSION,
) -> Path:
    """Save a model with its ONNX graphs: fp32 and, by default, dynamically quantized int8.

    The folder gets the PyTorch checkpoint (weights, tokenizer, config with the activation and
    `max_length`) plus `onnx/model.onnx` and `onnx/model_qint8.onnx`. Both graphs take the
    tokenizer's inputs (`input_ids`, `attention_mask`, and `token_type_ids` for BERT-style models)
    with dynamic batch and sequence axes, and return raw `logits` of shape (batch, num_labels).
    Int8 quantizes the weights of MatMul layers ahead of time and the activations per batch, at
    run time (onnxruntime's `quantize_dynamic`): smaller and faster on CPUs, slightly different
    scores.

    Args:
        model: A `CrossEncoder`, or anything `CrossEncoder` loads (folder, hub id, embedded name).
        folder: Target folder, created if needed.
        quantize: Also write the int8 graph.
        opset_version: ONNX opset of the export.

    Returns:
        The folder, ready for `OnnxCrossEncoder(folder)`.

    Raises:
        ImportError: If onnxruntime is not installed (it quantizes and checks the graph).

    Example:
        >>> folder = export_onnx(CrossEncoder("ms-marco-minilm-l12"), "reranker-onnx")
        >>> OnnxCrossEncoder(folder, quantized=True).rank("What is BM25?", ["A ranking function."])
    """
    _import_onnxruntime()
    if not isinstance(model, CrossEncoder):
        model = CrossEncoder(model, device="cpu")
    folder = Path(folder)
    model.save_pretrained(folder)
    target = folder / ONNX_FOLDER
    target.mkdir(parents=True, exist_ok=True)

    fp32 = target / FP32_FILE
    _export_graph(model, fp32, opset_version)
    logger.info("Exported %s to %s (%.1f MB)", model.name_or_path, fp32, _megabytes(fp32))
    if quantize:
        int8 = target / INT8_FILE
        quantize_int8(fp32, int8)
        logger.info("Quantized to int8: %s (%.1f MB)", int8, _megabytes(int8))
    return folder


def quantize_int8(source: str | Path, target: str | Path) -> Path:
    """Dynamically quantize an fp32 ONNX graph to int8 weights (onnxruntime `quantize_dynamic`).

    Args:
        source: The fp32 `.onnx` file.
        target: Where to write the int8 graph.

    Returns:
        `target`.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Signed int8 weights: unsigned ones can saturate in the AVX2 / AVX-512 int8 kernels.
    quantize_dynamic(Path(source), Path(target), weight_type=QuantType.QInt8)
    return Path(target)


class OnnxCrossEncoder(Reranker):
    """A reranker that scores with ONNX Runtime; `predict` and `rank` behave as in `CrossEncoder`.

    Args:
        folder: A folder written by `export_onnx` (checkpoint config, tokenizer and `onnx/`).
        quantized: Load the int8 graph instead of fp32.
        file_name: Another graph under `onnx/`; overrides `quantized`.
        max_length: Longest tokenized pair; defaults to the saved one, capped at the position
            limit.
        activation: `"sigmoid"` or `"identity"`; defaults to the saved one.
        providers: onnxruntime execution providers; defaults to CPU.
        threads: Intra-op threads; onnxruntime's default (one per physical core) when None.

    Raises:
        FileNotFoundError: If the graph is missing.
        ImportError: If onnxruntime is not installed.

    Example:
        >>> reranker = OnnxCrossEncoder("reranker-onnx", quantized=True)
        >>> reranker.predict([("What is BM25?", "A ranking function.")])
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        quantized: bool = False,
        file_name: str | None = None,
        max_length: int | None = None,
        activation: str | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        ort = _import_onnxruntime()
        self.folder = Path(folder)
        self.path = (
            self.folder / ONNX_FOLDER / (file_name or (INT8_FILE if quantized else FP32_FILE))
        )
        if not self.path.exists():
            raise FileNotFoundError(
                f"{str(self.path)!r} does not exist. Export the model first: "
                "`workbench.onnx.export_onnx(model, folder)`."
            )

        # Graph
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(self.path), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

        # Settings saved with the checkpoint
        self._config = AutoConfig.from_pretrained(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.max_length = self._cap_max_length(max_length)
        self.activation = _check_activation(activation or self._saved_activation())
        self._warned_precision = False

    @property
    def config(self):
        """The transformers config saved next to the graph."""
        return self._config

    def _scoring(self, precision: str) -> contextlib.AbstractContextManager:
        if precision != "fp32" and not self._warned_precision:
            logger.warning(
                "precision=%r is ignored: an ONNX graph runs in the precision it was exported in "
                "(%s). Pass precision='fp32' to silence this.",
                precision,
                self.path.name,
            )
            self._warned_precision = True
        return contextlib.nullcontext()

    def _batch_logits(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        features = self.encode_pairs(pairs, return_tensors="np")
        feed = {name: features[name].astype(np.int64) for name in self.input_names}
        logits = self.session.run(None, feed)[0]  # (batch, num_labels)
        return logits.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (
            f"OnnxCrossEncoder({str(self.folder)!r}, file={self.path.name!r}, "
            f"num_labels={self.num_labels}, max_length={self.max_length}, "
            f"activation={self.activation!r})"
        )


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in the tokenizer's order -> logits, for tracing."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits


def _export_graph(model: CrossEncoder, path: Path, opset_version: int) -> None:
    module = model.model
    was_training, device = module.training, model.device
    module.to("cpu")
    # A sample with padding, so the traced graph keeps the attention-mask path.
    sample = model.encode_pairs([("a query", "a passage"), ("a longer query", "x " * 20)])
    names = list(sample)
    wrapper = _LogitsOnly(module, names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                tuple(sample[name] for name in names),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset_version,
                # The TorchScript exporter: the dynamo one needs onnxscript, another dependency.
                dynamo=False,
            )
    finally:
        # Export switches modules to eval and back; put the model back as it was.
        module.train(was_training)
        module.to(device)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            "ONNX export and scoring need onnxruntime: pip install onnxruntime"
        ) from err
    return onnxruntime


def _megabytes(path: Path) -> float:
    return os.path.getsize(path) / 1e6
