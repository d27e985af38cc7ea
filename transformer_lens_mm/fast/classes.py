"""Switching a built TL 3.x model's modules to fused subclasses (norms, attention).

A fused class derives directly from one TransformerLens class and carries copies of the methods
of a plain "methods" class; its TL fallback is ``self._tl.<method>(self, ...)``. Direct
subclasses keep TL's object layout (TL's ``AbstractAttention`` derives from the slotted ``ABC``;
a mixin base would change the layout), so a built module's ``__class__`` can be switched in
place, with no weight copy. The classes are built on first use, registered by name in the
defining module (which serves them through its ``__getattr__``), so a pickled model loads in a
fresh process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_lens_mm.errors import ArgumentTypeError

_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def check_model(model: Any) -> None:
    """A clear error for a ``set_fused_*`` call given something other than a model."""
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(
            f"expected a TransformerLens model (a torch.nn.Module), got {type(model).__name__}; "
            "pass the model itself, e.g. set_fused_attention(model, False)"
        )


def has_hooks(*points: Any) -> bool:
    """Whether a hook (forward or backward, pre or post) is attached to any of these hook points."""
    for point in points:  # a loop, not any(<generator>): this runs per module call
        if (
            point._forward_hooks
            or point._forward_pre_hooks
            or point._backward_hooks
            or point._backward_pre_hooks
        ):
            return True
    return False


def sdpa(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float
) -> Tensor:
    """``F.scaled_dot_product_attention`` on ``[batch, head, pos, d_head]`` tensors, with fewer
    key/value heads than query heads allowed: SDPA's own grouping where it is fast (no mask, as
    Hugging Face does it), else keys and values copied per query head (TL's
    ``repeat_interleave``)."""
    repeats = q.shape[1] // k.shape[1]
    gqa = repeats > 1 and attn_mask is None and _SDPA_HAS_GQA
    if repeats > 1 and not gqa:
        k, v = (t[:, :, None].expand(-1, -1, repeats, -1, -1).flatten(1, 2) for t in (k, v))
    extra = {"enable_gqa": True} if gqa else {}
    return F.scaled_dot_product_attention(
        q,
        k.to(q.dtype),
        v.to(q.dtype),
        attn_mask=attn_mask,
        is_causal=is_causal,
        scale=scale,
        **extra,
    )


class FusedClasses:
    """TL class -> fused subclass for one defining module, built on first use.

    Args:
        module_name: The defining module's ``__name__`` (where the classes are registered).
        spec: Returns ``(TL class, methods class, extra class attributes)`` triples; called
            once, on first use (importing TL's components is slow).
    """

    def __init__(
        self, module_name: str, spec: Callable[[], Sequence[tuple[type, type, dict[str, Any]]]]
    ) -> None:
        self._module_name = module_name
        self._spec = spec
        self._classes: dict[type, type] = {}

    def get(self) -> dict[type, type]:
        if not self._classes:
            namespace = vars(sys.modules[self._module_name])
            for tl, methods, extra in self._spec():
                name = f"Fused{tl.__name__}"
                body = {  # the methods class's own and inherited methods, the nearest winning
                    k: v
                    for base in reversed(methods.__mro__[:-1])
                    for k, v in vars(base).items()
                    if not k.startswith("__")
                }
                body.update(
                    __module__=self._module_name,
                    __qualname__=name,
                    __doc__=methods.__doc__,
                    _tl=tl,
                    **extra,
                )
                cls = type(name, (tl,), body)
                namespace[name] = cls  # importable by name, so a pickled model loads again
                self._classes[tl] = cls
        return self._classes

    def module_getattr(self, name: str) -> Any:
        """The defining module's ``__getattr__``: its fused classes by name, built on demand."""
        if name.startswith("Fused"):
            for cls in self.get().values():
                if cls.__name__ == name:
                    return cls
        raise AttributeError(f"module {self._module_name!r} has no attribute {name!r}")

    def switch(self, model: torch.nn.Module, enabled: bool) -> list[torch.nn.Module]:
        """Set ``fused`` on the model's fused modules; enabling first gives TL's modules their
        fused classes (disabling leaves a module that was never switched TL's own class).
        Returns every module whose flag was set."""
        check_model(model)
        classes = self.get()
        fused_types = set(classes.values())
        switched = []
        for module in model.modules():
            cls = type(module)
            if cls in classes and enabled:
                module.__class__ = classes[cls]
            elif cls not in fused_types:
                continue
            module.fused = enabled
            switched.append(module)
        return switched
