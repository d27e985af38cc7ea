"""Loading a frozen language model into either TransformerLens API, without weight processing.

Weights are loaded as-is (no LayerNorm folding, no centring): the logits then equal the
Hugging Face model's, which the method's ``y_c`` (a raw logit) and its gradients rely on.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from transformer_lens_mm.errors import InputShapeError
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER, require_hooked_transformer

__all__ = ["load_bridge", "load_hooked_transformer", "load_tokenizer"]


def load_tokenizer(name_or_dir: str | os.PathLike) -> Any:
    """Load a Hugging Face tokenizer from a name or folder (pad token defaulted to EOS)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir))
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_hf(name_or_dir: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        name_or_dir, torch_dtype=dtype, attn_implementation="eager"
    ).eval()


def load_hooked_transformer(
    name_or_dir: str | os.PathLike,
    *,
    cls: type | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    hf_model: Any = None,
    tokenizer: Any = None,
    **model_kwargs: Any,
) -> Any:
    """Load a ``HookedTransformer`` (TL 3.x) from a hub name or a local Hugging Face folder.

    Args:
        name_or_dir: TransformerLens model name, or a folder with ``config.json`` + weights.
        cls: The class to build (a ``HookedTransformer`` subclass); default ``HookedTransformer``.
        device: Where to put the model.
        dtype: Weight dtype.
        hf_model: An already loaded Hugging Face model with these weights.
        tokenizer: A tokenizer (default: loaded from ``name_or_dir``).
        **model_kwargs: For ``cls``'s constructor (e.g. ``fused=False``).

    Returns:
        The model, in eval mode, with unprocessed weights.
    """
    require_hooked_transformer("load_hooked_transformer")
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    cls = cls or HookedTransformer
    path = Path(name_or_dir)
    if not (path / "config.json").is_file():
        return cls.from_pretrained_no_processing(
            str(name_or_dir), device=device, dtype=dtype, hf_model=hf_model, tokenizer=tokenizer
        ).eval()
    tokenizer = tokenizer or load_tokenizer(path)
    hf_model = hf_model or _load_hf(str(path), dtype)
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") in ("gemma3_text", "gemma3"):
        return _hooked_gemma3(cls, config, hf_model, tokenizer, device, dtype)
    # TL 3.9 guesses the architecture from substrings of the *path* ("llama", "gemma") and then
    # skips reading config.json: a neutral folder of symlinks makes it read the real config,
    # with the keys TL 3.9 expects and recent transformers no longer writes (GPT-2's n_ctx).
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "model"
        link.mkdir()
        for item in path.resolve().iterdir():
            if item.name != "config.json":
                (link / item.name).symlink_to(item)
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") == "gpt2" and "n_ctx" not in config:
            config["n_ctx"] = config.get("n_positions", 1024)
        (link / "config.json").write_text(json.dumps(config))
        cfg_dict = loading.convert_hf_model_config(str(link))
        cfg = HookedTransformerConfig(**cfg_dict, dtype=dtype, device=str(device or "cpu"))
        state = loading.get_pretrained_state_dict(str(link), cfg, hf_model=hf_model, dtype=dtype)
    model = cls(cfg, tokenizer, move_to_device=False, **model_kwargs)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(cfg.device, print_details=False).eval()


#: The Gemma 3 shapes TL 3.9 builds (it has no config reader for Gemma 3, only these names).
_TL3_GEMMA3 = {(640, 18): "google/gemma-3-270m"}


def _hooked_gemma3(
    cls: type, config: dict, hf_model: Any, tokenizer: Any, device: Any, dtype: torch.dtype
) -> Any:
    """TL 3.9 converts Gemma 3 only by official name: map the folder's shape to that name and
    let TL convert the given weights (no download: ``hf_model`` and its config are passed)."""
    name = _TL3_GEMMA3.get((config.get("hidden_size"), config.get("num_hidden_layers")))
    if name is None:
        raise InputShapeError(
            "TransformerLens 3.9 builds Gemma 3 only with the shapes of "
            f"{sorted(_TL3_GEMMA3.values())}; this folder has hidden_size="
            f"{config.get('hidden_size')}, num_hidden_layers={config.get('num_hidden_layers')}: "
            "use api='bridge'"
        )
    return cls.from_pretrained_no_processing(
        name,
        hf_model=hf_model,
        tokenizer=tokenizer,
        hf_config=hf_model.config,
        device=str(device or "cpu"),
        dtype=dtype,
    ).eval()


def load_bridge(
    name_or_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    hf_model: Any = None,
    tokenizer: Any = None,
) -> Any:
    """Boot a ``TransformerBridge`` (TL 3.9 / 4.x) with legacy hook names, unprocessed weights.

    Args:
        name_or_dir: Hugging Face model name or local folder.
        device: Where to put the model.
        dtype: Weight dtype.
        hf_model: An already loaded Hugging Face model.
        tokenizer: A tokenizer (default: loaded from ``name_or_dir``).
    """
    from transformer_lens.model_bridge import TransformerBridge

    tokenizer = tokenizer or load_tokenizer(name_or_dir)
    hf_model = hf_model or _load_hf(str(name_or_dir), dtype)
    bridge = TransformerBridge.boot_transformers(
        str(name_or_dir),
        hf_model=hf_model,
        tokenizer=tokenizer,
        dtype=dtype,
        device=None if device is None else str(device),
    )
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    if device is not None:
        bridge.to(device, print_details=False)
    return bridge.eval()


def default_api() -> str:
    """``"hooked"`` where ``HookedTransformer`` exists (TL 3.x), else ``"bridge"``."""
    return "hooked" if HAS_HOOKED_TRANSFORMER else "bridge"
