"""Native VLMs (tiny random LLaVA and Gemma 3 saved with their processors) through
``NativeVLMBridge`` against the Hugging Face model itself: logits, image positions, attribution,
greedy captions and zero-ablation."""

import pytest
import torch
from helpers import build_native_vlm, random_images
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from transformer_lens_mm import generate_captions, hook_names
from transformer_lens_mm.core.images import to_rgb_images
from transformer_lens_mm.core.native import NativeVLMBridge
from transformer_lens_mm.tools.ablation import ablated
from transformer_lens_mm.tools.attribution import attribute

KINDS = ["llava", "gemma3", "qwen2_5_vl"]
SIZE = 32  # Qwen2.5-VL's images are pinned to this size (the tiny model's 8x8 patches)
PROMPTS = ["a picture of", "the big dog on the left and a"]  # different lengths


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {kind: build_native_vlm(root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="module", params=KINDS)
def case(request, vlm_dirs):
    folder = vlm_dirs[request.param]
    model = NativeVLMBridge.from_pretrained(folder, image_size=SIZE)
    hf = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").eval()
    return request.param, model, hf, AutoProcessor.from_pretrained(folder)


def processor_inputs(processor, images, prompts, padding_side="right"):
    """Independent: the processor's own layout (chat template + placeholder expansion)."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for p in prompts
    ]
    pil = to_rgb_images(images)
    if "Qwen" in type(processor).__name__:  # a fixed size, so that every image has 16 tokens
        pil = [im.resize((SIZE, SIZE), Image.Resampling.BICUBIC) for im in pil]
    processor.tokenizer.padding_side = padding_side
    out = processor(text=texts, images=[[im] for im in pil], return_tensors="pt", padding=True)
    processor.tokenizer.padding_side = "right"
    return dict(out)


def hf_kwargs(kind, inputs):
    keep = ["input_ids", "attention_mask", "pixel_values"]
    keep += {
        "gemma3": ["token_type_ids"],
        "qwen2_5_vl": ["image_grid_thw", "mm_token_type_ids"],
    }.get(kind, [])
    return {k: inputs[k] for k in keep}


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_image_positions_are_the_image_token_positions(case, padding_side):
    _, model, _, processor = case
    images = random_images(2)
    batch = model.prepare_inputs(images, prompts=PROMPTS, padding_side=padding_side)
    ref = processor_inputs(processor, images, PROMPTS, padding_side)
    assert batch.tokens.tolist() == ref["input_ids"].tolist()
    assert batch.attention_mask.tolist() == ref["attention_mask"].tolist()
    image_id = model.image_token_id
    for i in range(2):
        expected = (ref["input_ids"][i] == image_id).nonzero().flatten()
        assert batch.image_positions[i].tolist() == expected.tolist()
    assert batch.n_image_tokens == 16 and batch.grid_size == (4, 4)
    if padding_side == "left":  # different prompts and left padding: different positions
        assert batch.image_positions[0].tolist() != batch.image_positions[1].tolist()
    one = model.prepare_inputs(images[:1], prompts=PROMPTS[0])  # a single input
    single = processor_inputs(processor, images[:1], PROMPTS[:1])["input_ids"][0]
    assert one.image_positions[0].tolist() == (single == image_id).nonzero().flatten().tolist()


def test_logits_equal_the_hugging_face_model(case):
    kind, model, hf, processor = case
    images = random_images(2, seed=1)
    batch = model.prepare_inputs(images, prompts=PROMPTS)
    ref_inputs = processor_inputs(processor, images, PROMPTS)
    pixels = batch.pixel_values.flatten(0, 1) if kind == "qwen2_5_vl" else batch.pixel_values
    torch.testing.assert_close(pixels, ref_inputs["pixel_values"])
    with torch.no_grad():
        ours = model(batch)
        ref = hf(**hf_kwargs(kind, ref_inputs)).logits
    real = batch.attention_mask.bool()
    assert (ours - ref)[real].abs().max() <= 1e-4
    assert ref[real].std() > 0.1  # logits differ visibly between tokens
    if kind == "gemma3":  # the image tokens' two-way attention is part of what matches
        with torch.no_grad():
            causal = hf(**hf_kwargs("llava", ref_inputs)).logits
        assert (causal - ref)[real].abs().max() > 1e-3
    if kind == "qwen2_5_vl":  # so are the 3-D positions: 1-D ones give other logits
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            flat = model(batch, position_ids=positions[None].expand(3, -1, -1))
        assert (flat - ref)[real].abs().max() > 1e-3


def test_cache_holds_both_image_hook_points(case):
    kind, model, _, _ = case
    batch = model.prepare_inputs(random_images(2))
    _, cache = model.run_with_cache(batch)
    # Gemma 3 pools 8x8 patches into 4x4 tokens, Qwen2.5-VL merges 2x2 blocks of them
    n_features = 16 if kind == "llava" else 64
    assert cache[hook_names.IMAGE_FEATURES].shape == (2, n_features, 32)
    assert cache[hook_names.IMAGE_EMBED].shape == (2, 16, 32)
    embeds = cache[hook_names.EMBED]  # the image tokens sit at the image positions
    rows, cols = batch.image_mask.nonzero(as_tuple=True)
    torch.testing.assert_close(embeds[rows, cols], cache[hook_names.IMAGE_EMBED].reshape(-1, 32))


def hf_mlp_scores(kind, hf, inputs, target_ids):
    """Independent: plain autograd on the HF model, torch hooks on each MLP's down_proj input."""
    acts, handles = [], []
    for layer in hf.model.language_model.layers:
        handles.append(
            layer.mlp.down_proj.register_forward_pre_hook(
                lambda m, i: (i[0].retain_grad(), acts.append(i[0]))[1] and None
            )
        )
    for p in hf.parameters():
        p.requires_grad_(True)
    logits = hf(**hf_kwargs(kind, inputs)).logits
    last = inputs["attention_mask"].sum(-1) - 1  # right padding
    rows = torch.arange(len(last))
    y = logits[rows, last, torch.tensor(target_ids)]
    y.sum().backward()
    for h in handles:
        h.remove()
    for p in hf.parameters():
        p.requires_grad_(False)
    return acts, y.detach()


def test_attribution_equals_plain_autograd_on_hugging_face(case):
    kind, model, hf, processor = case
    images = random_images(2, seed=2)
    batch = model.prepare_inputs(images, prompts=PROMPTS)
    targets = [25, 12]
    attr = attribute(model, batch, targets)
    acts, y = hf_mlp_scores(kind, hf, processor_inputs(processor, images, PROMPTS), targets)
    pos = batch.image_positions
    rows = torch.arange(2)[:, None]
    ref = torch.stack([(a * a.grad)[rows, pos] for a in acts], 1)
    assert attr.scores.shape == ref.shape == (2, 2, 16, 64)
    torch.testing.assert_close(attr.target_values, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attr.scores, ref, atol=1e-5, rtol=1e-5)
    assert attr.scores.abs().max() > 1e-3


def hf_greedy(kind, hf, inputs, n_steps):
    """Independent: one item at a time, the full HF forward every step, argmax appended."""
    out = []
    for i in range(inputs["input_ids"].shape[0]):
        keep = inputs["attention_mask"][i].bool()
        item = {k: v[i : i + 1] for k, v in hf_kwargs(kind, inputs).items()}
        if kind == "qwen2_5_vl":  # flattened patches of every image: this image's rows
            n = int(inputs["image_grid_thw"][i].prod())
            item["pixel_values"] = inputs["pixel_values"][i * n : (i + 1) * n]
        for k in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"):
            if k in item:
                item[k] = item[k][:, keep]
        tokens = []
        for _ in range(n_steps):
            with torch.no_grad():
                nxt = int(hf(**item).logits[0, -1].argmax())
            tokens.append(nxt)
            new = (("input_ids", nxt), ("attention_mask", 1), ("token_type_ids", 0))
            for k, v in (*new, ("mm_token_type_ids", 0)):
                if k in item:
                    item[k] = torch.cat([item[k], torch.tensor([[v]])], 1)
        out.append(tokens)
    return out


def test_greedy_captions_with_the_kv_cache_equal_hugging_face_argmax(case):
    kind, model, hf, processor = case
    images = random_images(2, seed=3)
    n = 5
    cached = generate_captions(model, images, prompts=PROMPTS, max_new_tokens=n, stop_at_eos=False)
    uncached = generate_captions(
        model, images, prompts=PROMPTS, max_new_tokens=n, stop_at_eos=False, use_kv_cache=False
    )
    ref = hf_greedy(kind, hf, processor_inputs(processor, images, PROMPTS), n)
    assert cached.tokens.tolist() == uncached.tokens.tolist() == ref


def test_zero_ablation_equals_a_torch_hook_on_hugging_face(case):
    kind, model, hf, processor = case
    images = random_images(2, seed=4)
    batch = model.prepare_inputs(images, prompts=PROMPTS)
    units = [(0, 3), (0, 40), (1, 7), (1, 8)]
    with torch.no_grad(), ablated(model, units, positions=batch.image_mask):
        ours = model(batch)
    inputs = processor_inputs(processor, images, PROMPTS)
    image = inputs["input_ids"] == model.image_token_id
    handles = []
    for layer, block in enumerate(hf.model.language_model.layers):
        chosen = [u for lay, u in units if lay == layer]

        def zero(m, args, chosen=chosen):
            x = args[0].clone()
            x[..., chosen] = torch.where(image[..., None], 0.0, x[..., chosen])
            return (x,)

        handles.append(block.mlp.down_proj.register_forward_pre_hook(zero))
    try:
        with torch.no_grad():
            ref = hf(**hf_kwargs(kind, inputs)).logits
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        clean = hf(**hf_kwargs(kind, inputs)).logits
    real = batch.attention_mask.bool()
    assert (ours - ref)[real].abs().max() <= 1e-4
    assert (clean - ref)[real].abs().max() > 1e-3  # the ablation changed something
