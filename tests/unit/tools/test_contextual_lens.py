"""Contextual lens (tools/contextual_lens.py): a planted known answer, LatentLens's own index
on the same weights, and the logit / embedding lenses by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import APIS, build_hf_lm, build_model, load_hf, random_images

from transformer_lens_mm.data.corpora import reference_corpus
from transformer_lens_mm.data.tiny_vlms import WORDS
from transformer_lens_mm.errors import CorpusError, LayerRangeError
from transformer_lens_mm.tools.contextual_lens import (
    ContextualIndex,
    build_contextual_index,
    contextual_lens,
    lens_shares,
)

TEXTS = [
    "a red circle next to a blue square",
    "the green triangle is on the left",
    "a picture of a small red square",
    "the big blue circle is on the right of the picture",
    "a yellow star and a green circle",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_hf_lm(tmp_path_factory.mktemp("lens") / "lm", "llama", num_hidden_layers=3)


@pytest.mark.parametrize("api", APIS)
def test_an_image_token_equal_to_a_text_tokens_state_finds_that_token_first(folder, api):
    model = build_model(folder, api)
    index = build_contextual_index(model, TEXTS, layers=[0, 1, 2])
    row = 7  # a contextual vector of the index, and its raw hidden state
    text, pos = TEXTS[int(index.text_index[row])], int(index.positions[row])
    tokens = torch.tensor([model.tokenizer(text)["input_ids"]])
    store = {}
    with model.hooks(
        fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: store.setdefault("x", x.detach()))]
    ):
        model.lm_forward(tokens.to(model.lm_device))
    planted = store["x"][0, pos]

    batch = model.prepare_inputs(random_images(2))
    first_image = int(batch.image_positions[0, 0])

    def write(resid, hook):
        resid = resid.clone()
        resid[0, first_image] = planted * 3.0  # the scale does not matter to a cosine
        return resid

    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", write)]):
        table = contextual_lens(model, batch, index, layers=[1], k=3, random_baseline=False)
    hit = table[(table.item == 0) & (table["index"] == 0) & (table.lens == "contextual")].iloc[0]
    assert hit.token_ids[0] == int(index.token_ids[row])
    assert hit.top_score == pytest.approx(1.0, abs=1e-5)
    other = table[(table.item == 1) & (table["index"] == 0) & (table.lens == "contextual")]
    assert other.iloc[0].top_score < 0.9999


def test_the_index_equals_latentlens_on_the_same_weights(folder):
    latentlens = pytest.importorskip("latentlens")
    hf = load_hf(folder)
    tok = build_model(folder, APIS[0]).tokenizer
    theirs = latentlens.build_index(
        "tiny", TEXTS, layers=[1, 2], max_contexts_per_token=2, batch_size=1,
        device="cpu", show_progress=False, model=hf, tokenizer=tok,
    )  # fmt: skip
    for api in APIS:
        model = build_model(folder, api)
        ours = build_contextual_index(model, TEXTS, layers=[0, 1], max_contexts_per_token=2)
        # their layer l + 1 (HF hidden_states) is our block l's output
        for layer in (0, 1):
            data = theirs._layers_data[layer + 1]
            assert [m["token_id"] for m in data["metadata"]] == ours.token_ids.tolist()
            assert [m["position"] for m in data["metadata"]] == ours.positions.tolist()
            torch.testing.assert_close(
                ours.vectors[layer], data["embeddings"], atol=1e-4, rtol=1e-4
            )
        query = torch.randn(6, int(model.cfg.d_model), generator=torch.Generator().manual_seed(0))
        found = theirs.search(query, top_k=4, layers=[2])
        _, rows = ours.search(query, 1, k=4)
        assert ours.token_ids[rows].tolist() == [[n.token_id for n in q] for q in found]


@pytest.mark.parametrize("api", APIS)
def test_logit_and_embedding_lenses_by_hand_and_shares(folder, api, tmp_path):
    model = build_model(folder, api)
    index = build_contextual_index(model, TEXTS * 2, layers=[0, 2])
    index.save(tmp_path / "ix")
    again = ContextualIndex.load(tmp_path / "ix")
    assert again.layers == [0, 2] and torch.equal(again.vectors[2], index.vectors[2])
    assert again.texts == TEXTS * 2
    batch = model.prepare_inputs(random_images(2, seed=3))
    c = torch.tensor([WORDS.index("circle"), WORDS.index("red")])
    table = contextual_lens(model, batch, again, target_ids=c, k=4)
    assert set(table.lens) == {"contextual", "logit", "embedding"}
    assert set(table.kind) == {"image", "random"}
    assert len(table) == 2 * 2 * 3 * 2 * batch.n_image_tokens
    _, cache = model.run_with_cache(batch)
    resid = cache["blocks.2.hook_resid_post"][1, batch.image_positions[1, 5]]
    logits = model.unembed(model.ln_final(resid[None, None]))[0, 0]
    special = model.tokenizer.all_special_ids
    logits[special] = float("-inf")
    row = table.query("item == 1 and index == 5 and layer == 2 and kind == 'image'")
    assert row[row.lens == "logit"].iloc[0].token_ids == logits.topk(4).indices.tolist()
    cos = F.cosine_similarity(resid[None], model.W_E.detach(), dim=-1)
    cos[special] = float("-inf")
    assert row[row.lens == "embedding"].iloc[0].token_ids == cos.topk(4).indices.tolist()
    got = row[row.lens == "contextual"].iloc[0].names_c
    assert got == any(
        t == int(c[1]) or model.tokenizer.decode([t]).strip() == "red"
        for t in row[row.lens == "contextual"].iloc[0].token_ids
    )
    shares = lens_shares(table)
    assert len(shares) == 2 * 3 * 2 and shares.n_tokens.eq(2 * batch.n_image_tokens).all()
    mean = table.groupby(["layer", "lens", "kind"]).names_c.mean().reset_index()
    assert shares.share.tolist() == mean.names_c.tolist()


def test_the_shipped_corpus_is_the_scripts_output(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from transformer_lens_mm.data.corpora import GENERAL

    general = reference_corpus("general", n=7, seed=3)
    assert len(general) == 7 and general == reference_corpus(n=7, seed=3)
    assert len(set(reference_corpus("general", n=3000))) > 2900  # distinct sentences
    pytest.importorskip("latentlens")
    script = Path(__file__).parents[3] / "scripts" / "make_reference_corpus.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True)
    assert (tmp_path / "general-en.txt.gz").read_bytes() == GENERAL.read_bytes()


def test_corpora_and_bad_input(folder, tmp_path):
    scenes = reference_corpus("scenes", n=5)
    assert len(scenes) == 5 and all(isinstance(t, str) and t for t in scenes)
    pytest.importorskip("latentlens")
    general = reference_corpus("latentlens", n=3, seed=1)
    assert len(general) == 3 and general == reference_corpus("latentlens", n=3, seed=1)
    path = tmp_path / "c.txt"
    path.write_text("one line\n\nanother line\n")
    assert reference_corpus(str(path)) == ["one line", "another line"]
    with pytest.raises(CorpusError, match="unknown corpus"):
        reference_corpus("wikipedia")
    with pytest.raises(CorpusError, match="no text"):
        reference_corpus(["", " "])
    model = build_model(folder, APIS[0])
    with pytest.raises(CorpusError, match="no contextual vector"):
        build_contextual_index(model, ["a", "red"], layers=[0])
    with pytest.raises(LayerRangeError):
        build_contextual_index(model, TEXTS, layers=[3])
    index = build_contextual_index(model, TEXTS[:1], layers=[0])
    batch = model.prepare_inputs(random_images(1))
    with pytest.raises(CorpusError, match="larger reference corpus"):
        contextual_lens(model, batch, index, k=len(index) + 1)
    with pytest.raises(CorpusError, match="built at layers"):
        contextual_lens(model, batch, index, layers=[1])
