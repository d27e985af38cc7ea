"""LiMBeR proj.ckpt and our safetensors format: round trips, shape errors, unsafe pickles."""

import json
import pickle

import pytest
import torch
from helpers import APIS, build_encoder, build_model

from transformer_lens_mm import ImageProjection, from_parts, load_projection
from transformer_lens_mm.errors import ProjectionShapeError


def write_limber_ckpt(path, d_image=24, d_model=32, seed=0):
    torch.manual_seed(seed)
    linear = torch.nn.Linear(d_image, d_model)  # what LiMBeR saves: a Linear's state dict
    torch.save(linear.state_dict(), path)
    return linear


def test_limber_checkpoint_round_trip(tmp_path):
    linear = write_limber_ckpt(tmp_path / "proj.ckpt")
    proj = ImageProjection.from_limber(tmp_path / "proj.ckpt", d_image=24, d_model=32)
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(proj(x), linear(x), rtol=0, atol=0)
    # a LiMBeR folder (limber_weights/beit_linear/) works through load_projection too
    again = load_projection(tmp_path, d_image=24, d_model=32)
    torch.testing.assert_close(again.weight, linear.weight)


def test_limber_shape_error_names_all_three_numbers(tmp_path):
    write_limber_ckpt(tmp_path / "proj.ckpt", d_image=1024, d_model=4096)
    with pytest.raises(ProjectionShapeError) as err:
        ImageProjection.from_limber(tmp_path / "proj.ckpt", d_image=768, d_model=4096)
    msg = str(err.value)
    assert "1024" in msg and "4096" in msg and "768" in msg


class _Evil:
    def __reduce__(self):  # would run code when unpickled without weights_only
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "proj.ckpt"
    torch.save({"weight": torch.zeros(4, 3), "bias": torch.zeros(4), "x": _Evil()}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        ImageProjection.from_limber(path)
    assert "pwned" not in capsys.readouterr().out
    # and a plain pickle file, not a torch checkpoint at all
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError):
        ImageProjection.from_limber(bad)


def test_wrong_keys_are_reported(tmp_path):
    torch.save({"proj.weight": torch.zeros(4, 3)}, tmp_path / "p.ckpt")
    with pytest.raises(ValueError, match="expected keys 'weight'"):
        ImageProjection.from_limber(tmp_path / "p.ckpt")
    torch.save({"weight": torch.zeros(4, 3), "bias": torch.zeros(5)}, tmp_path / "q.ckpt")
    with pytest.raises(ValueError, match="bias"):
        ImageProjection.from_limber(tmp_path / "q.ckpt")


def test_safetensors_round_trip_with_config(tmp_path):
    proj = ImageProjection(24, 32)
    folder = proj.save(
        tmp_path / "p",
        encoder="vit_tiny",
        lm="tiny",
        prompt="A photo of",
        prepend_bos=True,
        n_image_tokens=16,
    )
    cfg = json.loads((folder / "projection.json").read_text())
    assert cfg["prompt"] == "A photo of" and cfg["d_image"] == 24 and cfg["d_model"] == 32
    loaded = load_projection(folder)
    torch.testing.assert_close(loaded.weight, proj.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded.bias, proj.bias, rtol=0, atol=0)
    assert loaded.config.prepend_bos is True and loaded.config.n_image_tokens == 16
    assert not list(folder.glob("*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("api", APIS)
def test_from_parts_with_a_limber_file_and_saved_prompt(lm_dirs, tmp_path, api):
    linear = write_limber_ckpt(tmp_path / "proj.ckpt")
    model = from_parts(
        lm=lm_dirs["gptj"], encoder=build_encoder(), projection=tmp_path / "proj.ckpt", api=api
    )
    torch.testing.assert_close(model.image_projection.weight, linear.weight)
    assert model.prompt == "A picture of" and model.prepend_bos is False
    folder = model.image_projection.save(tmp_path / "ours", prompt="A photo of", prepend_bos=True)
    model2 = from_parts(lm=lm_dirs["gptj"], encoder=build_encoder(), projection=folder, api=api)
    assert model2.prompt == "A photo of" and model2.prepend_bos is True


@pytest.mark.parametrize("api", APIS)
def test_dimension_mismatch_between_parts(lm_dirs, tmp_path, api):
    write_limber_ckpt(tmp_path / "proj.ckpt", d_image=24, d_model=48)
    with pytest.raises(ProjectionShapeError) as err:
        from_parts(
            lm=lm_dirs["gptj"], encoder=build_encoder(), projection=tmp_path / "proj.ckpt", api=api
        )
    assert all(str(n) in str(err.value) for n in (24, 48, 32))
    with pytest.raises(ProjectionShapeError, match="d_image=40"):
        build_model(lm_dirs["gptj"], api, projection=ImageProjection(40, 32))


def test_bos_token_other_than_the_tokenizers_is_kept_in_the_config(lm_dirs, tmp_path):
    model = build_model(lm_dirs["gptj"], "bridge", prepend_bos=True, bos_token="<pad>")
    batch = model.prepare_inputs(torch.rand(1, 3, 32, 32))
    assert batch.tokens[0, 0].item() == 1  # "<pad>", not the tokenizer's BOS (id 0)
    folder = model.image_projection.save(tmp_path / "p", prepend_bos=True, bos_token="<pad>")
    again = from_parts(lm=lm_dirs["gptj"], encoder=build_encoder(), projection=folder, api="bridge")
    assert again.prepare_inputs(torch.rand(1, 3, 32, 32)).tokens[0, 0].item() == 1
    with pytest.raises(ValueError, match="not a single token"):
        build_model(lm_dirs["gptj"], "bridge", prepend_bos=True, bos_token="red blue")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path, bad):
    from transformer_lens_mm.errors import CorruptWeightsError

    weight = torch.zeros(4, 3)
    weight[1, 2] = bad
    torch.save({"weight": weight, "bias": torch.zeros(4)}, tmp_path / "proj.ckpt")
    with pytest.raises(CorruptWeightsError, match=r"proj\.ckpt.*'weight' holds non-finite"):
        load_projection(tmp_path / "proj.ckpt")
    ImageProjection(3, 4).save(tmp_path / "ours")
    from safetensors.torch import save_file

    save_file(
        {"weight": weight, "bias": torch.zeros(4)}, tmp_path / "ours" / "projection.safetensors"
    )
    with pytest.raises(CorruptWeightsError, match=r"projection\.safetensors"):
        load_projection(tmp_path / "ours")
