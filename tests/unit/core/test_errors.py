"""One root exception: everything the package raises on purpose is a TLMMError, and keeps the
built-in base it always had (code catching ValueError or ImportError still works). The raise
sites are read from the source: a deliberate raise of a built-in exception fails this test.
The package's face is small: at most 30 names, the rest in its modules."""

import ast
import builtins
import warnings
from pathlib import Path

import pytest

import transformer_lens_mm as tlmm
from transformer_lens_mm import errors

PACKAGE = Path(tlmm.__file__).parent
BUILTIN = {
    name
    for name in dir(builtins)
    if isinstance(getattr(builtins, name), type)
    and issubclass(getattr(builtins, name), BaseException)
}
#: built-ins a raise may still name, with why: the interpreter's protocols demand them
ALLOWED = {
    "SystemExit": "the CLI's exit status",
    "NotImplementedError": "bare, in methods a subclass must provide",
    "AttributeError": "a module or proxy __getattr__ (Python's protocol)",
}


def raise_sites() -> list[tuple[str, int, str, str]]:
    """(file, line, exception name, enclosing function) of every ``raise Name(...)`` or
    ``raise Name`` in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        owner = {}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(fn):  # outer functions come first: the innermost wins
                    owner[inner] = fn.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = getattr(exc, "id", None) or getattr(exc, "attr", None)
                if name:
                    rel = str(path.relative_to(PACKAGE))
                    found.append((rel, node.lineno, name, owner.get(node, "<module>")))
    return found


def test_every_deliberate_raise_is_a_tlmm_error():
    sites = raise_sites()
    classes = set(errors.__all__)
    deliberate = [s for s in sites if s[2] in classes or s[2] in BUILTIN]
    builtin = [s for s in deliberate if s[2] in BUILTIN and s[2] not in ALLOWED]
    assert not builtin, "raise a TLMMError subclass instead:\n" + "\n".join(
        f"  {f}:{line}: {name}" for f, line, name, _ in builtin
    )
    ours = [s for s in deliberate if s[2] in classes]
    share = len(ours) / len(deliberate)
    assert len(ours) > 300 and share > 0.97, (len(ours), len(deliberate))
    for f, line, name, function in (s for s in deliberate if s[2] in ALLOWED):
        text = (PACKAGE / f).read_text().split("\n")[line - 1].strip()
        if name == "NotImplementedError":  # where their reason holds, nowhere else
            assert text == "raise NotImplementedError", (f, line)
        if name == "AttributeError":
            assert function.strip("_").endswith("getattr"), (f, line)  # also module_getattr
        if name == "SystemExit":
            assert text == "raise SystemExit(main())", (f, line)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_a_tlmm_error_and_a_builtin(name):
    error = getattr(errors, name)
    assert issubclass(error, tlmm.TLMMError)
    if error is not tlmm.TLMMError:
        builtin_bases = [b for b in error.__mro__[1:] if b.__module__ == "builtins"]
        assert any(b is not Exception and b is not BaseException for b in builtin_bases), name
        assert error.__doc__ and len(error.__doc__) > 40, f"{name} needs a docstring"
    with pytest.raises(tlmm.TLMMError, match="the fix"):
        raise error("the fix")


def test_the_module_lists_every_error_class_and_the_face_reaches_it():
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    assert defined == set(errors.__all__)
    assert tlmm.errors is errors and tlmm.TLMMError is errors.TLMMError


def test_the_face_is_small_and_every_name_resolves():
    assert len(tlmm.__all__) <= 30
    assert len(set(tlmm.__all__)) == len(tlmm.__all__)
    for name in tlmm.__all__:
        assert getattr(tlmm, name) is not None
    assert "per_row_masks" not in tlmm.__all__ and "ablation_hooks" not in tlmm.__all__


def test_names_that_left_the_face_still_resolve_with_a_pointer():
    from transformer_lens_mm.tools.units import per_row_masks

    with pytest.warns(
        DeprecationWarning, match=r"import it from transformer_lens_mm\.tools\.units"
    ):
        assert tlmm.per_row_masks is per_row_masks
    with pytest.warns(DeprecationWarning, match="transformer_lens_mm.errors.ConfigError"):
        assert tlmm.ConfigError is errors.ConfigError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tlmm.load_demo_model.__name__ == "load_demo_model"  # part of the face
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tlmm.nope  # noqa: B018


def test_a_shape_error_from_the_package_is_caught_as_a_tlmm_error(tmp_path):
    import torch

    torch.save({"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}, tmp_path / "proj.ckpt")
    with pytest.raises(tlmm.TLMMError, match="4"):
        tlmm.load_projection(tmp_path / "proj.ckpt", d_image=5, d_model=4)


def test_errors_reach_users_as_the_builtin_too():
    """A few raise sites, called: the new classes are still caught as what they were."""
    import numpy as np

    from transformer_lens_mm.core.images import to_rgb_images
    from transformer_lens_mm.tools.stats import mean_ci

    with pytest.raises(ValueError, match="uint8") as err:
        to_rgb_images(np.zeros((4, 4, 3), dtype=np.int8))
    assert isinstance(err.value, errors.ImageInputError)
    with pytest.raises(ValueError, match="ci must be in") as err:
        mean_ci([1.0, 2.0], ci=2.0)
    assert isinstance(err.value, errors.ArgumentError)
