"""Targets (first noun), unit and soft-prompt decoding, the interpretability filter."""

import pytest
import torch
from helpers import WORDS, build_model, random_images

from transformer_lens_mm import generate_captions
from transformer_lens_mm.errors import ReadoutError
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import (
    decode_soft_prompts,
    decode_units,
    random_soft_prompts,
    soft_prompt_table,
    unit_token_ranks,
    vocab_mask,
)
from transformer_lens_mm.tools.targets import (
    LexiconNounFinder,
    first_noun,
    target_inputs,
    targets_from_captions,
    targets_from_tokens,
    token_id_of,
)
from transformer_lens_mm.tools.words import is_dictionary_word, is_interpretable, same_word


@pytest.mark.parametrize(
    ("caption", "noun"),
    [
        (" a red circle on the left.", "circle"),
        (" a man riding a horse on a beach", "man"),
        (" two dogs playing in the snow", "dogs"),
        (" the big blue square", "square"),
        (" red and blue", "red"),  # only adjectives that can be nouns: the fallback
        (" on the of and", None),
    ],
)
def test_first_noun(caption, noun):
    assert first_noun(caption, LexiconNounFinder()) == noun


def test_custom_noun_finder_is_used():
    assert first_noun("a red circle", lambda text: "red") == "red"


def test_token_id_of(lm_dirs):
    from transformer_lens_mm.core.lm_loading import load_tokenizer

    tok = load_tokenizer(lm_dirs["gptj"])
    assert token_id_of(tok, "dog") == WORDS.index("dog")
    assert token_id_of(tok, 5) == 5
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        token_id_of(tok, "zebra")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_id_of(tok, 10_000)


def test_targets_from_captions_and_prefix(lm_dirs):
    model = build_model(lm_dirs["gptj"], "bridge")
    tok = model.tokenizer
    ids = [
        tok(" a big dog on the left", add_special_tokens=False)["input_ids"],
        tok(" on the", add_special_tokens=False)["input_ids"],
    ]
    targets = targets_from_captions(tok, ids, finder=LexiconNounFinder())
    assert targets[1] is None  # no noun: a recorded failure, not an exception
    t = targets[0]
    assert t.word == "dog" and t.token_id == WORDS.index("dog")
    assert [WORDS[i] for i in t.prefix_ids] == ["a", "big"]
    base = model.prepare_inputs(random_images(1), prompts="A picture of")
    extended = target_inputs(model, base, [t])
    assert extended.tokens[0, 16:].tolist() == [
        WORDS.index(w) for w in ["A", "picture", "of", "a", "big"]
    ]
    assert extended.image_positions.tolist() == base.image_positions.tolist()
    # y_c read at the extended input's last position equals the model's own next-token logit
    attr = attribute(model, extended, [t.token_id])
    with torch.no_grad():
        logits = model(extended)
    assert float(attr.target_values[0]) == pytest.approx(float(logits[0, -1, t.token_id]), rel=1e-5)


def test_targets_from_generated_captions(lm_dirs):
    model = build_model(lm_dirs["llama"], "bridge")
    caps = generate_captions(model, random_images(3), max_new_tokens=8)
    targets = targets_from_captions(
        model.tokenizer, caps.tokens.tolist(), eos_token_id=model.tokenizer.eos_token_id
    )
    for t, row in zip(targets, caps.tokens.tolist()):
        if t is not None:
            assert row[len(t.prefix_ids)] == t.token_id  # c is the generated token there
    explicit = targets_from_tokens(model.tokenizer, ["dog", 12])
    assert [t.token_id for t in explicit] == [WORDS.index("dog"), 12]


def test_decode_units_is_w_u_times_w_out(lm_dirs):
    model = build_model(lm_dirs["gptj"], "bridge")
    decoded = decode_units(model, [(1, 5), (0, 3)], k=4, mask_special=False)
    for (layer, unit), toks in zip([(1, 5), (0, 3)], decoded):
        ref = (model.blocks[layer].mlp.W_out[unit] @ model.W_U).softmax(-1)
        p, i = ref.topk(4)
        assert [t for t, _ in toks] == [model.tokenizer.decode([int(x)]) for x in i]
        assert [q for _, q in toks] == pytest.approx(p.tolist(), rel=1e-5)
    masked = decode_units(model, [(1, 5)], k=len(WORDS) - 3)[0]  # 3 special tokens removed
    assert not {t for t, _ in masked} & {"<|endoftext|>", "<pad>", "<unk>"}
    with pytest.raises(IndexError, match="d_mlp"):
        decode_units(model, [(0, 10_000)])
    with pytest.raises(IndexError, match="out of range"):
        decode_units(model, [(7, 0)])
    assert int(vocab_mask(model).sum()) == len(WORDS) - 3


def test_unit_token_ranks_agree_with_the_decoding(lm_dirs):
    model = build_model(lm_dirs["llama"], "bridge")
    units, signs = [(1, 5), (0, 3), (1, 9)], [0.7, -1.2, 2.0]
    # every decodable token, in order
    decoded = decode_units(model, units, signs=signs, k=len(WORDS) - 3)
    for j, rank in enumerate([0, 4, 17]):
        token = decoded[j][rank][0]
        tid = WORDS.index(token.strip())
        assert unit_token_ranks(model, [units[j]], [tid], signs=[signs[j]]).tolist() == [rank]
    tids = [WORDS.index(decoded[j][2][0].strip()) for j in range(3)]
    assert unit_token_ranks(model, units, tids, signs=signs).tolist() == [2, 2, 2]
    # a gated unit has no sign of its own: without one the readout refuses to guess
    with pytest.raises(ReadoutError, match="gated"):
        decode_units(model, units)
    with pytest.raises(ReadoutError, match="gated"):
        unit_token_ranks(model, units, tids)
    with pytest.raises(ValueError, match="special or unused"):
        unit_token_ranks(model, [(0, 1)], [model.tokenizer.pad_token_id])
    with pytest.raises(ValueError, match="one per unit"):
        unit_token_ranks(model, [(0, 1)], [4, 5])


def test_same_word():
    assert same_word(" Circles", "circle") and same_word("Ġstars", " star")
    assert not same_word(" circ", "circle") and not same_word("", "circle")


def test_soft_prompt_decoding_and_random_baseline(lm_dirs):
    model = build_model(lm_dirs["gptj"], "bridge")
    w_e = model.W_E.detach()
    # a soft token equal to 5 x the embedding of "dog" decodes to "dog" first
    table = decode_soft_prompts(model, 5 * w_e[WORDS.index("dog")][None], k=3)
    assert table.iloc[0]["token"].strip() == "dog"
    assert table.iloc[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    _, cache = model.run_with_cache(images=random_images(2))
    embeds = cache["hook_image_embed"]
    table = decode_soft_prompts(model, embeds, k=5)
    assert len(table) == 2 * 16 * 5 and table["cosine"].between(-1, 1).all()
    baseline = random_soft_prompts(embeds, n=100, seed=0)
    assert baseline.shape == (100, 32)
    real = embeds.reshape(-1, 32).norm(dim=-1)
    gap = (baseline.norm(dim=-1)[:, None] - real[None]).abs().min(1).values
    assert (gap < 1e-3).all()  # each random vector has the norm of some real soft token
    torch.testing.assert_close(baseline, random_soft_prompts(embeds, n=100, seed=0))
    # the image-vs-random table: each image row is the decoding of that image's patch
    both = soft_prompt_table(model, embeds, k=2, seed=3)
    assert both["kind"].value_counts().to_dict() == {"image": 2 * 16 * 2, "random": 2 * 16 * 2}
    row = both[(both["kind"] == "image") & (both["image"] == 1) & (both["patch"] == 7)]
    direct = decode_soft_prompts(model, embeds[1, 7], k=2)
    assert row["token_id"].tolist() == direct["token_id"].tolist()
    rand = both[both["kind"] == "random"]
    expect = decode_soft_prompts(model, random_soft_prompts(embeds, n=32, seed=3), k=2)
    assert rand["token_id"].tolist() == expect["token_id"].tolist()


def test_interpretability_filter():
    words = [" water", " fish", " swimming", " boats", " sea", " lake", " river"]
    assert is_interpretable([*words, " xqz", ".", "ing"])
    assert not is_interpretable([*words[:6], " xqz", ".", "12", " ab"])
    assert is_dictionary_word("Ġhorses") and not is_dictionary_word(" on")
    with pytest.raises(ValueError, match="min_words"):
        is_interpretable([" a"], min_words=7)


def test_embedding_scale_is_sqrt_d_model_for_gemma_and_one_for_llama(tmp_path):
    from helpers import build_hf_lm, build_model

    from transformer_lens_mm.tools.decoding import embedding_scale

    gemma = build_model(build_hf_lm(tmp_path / "tiny-gemma3", "gemma3"), "bridge")
    llama = build_model(build_hf_lm(tmp_path / "tiny-llama", "llama"), "bridge")
    assert embedding_scale(gemma) == pytest.approx(32**0.5, rel=1e-5)
    assert embedding_scale(llama) == pytest.approx(1.0, rel=1e-6)


def test_the_filter_uses_the_papers_scowl_list():
    """SCOWL en-US + en-GB at size 60 (supplement S.2), shipped with the package; Webster's
    web2 (the earlier choice) stays available."""
    import gzip
    import hashlib
    from importlib.resources import files

    from transformer_lens_mm.tools.words import SCOWL_LIST, dictionary_words

    raw = (files("transformer_lens_mm") / SCOWL_LIST).read_bytes()
    assert hashlib.md5(raw).hexdigest() == "75b5162ccd6f36d1461a2a6f75b52071"
    words = dictionary_words("scowl")
    assert len(words) == len(gzip.decompress(raw).split()) == 85025
    assert {"colour", "color", "realise", "realize", "fishes", "swimming"} <= words  # US + GB
    assert all(len(w) >= 3 and w.isalpha() and w.islower() for w in list(words)[:5000])
    # inflections are SCOWL's own entries: no lemma step; web2 needs one for "fishes"
    assert is_dictionary_word(" fishes") and is_dictionary_word(" fishes", dictionary="web2")
    web2_only = [
        w for w in (" xenium", " zythum", " abaca") if is_dictionary_word(w, dictionary="web2")
    ]
    assert web2_only and not any(is_dictionary_word(w) for w in web2_only)
    assert is_interpretable([" zythum"] * 7 + ["."] * 3, dictionary="web2")
    assert not is_interpretable([" zythum"] * 7 + ["."] * 3)
    with pytest.raises(ValueError, match="dictionary must be one of"):
        dictionary_words("oed")


def test_the_shipped_scowl_list_is_made_reproducibly(tmp_path):
    """scripts/make_scowl_list.py on Debian's scowl package gives the shipped bytes."""
    import subprocess
    import sys
    from importlib.resources import files
    from pathlib import Path

    from transformer_lens_mm.tools.words import SCOWL_LIST

    if not Path("/usr/share/dict/scowl").is_dir():
        pytest.skip("Debian's scowl package is not installed (apt-get install scowl)")
    script = Path(__file__).resolve().parents[3] / "scripts" / "make_scowl_list.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True)
    made = (tmp_path / "scowl-60-en-us-gb.txt.gz").read_bytes()
    assert made == (files("transformer_lens_mm") / SCOWL_LIST).read_bytes()
