"""One root exception: everything the package raises on purpose is a TLMMError, and keeps the
built-in base it always had (code catching ValueError or ImportError still works)."""

import pytest

import transformer_lens_mm as tlmm
from transformer_lens_mm.core import errors


@pytest.mark.parametrize(
    ("error", "base"),
    [
        (tlmm.ProjectionShapeError, ValueError),
        (tlmm.ConfigError, ValueError),
        (tlmm.MissingWeightsError, ImportError),
        (tlmm.CorruptWeightsError, RuntimeError),
        (tlmm.OutputExistsError, FileExistsError),
        (tlmm.MetricModelError, RuntimeError),
        (tlmm.LayerRangeError, IndexError),
        (tlmm.PositionGroupError, ValueError),
        (tlmm.HookShapeError, ValueError),
        (tlmm.CorpusError, ValueError),
        (tlmm.UnsupportedModelError, NotImplementedError),
        (tlmm.MissingPackageError, ImportError),
        (tlmm.StoreError, RuntimeError),
        (tlmm.DiskFullError, OSError),
    ],
)
def test_every_error_is_a_tlmm_error_and_its_builtin(error, base):
    assert issubclass(error, tlmm.TLMMError) and issubclass(error, base)
    with pytest.raises(tlmm.TLMMError):
        raise error("x")


def test_the_module_lists_every_error_class():
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    assert defined == set(errors.__all__) and set(errors.__all__) <= set(tlmm.__all__)


def test_a_shape_error_from_the_package_is_caught_as_a_tlmm_error(tmp_path):
    import torch

    torch.save({"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}, tmp_path / "proj.ckpt")
    with pytest.raises(tlmm.TLMMError, match="4"):
        tlmm.load_projection(tmp_path / "proj.ckpt", d_image=5, d_model=4)
