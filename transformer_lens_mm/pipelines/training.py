"""Training the projection (LiMBeR-style): LM and encoder frozen, caption cross-entropy.

The loss is the next-token cross-entropy on the caption tokens only (image positions and the
prompt are never targets). AdamW, linear warm-up then a constant learning rate, a progress bar,
and checkpoints in safetensors every ``checkpoint_every`` steps. A run started again on the same
``out_dir`` resumes from the latest checkpoint at the same step and, because each step's batch
is a pure function of ``(seed, step)``, continues exactly as an uninterrupted run would.

Example:
    >>> result = train_projection(model, images, captions,  # doctest: +SKIP
    ...                           config=TrainingConfig(steps=500), out_dir="runs/proj")
    >>> result.losses[-1] < result.losses[0]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.images import ImageLike
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import (
    ArgumentError,
    ConfigError,
    ModelSetupError,
    TrainingError,
)

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "caption_loss",
    "encode_features",
    "train_projection",
]


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Hyper-parameters of projection training."""

    steps: int = 1000  # total optimisation steps
    batch_size: int = 16  # captions per step
    lr: float = 3e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 20  # linear warm-up length
    schedule: str = "constant"  # after warm-up: "constant" or "cosine" (decays to min_lr_ratio)
    min_lr_ratio: float = 0.1  # final lr / peak lr of the cosine schedule
    grad_clip: float | None = 1.0  # max gradient norm (None: no clipping)
    checkpoint_every: int = 100  # steps between checkpoints (needs out_dir)
    seed: int = 0  # seeds the batch order
    append_eos: bool = True  # train the caption to end with EOS
    cache_features: bool = True  # run the encoder once per image, not once per step
    encode_batch_size: int = 32  # batch size of the feature pre-computation

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ConfigError("TrainingConfig.lr must be > 0 and warmup_steps >= 0")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(
                f"TrainingConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(
                f"TrainingConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"
            )

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step ``step``."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(self.steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainingResult:
    """What a training run did."""

    step: int  # steps completed in total (across resumes)
    losses: list[float]  # loss of every completed step (across resumes)
    checkpoint: Path | None  # latest checkpoint folder, if any
    resumed_from: int  # step the run resumed at (0: fresh start)


def caption_loss(model: MultimodalModel, batch: MultimodalInput) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over the caption tokens of ``batch``.

    Args:
        model: A multimodal model.
        batch: A prepared input with ``captions`` (so ``target_mask`` is set).
    """
    if batch.target_mask is None or not bool(batch.target_mask.any()):
        raise ArgumentError("the batch has no caption tokens: prepare it with captions=[...]")
    rows, cols = batch.target_mask.nonzero(as_tuple=True)  # token at col is predicted at col - 1
    logits = model.logits_at(batch, rows, cols - 1)
    return F.cross_entropy(logits.float(), batch.tokens[rows, cols])


@torch.no_grad()
def encode_features(
    model: MultimodalModel,
    images: Sequence[ImageLike],
    *,
    batch_size: int = 32,
    verbose: bool = True,
) -> Float[Tensor, "n n_image_tokens d_image"]:
    """Run the frozen encoder once over ``images`` (CPU tensor of features)."""
    encoder = model.image_encoder
    if encoder is None:
        raise ModelSetupError("the model has no image encoder: pass features=... instead")
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), disable=not verbose, desc="encoding"):
        pixels = encoder.preprocess(list(images[start : start + batch_size]))
        chunks.append(model.encode_pixels(pixels).cpu())
    return torch.cat(chunks)


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of step ``step``: consecutive slices of per-epoch permutations of ``range(n)``."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen).tolist()
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take)
        pos += len(take)
    return out


def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_checkpoint(
    out_dir: Path,
    step: int,
    model: MultimodalModel,
    opt: torch.optim.Optimizer,
    losses: list[float],
    config: TrainingConfig,
    data_key: str,
) -> Path:
    folder = out_dir / f"step-{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    model.image_projection.save(folder)
    tensors, meta = _optimizer_to_files(opt)
    atomic_write(folder / "optimizer.safetensors", lambda p: save_file(tensors, p))
    state = {
        "step": step,
        "losses": losses,
        "config": dataclasses.asdict(config),
        "data_key": data_key,
        "optimizer": meta,
    }
    atomic_write(folder / "trainer_state.json", lambda p: Path(p).write_text(json.dumps(state)))
    # Only now does the checkpoint become "latest"; older ones are removed afterwards.
    atomic_write(
        out_dir / "latest.json",
        lambda p: Path(p).write_text(json.dumps({"checkpoint": folder.name})),
    )
    for old in out_dir.glob("step-*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _data_key(captions: Sequence[str], features: Tensor | None, n: int) -> str:
    digest = hashlib.sha256()
    digest.update(str(n).encode())
    for caption in captions:
        digest.update(caption.encode() + b"\0")
    if features is not None:
        digest.update(features[:: max(1, len(features) // 16)].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_projection(
    model: MultimodalModel,
    images: Sequence[ImageLike] | None,
    captions: Sequence[str],
    *,
    features: Tensor | None = None,
    config: TrainingConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    verbose: bool = True,
) -> TrainingResult:
    """Train ``model.image_projection`` on (image, caption) pairs; everything else is frozen.

    Args:
        model: A multimodal model (either TransformerLens API) with a projection attached.
        images: Training images (or ``None`` with ``features``).
        captions: One caption per image, e.g. ``" a red circle."`` (appended after the prompt).
        features: Precomputed encoder output ``[n, n_image_tokens, d_image]``.
        config: Hyper-parameters.
        out_dir: Folder for checkpoints (and the final projection in ``out_dir/projection``).
        resume: Continue from ``out_dir``'s latest checkpoint when there is one.
        stop_after: Stop after this many steps in this call (checkpointing at the end), e.g. to
            time-box a session; a later call resumes.
        verbose: Show progress bars.

    Returns:
        A :class:`TrainingResult`.
    """
    config = config or TrainingConfig()
    if model.image_projection is None:
        raise ModelSetupError("attach a projection first (attach_vision / from_parts)")
    n = len(features) if features is not None else (len(images) if images is not None else 0)
    if n == 0:
        raise ArgumentError("the training set is empty: pass images (or features) and captions")
    if len(captions) != n:
        raise ArgumentError(
            f"got {len(captions)} captions for {n} images: pass one caption per image"
        )
    if features is None and config.cache_features:
        features = encode_features(
            model, list(images), batch_size=config.encode_batch_size, verbose=verbose
        )
    data_key = _data_key(captions, features, n)

    projection = model.image_projection
    model.requires_grad_(False)
    model.eval()
    projection.requires_grad_(True)
    opt = torch.optim.AdamW(projection.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    out = Path(out_dir) if out_dir is not None else None
    start, losses, checkpoint = 0, [], None
    if out is not None and resume and (out / "latest.json").is_file():
        checkpoint = out / json.loads((out / "latest.json").read_text())["checkpoint"]
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        if state["data_key"] != data_key:
            raise ArgumentError(
                f"{out} holds a run on different data (key {state['data_key']} != {data_key}); "
                "use another out_dir or resume=False"
            )
        weights = load_file(str(checkpoint / "projection.safetensors"))
        projection.load_state_dict({k: v.to(projection.weight.device) for k, v in weights.items()})
        opt_tensors = load_file(str(checkpoint / "optimizer.safetensors"))
        _optimizer_from_files(opt, opt_tensors, state["optimizer"])
        start, losses = int(state["step"]), list(state["losses"])
    resumed_from = start

    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    bar = tqdm(
        range(start, end),
        disable=not verbose,
        desc="training projection",
        initial=start,
        total=config.steps,
    )
    for step in bar:
        idx = _batch_indices(n, config.batch_size, config.seed, step)
        caps = [captions[i] for i in idx]
        if features is not None:
            batch = model.prepare_inputs(
                image_features=features[idx], captions=caps, append_eos=config.append_eos
            )
        else:
            batch = model.prepare_inputs(
                [images[i] for i in idx], captions=caps, append_eos=config.append_eos
            )
        for group in opt.param_groups:
            group["lr"] = config.lr_at(step)
        loss = caption_loss(model, batch)
        if not math.isfinite(loss.item()):
            raise TrainingError(
                f"the loss became {loss.item()} at step {step}: lower the learning rate "
                f"(now {config.lr_at(step):g}) or standardise the image features"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(projection.parameters(), config.grad_clip)
        opt.step()
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if out is not None and (done % config.checkpoint_every == 0 or done == end):
            checkpoint = _save_checkpoint(out, done, model, opt, losses, config, data_key)
    projection.requires_grad_(False)
    final = len(losses) if losses else start
    if out is not None and final == config.steps:
        projection.save(out / "projection")
    return TrainingResult(
        step=final, losses=losses, checkpoint=checkpoint, resumed_from=resumed_from
    )
