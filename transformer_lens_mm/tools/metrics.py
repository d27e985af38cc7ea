"""BERTScore and CLIPScore for comparing decodings with captions (the paper's Tables 1 and 2).

Optional: ``pip install "transformer-lens-mm[metrics]"`` (torchmetrics + transformers). The
metric models are loaded once, from a hub name or a local folder, and wrapped as plain callables
that :func:`~transformer_lens_mm.pipelines.experiments.score_texts` takes:

* :func:`bert_scorer` -> ``score(preds, refs) -> Tensor[n]`` (F1 per pair, torchmetrics'
  BERTScore; ``roberta-large`` layer 17 by default, as the ``bert-score`` package does),
* :func:`clip_scorer` -> ``score(images, texts) -> Tensor[n]`` (torchmetrics' CLIPScore,
  ``100 * max(cos, 0)`` per pair, ``openai/clip-vit-large-patch14`` by default).

Machines without hub access: download the model folder elsewhere (``huggingface-cli download
roberta-large --local-dir ...``) and pass the folder. A model that cannot be loaded raises
:class:`MetricModelError` naming the model and what to do.

Example:
    >>> bert = bert_scorer("models/roberta-large")  # doctest: +SKIP
    >>> bert(["a dog on grass"], ["a puppy in a field"])  # doctest: +SKIP
    tensor([0.9...])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from transformer_lens_mm.errors import ArgumentError, MetricModelError

__all__ = ["BERT_SCORE_LAYERS", "MetricModelError", "bert_scorer", "clip_scorer"]

#: the ``bert-score`` package's default layer for common models (others: the last layer)
BERT_SCORE_LAYERS = {
    "roberta-large": 17,
    "roberta-base": 10,
    "bert-base-uncased": 9,
    "bert-large-uncased": 18,
    "microsoft/deberta-xlarge-mnli": 40,
    "distilbert-base-uncased": 5,
}

INSTALL = (
    'pip install "transformer-lens-mm[metrics]" (from a checkout: pip install -e ".[metrics]")'
)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MetricModelError(f"{module} is not installed: {INSTALL}") from err


def _load(what: str, loader: Callable[[str], Any], name: str) -> Any:
    try:
        return loader(name)
    except (OSError, ValueError) as err:
        raise MetricModelError(
            f"could not load the {what} model {name!r} ({type(err).__name__}: {err}). Without hub "
            "access download it elsewhere and pass its local folder, e.g. "
            f"`huggingface-cli download {name} --local-dir models/{name.split('/')[-1]}`."
        ) from err


class _FeatureTensors(torch.nn.Module):
    """A CLIP model whose ``get_*_features`` return tensors: transformers 5 returns an output
    object (projected features in ``pooler_output``), which torchmetrics <= 1.9 cannot use."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def bert_scorer(
    model_name_or_path: str = "roberta-large",
    *,
    num_layers: int | None = None,
    device: str | torch.device | None = None,
    idf: bool = False,
) -> Callable[[Sequence[str], Sequence[str]], Float[Tensor, " n"]]:
    """Load a BERTScore model once; return ``score(preds, refs)`` -> F1 per pair.

    Args:
        model_name_or_path: A hub name or a local folder (tokenizer + model).
        num_layers: Hidden state used (default: :data:`BERT_SCORE_LAYERS` for known models
            named by their hub name, else the last layer).
        device: Where the model runs (default CPU).
        idf: Inverse-document-frequency weighting (computed over each pair's reference).

    Raises:
        MetricModelError: torchmetrics/transformers missing, or the model cannot be loaded.
    """
    functional = _require("torchmetrics.functional.text")
    transformers = _require("transformers")
    tokenizer = _load("BERTScore", transformers.AutoTokenizer.from_pretrained, model_name_or_path)
    model = _load("BERTScore", transformers.AutoModel.from_pretrained, model_name_or_path)
    model.eval()
    layer = num_layers if num_layers is not None else BERT_SCORE_LAYERS.get(model_name_or_path)
    dev = torch.device(device or "cpu")
    model.to(dev)
    max_length = int(min(getattr(tokenizer, "model_max_length", 512), 512))

    def score(preds: Sequence[str], refs: Sequence[str]) -> Tensor:
        preds, refs = list(preds), list(refs)
        if len(preds) != len(refs):
            raise ArgumentError(f"got {len(preds)} predictions for {len(refs)} references")
        out = []
        with torch.no_grad():
            # One pair per call: torchmetrics sorts preds and refs by length separately and
            # does not restore the order, so a batch of pairs comes back permuted or mismatched
            # (Lightning-AI/torchmetrics#2728; caught by tests/test_metrics.py).
            for pred, ref in zip(preds, refs):
                value = functional.bert_score(
                    [pred],
                    [ref],
                    model=model,
                    user_tokenizer=tokenizer,
                    num_layers=layer,
                    device=dev,
                    idf=idf,
                    max_length=max_length,
                    truncation=True,
                )["f1"]
                out.append(float(torch.as_tensor(value).reshape(-1)[0]))
        return torch.tensor(out, dtype=torch.float32)

    return score


def clip_scorer(
    model_name_or_path: str = "openai/clip-vit-large-patch14",
    *,
    device: str | torch.device | None = None,
) -> Callable[[Sequence[Any], Sequence[str]], Float[Tensor, " n"]]:
    """Load a CLIP model once; return ``score(images, texts)`` -> CLIPScore per pair.

    Args:
        model_name_or_path: A hub name or a local folder (``CLIPModel`` + ``CLIPProcessor``).
        device: Where the model runs (default CPU).

    ``images``: PIL images, ``[H, W, 3]`` uint8 arrays or ``[3, H, W]`` tensors.
    Texts longer than the model's context are truncated.

    Raises:
        MetricModelError: torchmetrics/transformers missing, or the model cannot be loaded.
    """
    functional = _require("torchmetrics.functional.multimodal")
    transformers = _require("transformers")
    model = _load("CLIPScore", transformers.CLIPModel.from_pretrained, model_name_or_path)
    processor = _load("CLIPScore", transformers.CLIPProcessor.from_pretrained, model_name_or_path)
    model.eval()
    dev = torch.device(device or "cpu")
    model.to(dev)
    loaded = (_FeatureTensors(model), processor)
    max_tokens = int(model.config.text_config.max_position_embeddings)
    tok = processor.tokenizer

    def as_chw(image: Any) -> Tensor:
        if isinstance(image, Tensor):
            return image
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)

    def clip_text(text: str) -> str:
        ids = tok(text, add_special_tokens=False)["input_ids"][: max_tokens - 2]
        return tok.decode(ids)

    def score(images: Sequence[Any], texts: Sequence[str]) -> Tensor:
        images, texts = list(images), list(texts)
        if len(images) != len(texts):
            raise ArgumentError(f"got {len(images)} images for {len(texts)} texts")
        out = []
        with torch.no_grad():
            for image, text in zip(images, texts):
                # one pair per call: torchmetrics' public clip_score averages what it is given
                value = functional.clip_score(
                    as_chw(image).to(dev), clip_text(text), model_name_or_path=lambda: loaded
                )
                out.append(float(value))
        return torch.tensor(out, dtype=torch.float32)

    return score
