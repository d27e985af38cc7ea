"""Builders of tiny models for the tests (no downloads): ``build_*(**overrides)``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from transformer_lens_mm import ImageProjection, from_parts
from transformer_lens_mm.core.encoders import TimmEncoder
from transformer_lens_mm.data.tiny_vlms import WORDS, build_tiny_vlm, word_tokenizer
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER

APIS = ["hooked", "bridge"] if HAS_HOOKED_TRANSFORMER else ["bridge"]


def build_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS`, saved to ``folder`` and reloaded from disk."""
    return word_tokenizer(folder)


def build_hf_lm(folder: Path, kind: str = "gptj", seed: int = 0, **overrides) -> Path:
    """Save a tiny GPT-J-, Llama- or GPT-2-like causal LM (+ tokenizer) to ``folder``."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    common = dict(vocab_size=len(WORDS), bos_token_id=0, eos_token_id=0, pad_token_id=1)
    if kind == "gptj":
        base = dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64)
        cfg = GPTJConfig(**{**base, **common, **overrides})
        model = GPTJForCausalLM(cfg)
    elif kind == "llama":
        base = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        cfg = LlamaConfig(**{**base, **common, **overrides})
        model = LlamaForCausalLM(cfg)
    elif kind == "gemma3":  # scaled embeddings, q/k norms, sandwich norms, sliding windows
        cfg = Gemma3TextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            max_position_embeddings=64,
            sliding_window=8,
            **{**common, **overrides},
        )
        model = Gemma3ForCausalLM(cfg)
    elif kind == "gpt2":  # saved without n_ctx by recent transformers (TL 3.9 expects it)
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **{**common, **overrides})
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(kind)
    # Random init in HF is tiny; scale up so that logits differ visibly between tokens.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    model.save_pretrained(folder)
    build_tokenizer(folder)
    return folder


def load_hf(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def build_encoder(**overrides) -> TimmEncoder:
    """A tiny ViT (32 px, 8 px patches -> 4x4 = 16 tokens of width 24)."""
    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, depth=1, embed_dim=24, num_heads=2)
    kwargs.update(overrides)
    return TimmEncoder.from_timm("vit_tiny_patch16_224", **kwargs)


def build_projection(d_image: int = 24, d_model: int = 32, seed: int = 1) -> ImageProjection:
    torch.manual_seed(seed)
    proj = ImageProjection(d_image, d_model)
    with torch.no_grad():
        proj.weight.normal_(0, 0.5)
        proj.bias.normal_(0, 0.1)
    return proj


def build_model(folder: Path, api: str, **kwargs):
    enc = kwargs.pop("encoder", None) or build_encoder()
    proj = kwargs.pop("projection", None) or build_projection(enc.d_image)
    return from_parts(lm=folder, encoder=enc, projection=proj, api=api, **kwargs)


def tl_config_model(**overrides):
    """A 2-layer TL 3.x ``HookedTransformer`` built from a config (d_model 32, 4 heads of 8,
    50 tokens), converted to ``HookedMultimodalTransformer``; ``overrides`` go to the config."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from transformer_lens_mm import HookedMultimodalTransformer

    cfg = dict(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=50,
        n_ctx=64,
        act_fn="gelu_new",
        normalization_type="LN",
        seed=0,
    )
    cfg.update(overrides)
    return HookedMultimodalTransformer.from_hooked_transformer(
        HookedTransformer(HookedTransformerConfig(**cfg))
    )


def random_images(n: int, size: int = 40, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


def build_planted_model(
    folder: Path,
    *,
    word: str = "dog",
    unit: int = 7,
    seed: int = 0,
    write: float = 0.3,
    word_bias: float = -4.0,
):
    """A hand-built GPT-J-like model with one planted multimodal neuron.

    Layer 0, MLP unit ``unit`` reads the soft-token direction ``u`` (what the projection makes of
    the image-feature direction ``f``) and writes the direction ``e`` that the unembedding maps
    to ``word``. Layer 1's attention is uniform with identity value/output maps, so whatever the
    image positions carry reaches the last position. Every other weight is small and random.

    Returns:
        ``(folder, projection, f)``: the saved model, an :class:`ImageProjection` (d_image 24),
        and the feature direction that makes the neuron fire.
    """
    g = torch.Generator().manual_seed(seed)
    d, d_image = 32, 24
    folder.mkdir(parents=True, exist_ok=True)
    cfg = GPTJConfig(
        n_embd=d,
        n_layer=2,
        n_head=4,
        rotary_dim=4,
        n_positions=64,
        vocab_size=len(WORDS),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    model = GPTJForCausalLM(cfg).eval()

    def unit_vec(n):
        v = torch.randn(n, generator=g)
        v = v - v.mean()  # LayerNorm keeps zero-mean directions
        return v / v.norm()

    u, e = unit_vec(d), unit_vec(d)
    e = e - (e @ u) * u
    e = e / e.norm()
    wid = WORDS.index(word)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for block in model.transformer.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_1.bias.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        mlp0 = model.transformer.h[0].mlp
        mlp0.fc_in.weight[unit] = 3.0 * u  # reads u (after ln_1, |x| ~ sqrt(d))
        mlp0.fc_in.bias[unit] = -6.0  # fires only when the token is mostly u
        mlp0.fc_out.weight[:, unit] = write * e  # writes e
        attn1 = model.transformer.h[1].attn
        attn1.q_proj.weight.zero_()
        attn1.k_proj.weight.zero_()
        attn1.v_proj.weight.copy_(torch.eye(d))
        attn1.out_proj.weight.copy_(torch.eye(d))
        model.transformer.h[1].mlp.fc_out.weight.zero_()
        model.lm_head.weight[wid] = 3.0 * e
        model.lm_head.bias.zero_()
        model.lm_head.bias[wid] = word_bias  # the word is unlikely unless e is present
    model.save_pretrained(folder)
    build_tokenizer(folder)

    f = torch.randn(d_image, generator=g)
    f = f / f.norm()
    proj = ImageProjection(d_image, d)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(d, d_image, generator=g) * 0.5)
        proj.weight += 6.0 * torch.outer(u, f)  # feature direction f -> soft-token direction u
        proj.bias.zero_()
    return folder, proj, f


def build_concept_model(
    folder: Path,
    planted: dict[str, int],
    *,
    seed: int = 0,
    write: float = 0.3,
    word_bias: float = -4.0,
    generic: int | None = None,
):
    """:func:`build_planted_model` with one planted neuron per concept: layer 0 unit
    ``planted[word]`` reads its own soft-token direction and writes ``word``. With ``generic``,
    layer 0 unit ``generic`` reads one more direction (feature ``"generic"``, for every image)
    and writes all the planted words at once: a generic "image" unit.

    Returns:
        ``(folder, projection, {word: feature direction})`` (+ ``"generic"``).
    """
    g = torch.Generator().manual_seed(seed)
    d, d_image = 32, 24
    folder.mkdir(parents=True, exist_ok=True)
    cfg = GPTJConfig(
        n_embd=d,
        n_layer=2,
        n_head=4,
        rotary_dim=4,
        n_positions=64,
        vocab_size=len(WORDS),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    model = GPTJForCausalLM(cfg).eval()

    def unit_vec(n):
        v = torch.randn(n, generator=g)
        v = v - v.mean()  # LayerNorm keeps zero-mean directions
        return v / v.norm()

    def orthogonal(v, others):
        for o in others:
            v = v - (v @ o) * o
            v = v - v.mean()
        return v / v.norm()

    dirs: list[torch.Tensor] = []
    planted_dirs = {}
    for word in planted:
        u = orthogonal(unit_vec(d), dirs)
        dirs.append(u)
        e = orthogonal(unit_vec(d), dirs)
        dirs.append(e)
        planted_dirs[word] = (u, e)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for block in model.transformer.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_1.bias.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        mlp0 = model.transformer.h[0].mlp
        attn1 = model.transformer.h[1].attn
        attn1.q_proj.weight.zero_()
        attn1.k_proj.weight.zero_()
        attn1.v_proj.weight.copy_(torch.eye(d))
        attn1.out_proj.weight.copy_(torch.eye(d))
        model.transformer.h[1].mlp.fc_out.weight.zero_()
        model.lm_head.bias.zero_()
        for word, unit in planted.items():
            u, e = planted_dirs[word]
            wid = WORDS.index(word)
            mlp0.fc_in.weight[unit] = 3.0 * u  # reads u (after ln_1, |x| ~ sqrt(d))
            mlp0.fc_in.bias[unit] = -6.0  # fires only when the token is mostly u
            mlp0.fc_out.weight[:, unit] = write * e  # writes e
            model.lm_head.weight[wid] = 3.0 * e
            model.lm_head.bias[wid] = word_bias  # the word is unlikely unless e is present
        if generic is not None:  # its own stream: the planted-only model stays as it was
            g2 = torch.Generator().manual_seed(seed + 1)
            u_g = torch.randn(d, generator=g2)
            u_g = orthogonal(u_g - u_g.mean(), dirs)
            e_all = sum(planted_dirs[w][1] for w in planted)
            mlp0.fc_in.weight[generic] = 3.0 * u_g
            mlp0.fc_in.bias[generic] = -6.0
            mlp0.fc_out.weight[:, generic] = write * e_all / e_all.norm()
    model.save_pretrained(folder)
    build_tokenizer(folder)

    proj = ImageProjection(d_image, d)
    features = {}
    with torch.no_grad():
        proj.weight.copy_(torch.randn(d, d_image, generator=g) * 0.5)
        fdirs: list[torch.Tensor] = []
        for word in planted:
            f = torch.randn(d_image, generator=g)
            for o in fdirs:
                f = f - (f @ o) * o
            f = f / f.norm()
            fdirs.append(f)
            features[word] = f
            proj.weight += 6.0 * torch.outer(planted_dirs[word][0], f)  # f -> u
        if generic is not None:
            f = torch.randn(d_image, generator=g2)
            for o in fdirs:
                f = f - (f @ o) * o
            features["generic"] = f / f.norm()
            proj.weight += 6.0 * torch.outer(u_g, features["generic"])
        proj.bias.zero_()
    return folder, proj, features


def planted_features(
    f: torch.Tensor,
    n: int,
    *,
    on: bool,
    n_tokens: int = 16,
    seed: int = 0,
    also: torch.Tensor | None = None,
):
    """Encoder-like features; with ``on``, half the patches carry the direction ``f`` (and with
    ``also``, the other half carry that direction: e.g. the generic unit's)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, n_tokens, f.shape[0], generator=g) * 0.3
    feats = feats - (feats @ f)[..., None] * f  # noise carries no f
    if also is not None:
        feats = feats - (feats @ also)[..., None] * also
        feats[:, n_tokens // 2 :] += 3.0 * also
    if on:
        feats[:, : n_tokens // 2] += 3.0 * f
    return feats


def build_native_vlm(folder: Path, kind: str = "llava", seed: int = 0, chat: bool = True) -> Path:
    """:func:`~transformer_lens_mm.data.tiny_vlms.build_tiny_vlm` (LLaVA, Gemma 3, Qwen2.5-VL)."""
    return build_tiny_vlm(folder, kind, seed=seed, chat=chat)


METRIC_WORDS = [
    "a",
    "dog",
    "cat",
    "on",
    "the",
    "grass",
    "red",
    "ball",
    "picture",
    "of",
    "blue",
    "sky",
]


def build_tiny_bert(path: Path) -> Path:
    """A tiny random BERT + word-piece tokenizer saved to ``path`` (BERTScore offline)."""
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *METRIC_WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(cfg).save_pretrained(path)
    return path


def build_tiny_clip(path: Path) -> Path:
    """A tiny random CLIP + processor saved to ``path`` (CLIPScore offline)."""
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<|pad|>": 2}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(
        str(path / "vocab.json"), str(path / "merges.txt"), pad_token="<|pad|>"
    )
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    transformers.CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 24,
            "eos_token_id": 1,
            "bos_token_id": 0,
            "pad_token_id": 2,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    transformers.CLIPModel(cfg).save_pretrained(path)
    return path
