"""The cross-encoder: a sequence-classification model that scores (query, passage) pairs."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.utils.hub import is_offline_mode

from workbench import embedded
from workbench.calibration import Calibration
from workbench.device import autocast, default_device, resolve_precision

logger = logging.getLogger(__name__)

# sentence-transformers reads the activation from this config key and only imports `torch.` paths.
_ST_CONFIG_KEY = "sentence_transformers"
_ACTIVATIONS = {
    "sigmoid": "torch.nn.modules.activation.Sigmoid",
    "identity": "torch.nn.modules.linear.Identity",
}
# Inputs longer than this many pairs get a progress bar.
_PROGRESS_MIN_PAIRS = 256
# Pairs tokenized at a time to measure lengths (bounded memory for long inputs).
_LENGTH_CHUNK = 4096
# Weight files in pickle format: loading one can run arbitrary code.
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class Reranker:
    """Scoring and ranking shared by every backend: PyTorch (`CrossEncoder`) and ONNX Runtime
    (`workbench.onnx.OnnxCrossEncoder`).

    A backend sets `tokenizer`, `max_length` and `activation`, exposes its transformers
    `config`, and turns one batch of pairs into raw logits in `_batch_logits`; pair checks,
    length-sorted batches, the activation, ranking and the saved settings live here once.
    """

    tokenizer = None
    max_length: int
    activation: str
    # Raw score -> probability map, from `workbench.calibration.calibrate` or calibration.json.
    calibration: Calibration | None = None

    @property
    def config(self):
        """The transformers config of the model."""
        raise NotImplementedError

    @property
    def num_labels(self) -> int:
        """Outputs of the classification head."""
        return self.config.num_labels

    def predict(
        self,
        pairs: Sequence[tuple[str, str]] | Sequence[list[str]],
        *,
        batch_size: int = 32,
        activation: str | None = None,
        precision: str = "fp32",
        show_progress_bar: bool | None = None,
        calibrated: bool = False,
    ) -> np.ndarray:
        """Score (query, passage) pairs.

        Pairs are scored in batches sorted by length (less padding) and returned in input order.

        Args:
            pairs: (query, passage) pairs.
            batch_size: Pairs per forward pass.
            activation: Overrides the model's activation for this call.
            precision: `"fp32"`, `"bf16"`, `"fp16"` (autocast) or `"auto"` (bf16 where it is
                native: CUDA, CPUs with AMX or AVX-512 bf16; else fp32).
            show_progress_bar: Defaults to on for more than 256 pairs.
            calibrated: Return probabilities from the model's `calibration` (fitted with
                `workbench.calibration.calibrate`) instead of the activation's output.

        Returns:
            Shape (len(pairs),) for one label, else (len(pairs), num_labels).

        Raises:
            TypeError: If a pair is not two strings.
            RuntimeError: If `calibrated` is set and the model has no calibration.
        """
        pairs = _check_pairs(pairs)
        if calibrated:
            self._check_calibration(activation)
            activation = "identity"
        activation = _check_activation(activation or self.activation)
        if show_progress_bar is None:
            show_progress_bar = len(pairs) > _PROGRESS_MIN_PAIRS

        # Longest first: the first batch shows the worst-case memory at once. Tokens, not
        # characters: on TREC DL 2019 batches sorted by characters were 25% padding, by tokens 1%.
        order = np.argsort(self.token_lengths(pairs), kind="stable")[::-1]
        scores = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        bar = tqdm(total=len(pairs), desc="Scoring", unit="pair", disable=not show_progress_bar)
        with self._scoring(precision):
            for start in range(0, len(pairs), batch_size):
                index = order[start : start + batch_size]
                scores[index] = self._batch_logits([pairs[i] for i in index])
                bar.update(len(index))
        bar.close()
        if activation == "sigmoid":
            scores = torch.sigmoid(torch.from_numpy(scores)).numpy()
        scores = scores[:, 0] if self.num_labels == 1 else scores
        return self.calibration(scores).astype(np.float32) if calibrated else scores

    def _check_calibration(self, activation: str | None) -> None:
        if self.calibration is None or self.num_labels != 1:
            raise RuntimeError(
                "`predict(calibrated=True)` needs a 1-label model with a calibration, but this "
                "model has none. Fit one with `workbench.calibration.calibrate(model, pairs, "
                "labels)` or load a folder that holds calibration.json."
            )
        if activation is not None:
            raise ValueError(
                f"calibrated=True maps raw scores to probabilities itself, so activation="
                f"{activation!r} cannot apply. Drop one of the two."
            )

    def rank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_k: int | None = None,
        batch_size: int = 32,
        return_passages: bool = False,
    ) -> list[dict]:
        """Sort passages by their score for one query.

        Args:
            query: The query.
            passages: Candidate passages.
            top_k: Keep only the best `top_k`.
            batch_size: Pairs per forward pass.
            return_passages: Add each passage's text under `"text"`.

        Returns:
            Dicts with `corpus_id` (index into `passages`) and `score`, best first; ties keep
            input order.

        Raises:
            ValueError: If the model has more than one label (there is no single score to sort).
        """
        if self.num_labels != 1:
            raise ValueError(
                f"`rank` needs a model with num_labels=1, but this one has {self.num_labels}. "
                "Use `predict` and pick the column to sort by."
            )
        scores = self.predict([(query, p) for p in passages], batch_size=batch_size)
        order = np.argsort(-scores, kind="stable")[:top_k]
        results = [{"corpus_id": int(i), "score": float(scores[i])} for i in order]
        if return_passages:
            for result in results:
                result["text"] = passages[result["corpus_id"]]
        return results

    def token_lengths(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Tokens in each pair after truncation to `max_length`, shape (len(pairs),)."""
        lengths = np.zeros(len(pairs), dtype=np.int64)
        for start in range(0, len(pairs), _LENGTH_CHUNK):
            chunk = pairs[start : start + _LENGTH_CHUNK]
            encoded = self.tokenizer(
                [q for q, _ in chunk],
                [p for _, p in chunk],
                truncation="longest_first",
                max_length=self.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            lengths[start : start + len(chunk)] = [len(ids) for ids in encoded["input_ids"]]
        return lengths

    def encode_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        return_tensors: str = "pt",
        pad_to_multiple_of: int | None = None,
    ):
        """Tokenize pairs, padded to the longest and truncated to `max_length`.

        Args:
            pairs: (query, passage) pairs.
            return_tensors: `"pt"` (torch tensors) or `"np"` (numpy arrays).
            pad_to_multiple_of: Round the padded length up to a multiple of this (tensor cores
                like multiples of 8); padding is masked, so scores do not change.

        Returns:
            The tokenizer's encoding: `input_ids`, `attention_mask` and, for BERT-style models,
            `token_type_ids`.
        """
        queries, passages = zip(*pairs, strict=True)
        return self.tokenizer(
            list(queries),
            list(passages),
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors=return_tensors,
            pad_to_multiple_of=pad_to_multiple_of,
        )

    def _cap_max_length(self, max_length: int | None) -> int:
        limit = getattr(self.config, "max_position_embeddings", None) or 512
        # Some tokenizers report a huge sentinel model_max_length when none was saved.
        saved = self.tokenizer.model_max_length
        wanted = max_length or (saved if saved and saved < 1_000_000 else limit)
        if wanted > limit:
            logger.warning("max_length %d exceeds the position limit; using %d", wanted, limit)
        return min(wanted, limit)

    def _saved_activation(self) -> str:
        saved = getattr(self.config, _ST_CONFIG_KEY, None) or {}
        path = saved.get("activation_fn") if isinstance(saved, dict) else None
        for name, dotted in _ACTIVATIONS.items():
            if path == dotted:
                return name
        if path:
            logger.warning("Unknown saved activation %r; using the default", path)
        return "sigmoid" if self.num_labels == 1 else "identity"

    def _scoring(self, precision: str) -> contextlib.AbstractContextManager:
        """The context one `predict` call runs in (inference mode, autocast)."""
        return contextlib.nullcontext()

    def _batch_logits(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Raw logits of one batch, shape (len(pairs), num_labels), float32."""
        raise NotImplementedError


class CrossEncoder(Reranker):
    """A reranker that reads a query and a passage together and returns a relevance score.

    Loads any Hugging Face sequence-classification checkpoint, or a plain encoder (a fresh
    1-label head is added), by hub id, local folder, or an embedded short name
    (see `workbench.embedded.EMBEDDED_MODELS`).

    Args:
        name_or_path: Hub id, local folder, or embedded short name (`minilm-l6`,
            `ms-marco-minilm-l12`, `minilm-l6-tiny`).
        num_labels: Outputs of the head; defaults to the checkpoint's, or 1 for a plain encoder.
        max_length: Longest tokenized pair; capped at the model's position limit. Defaults to
            the tokenizer's `model_max_length` under that cap.
        activation: `"sigmoid"` or `"identity"` applied by `predict`; defaults to the saved one,
            else sigmoid for one label and identity otherwise.
        device: `"cuda"`, `"mps"` or `"cpu"`; picked automatically when None.
        trust_remote_code: Allow code from the model repository to run.
        allow_pickle: Allow weights in pickle format (`pytorch_model.bin`), which can run code
            when loaded; by default only safetensors weights load.

    Raises:
        FileNotFoundError: If the folder does not exist (or has no config.json), or a hub id
            is asked for while the hub is offline and not in the local cache.
        ValueError: If the weights are pickle only and `allow_pickle` is off, or the model needs
            its own code and `trust_remote_code` is off.

    Example:
        >>> model = CrossEncoder("ms-marco-minilm-l12")
        >>> model.rank("What is BM25?", ["A ranking function.", "A pasta dish."], top_k=1)
    """

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        num_labels: int | None = None,
        max_length: int | None = None,
        activation: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        # Model
        self.name_or_path = str(name_or_path)
        path, overrides = _resolve_path(self.name_or_path)
        check_weight_files(path, allow_pickle=allow_pickle)
        _check_remote_code(path, trust_remote_code=trust_remote_code)
        config = _load_config(path, self.name_or_path, trust_remote_code)
        for key, value in overrides.items():
            setattr(config, key, value)
        has_head = _has_classification_head(config)
        wanted = num_labels or (config.num_labels if has_head else 1)
        new_head = not has_head or wanted != config.num_labels
        if new_head:
            config.num_labels = wanted
            config.id2label = {i: f"LABEL_{i}" for i in range(wanted)}
            config.label2id = {v: k for k, v in config.id2label.items()}
            logger.info("New %d-label classification head on %s", wanted, self.name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path,
            config=config,
            trust_remote_code=trust_remote_code,
            # A head of another size is replaced by a fresh one.
            ignore_mismatched_sizes=new_head,
            # None: safetensors when there, else pickle; True refuses pickle (hub ids too).
            use_safetensors=None if allow_pickle else True,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)

        # Settings that travel with the saved model
        self.max_length = self._cap_max_length(max_length)
        self.activation = _check_activation(activation or self._saved_activation())
        self.calibration = Calibration.load(path) if Path(path).is_dir() else None
        self.device = torch.device(device or default_device())
        self.model.to(self.device)
        # Set by `CrossEncoderTrainer` while a loss runs: the Trainer's wrapper of `model`.
        self.training_module: torch.nn.Module | None = None

    @property
    def config(self):
        """The underlying transformers config."""
        return self.model.config

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Tokenize pairs into padded tensors on the model's device.

        On CUDA the padded length is a multiple of 8 (tensor-core tiles); elsewhere that only
        adds work.
        """
        multiple = 8 if self.device.type == "cuda" else None
        features = self.encode_pairs(pairs, return_tensors="pt", pad_to_multiple_of=multiple)
        return {k: v.to(self.device) for k, v in features.items()}

    def logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw logits of tokenized pairs, shape (batch, num_labels), with gradients.

        Losses call this. It runs through `training_module` when the trainer set one (its
        DDP, FSDP or DeepSpeed wrapper of `model`), so distributed training syncs gradients.
        """
        module = self.training_module if self.training_module is not None else self.model
        return module(**features).logits

    @contextlib.contextmanager
    def _scoring(self, precision: str):
        self.model.eval()
        precision = resolve_precision(precision, self.device)
        with torch.inference_mode(), autocast(self.device, precision):
            yield

    def _batch_logits(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        logits = self.model(**self.tokenize(pairs)).logits.float()  # (batch, num_labels)
        return logits.cpu().numpy()

    def save_pretrained(self, folder: str | Path, **kwargs) -> None:
        """Write safetensors weights, tokenizer and config, and `calibration.json` when the
        model has a calibration.

        The folder loads unchanged in `transformers` and `sentence_transformers.CrossEncoder`,
        which read the same activation and `max_length` from it.

        Args:
            folder: Target folder, created if needed.
            **kwargs: Passed to `PreTrainedModel.save_pretrained`.
        """
        self.write_settings()
        self.model.save_pretrained(folder, **kwargs)
        self.tokenizer.save_pretrained(folder)
        if self.calibration is not None:
            self.calibration.save(folder)
        logger.info("Saved model to %s", folder)

    def write_settings(self) -> None:
        """Store activation and max_length where saved checkpoints carry them."""
        self.model.config.sentence_transformers = {"activation_fn": _ACTIVATIONS[self.activation]}
        self.tokenizer.model_max_length = self.max_length

    def to(self, device: str | torch.device) -> CrossEncoder:
        """Move the model to `device` and return self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def __repr__(self) -> str:
        return (
            f"CrossEncoder({self.name_or_path!r}, num_labels={self.num_labels}, "
            f"max_length={self.max_length}, activation={self.activation!r}, device={self.device})"
        )


def _resolve_path(name_or_path: str) -> tuple[str, dict]:
    if name_or_path in embedded.EMBEDDED_MODELS:
        return embedded.resolve(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists() and not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{name_or_path!r} is a folder without config.json: not a Hugging Face checkpoint."
        )
    if not path.exists() and _looks_like_path(name_or_path):
        raise FileNotFoundError(
            f"Model folder {name_or_path!r} does not exist. Pass an existing folder with "
            f"config.json, a hub id, or an embedded model ({_embedded_names()})."
        )
    return str(path) if path.exists() else name_or_path, {}


def _looks_like_path(name: str) -> bool:
    """A folder path rather than a hub id (`org/name` has at most one slash)."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def _embedded_names() -> str:
    return ", ".join(embedded.EMBEDDED_MODELS)


def _load_config(path: str, name: str, trust_remote_code: bool):
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        if Path(path).is_dir() or not is_offline_mode():
            raise
        raise FileNotFoundError(
            f"{name!r} is not an embedded model or a local folder, and the Hugging Face hub is "
            "offline (HF_HUB_OFFLINE=1) with no copy in the local hub cache. Use an embedded "
            f"model ({_embedded_names()}) or a local folder with config.json; or unset "
            "HF_HUB_OFFLINE where the hub can be reached."
        ) from err


def check_weight_files(path: str, *, allow_pickle: bool) -> None:
    """Refuse a local folder whose weights are only in pickle format, unless allowed."""
    folder = Path(path)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern))
    if pickles:
        raise ValueError(
            f"{path!r} holds its weights only in pickle format ({', '.join(pickles)}), and "
            "loading a pickle can run any code it carries. Use safetensors weights (load the "
            "folder once with allow_pickle=True where that is safe, then save_pretrained it), "
            "or pass allow_pickle=True if you trust where the file came from."
        )


def _check_remote_code(path: str, *, trust_remote_code: bool) -> None:
    """Refuse a local model that needs its own Python code, unless that code is trusted."""
    config_file = Path(path, "config.json")
    if trust_remote_code or not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError:
        return  # transformers reports a broken config.json itself
    auto_map = config.get("auto_map") or {}
    if not auto_map:
        return
    if config.get("model_type") in CONFIG_MAPPING:
        logger.warning(
            "%s ships its own model code (auto_map in config.json), which was not run: the "
            "built-in %r classes load it. Pass trust_remote_code=True to run that code instead.",
            path,
            config.get("model_type"),
        )
        return
    code = sorted({v for v in auto_map.values() if isinstance(v, str)})
    raise ValueError(
        f"{path!r} needs its own Python code to load ({', '.join(code)} in config.json "
        "auto_map), and remote code is off: it would run with your permissions. Read the code, "
        "then pass trust_remote_code=True to allow it."
    )


def _has_classification_head(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or [])


def _check_activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return name


def _check_pairs(pairs) -> list[tuple[str, str]]:
    checked = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(text, str) for text in pair):
            raise TypeError(f"pairs[{i}] must be two strings (query, passage), got {pair!r}")
        checked.append((pair[0], pair[1]))
    return checked
