"""Projection training: the caption loss falls; a resumed run equals an uninterrupted one."""

import itertools
import json

import pytest
import torch
from helpers import APIS, build_model

from transformer_lens_mm import TrainingConfig, load_projection, train_projection
from transformer_lens_mm.pipelines.training import caption_loss

COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "green": (0.0, 1.0, 0.0),
    "yellow": (1.0, 1.0, 0.0),
}


def coloured_set(n: int, seed: int = 0):
    """Images that are a coloured square on grey; caption ' red square .' etc."""
    g = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    images, captions = [], []
    for i in range(n):
        name = names[i % len(names)]
        img = torch.full((3, 32, 32), 0.5) + 0.05 * torch.rand(3, 32, 32, generator=g)
        x, y = torch.randint(0, 16, (2,), generator=g).tolist()
        img[:, y : y + 16, x : x + 16] = torch.tensor(COLOURS[name])[:, None, None]
        images.append(img.clamp(0, 1))
        captions.append(f"{name} square .")
    return images, captions


@pytest.mark.parametrize("api", APIS)
def test_training_lowers_caption_loss(lm_dirs, api, tmp_path):
    model = build_model(lm_dirs["llama"], api)
    images, captions = coloured_set(16)
    batch = model.prepare_inputs(images, captions=captions, append_eos=True)
    before = caption_loss(model, batch).item()
    result = train_projection(
        model,
        images,
        captions,
        out_dir=tmp_path,
        config=TrainingConfig(steps=80, batch_size=8, lr=3e-2, warmup_steps=2, checkpoint_every=20),
        verbose=False,
    )
    after = caption_loss(model, batch).item()
    assert after < 0.75 * before, (before, after)  # random tiny LM: ~3.4 -> ~2.3
    assert result.step == 80 and len(result.losses) == 80
    # the final projection is saved in our format and loads back
    saved = load_projection(tmp_path / "projection")
    torch.testing.assert_close(saved.weight, model.image_projection.weight.cpu())
    # only the projection was trained
    assert all(not p.requires_grad for p in model.image_encoder.parameters())


@pytest.mark.parametrize("api", APIS)
def test_caption_loss_only_counts_caption_tokens(lm_dirs, api):
    model = build_model(lm_dirs["gptj"], api)
    images, captions = coloured_set(2)
    batch = model.prepare_inputs(images, captions=captions, append_eos=True)
    logits = model(batch)
    logp = logits.log_softmax(-1)
    # by hand: caption "red square ." + EOS = 4 targets, predicted from the position before each
    n_prefix = batch.n_image_tokens + 3  # image tokens + "A picture of"
    total, count = 0.0, 0
    for i in range(2):
        for pos in range(n_prefix, n_prefix + 4):
            total -= logp[i, pos - 1, batch.tokens[i, pos]].item()
            count += 1
    assert batch.target_mask.sum().item() == count
    assert caption_loss(model, batch).item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("api", APIS)
def test_resumed_run_matches_uninterrupted_run(lm_dirs, api, tmp_path):
    images, captions = coloured_set(10)
    cfg = TrainingConfig(steps=7, batch_size=4, lr=1e-2, warmup_steps=3, checkpoint_every=2)

    full_model = build_model(lm_dirs["gptj"], api)
    full = train_projection(
        full_model, images, captions, config=cfg, out_dir=tmp_path / "a", verbose=False
    )

    model = build_model(lm_dirs["gptj"], api)
    part = train_projection(
        model, images, captions, config=cfg, out_dir=tmp_path / "b", stop_after=3, verbose=False
    )
    assert part.step == 3
    latest = json.loads((tmp_path / "b" / "latest.json").read_text())["checkpoint"]
    assert latest == "step-00000003"
    fresh = build_model(lm_dirs["gptj"], api)  # a new process would start from scratch weights
    with torch.no_grad():
        fresh.image_projection.weight.zero_()
    resumed = train_projection(
        fresh, images, captions, config=cfg, out_dir=tmp_path / "b", verbose=False
    )
    assert resumed.resumed_from == 3 and resumed.step == 7
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(
        fresh.image_projection.weight, full_model.image_projection.weight, rtol=1e-5, atol=1e-6
    )


def test_feature_cache_gives_the_same_run(lm_dirs):
    images, captions = coloured_set(6)
    runs = []
    for cache in (True, False):
        model = build_model(lm_dirs["gptj"], "bridge")
        cfg = TrainingConfig(steps=3, batch_size=3, lr=1e-2, cache_features=cache)
        runs.append(train_projection(model, images, captions, config=cfg, verbose=False).losses)
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def test_training_bad_input(lm_dirs, tmp_path):
    model = build_model(lm_dirs["gptj"], "bridge")
    images, captions = coloured_set(4)
    with pytest.raises(ValueError, match="one caption per image"):
        train_projection(model, images, captions[:3], verbose=False)
    with pytest.raises(ValueError, match="empty"):
        train_projection(model, [], [], verbose=False)
    with pytest.raises(ValueError, match="must be >= 1"):
        TrainingConfig(steps=0)
    train_projection(
        model,
        images,
        captions,
        out_dir=tmp_path,
        config=TrainingConfig(steps=1, batch_size=2),
        verbose=False,
    )
    other_images, _ = coloured_set(4, seed=9)
    with pytest.raises(ValueError, match="different data"):
        train_projection(
            model,
            other_images,
            ["blue square ."] * 4,
            out_dir=tmp_path,
            config=TrainingConfig(steps=2, batch_size=2),
            verbose=False,
        )


def test_cosine_schedule():
    cfg = TrainingConfig(steps=110, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(10) == pytest.approx(1.0)
    assert cfg.lr_at(60) == pytest.approx(0.55)  # half-way: the mean of peak and floor
    assert cfg.lr_at(110) == pytest.approx(0.1)
    lrs = [cfg.lr_at(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert TrainingConfig(steps=50, lr=1.0, warmup_steps=2).lr_at(49) == 1.0  # constant default
    with pytest.raises(ValueError, match="schedule must be"):
        TrainingConfig(schedule="linear")
