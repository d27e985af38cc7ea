"""The memory layout TL 3.9's ``HookedTransformer`` forward wants for its weight matrices.

TL 3.9 calls ``F.linear(x, W.T.contiguous())`` in MLPs and the unembedding and
``rearrange(W_Q, "h m d -> (h d) m")`` / ``rearrange(W_O, ...).contiguous()`` in attention on
every forward, copying every weight each time. Stored as permuted views of tensors in those
target layouts (same values, same shapes, other strides), the copies become no-ops: on
SmolLM2-135M the copying was most of the cost of a KV-cached decoding step.
``load_state_dict`` keeps the layout (``copy_`` respects strides), and the values every
operation sees are the same, so results are bit for bit TL's.
"""

from __future__ import annotations

import torch

__all__ = ["set_forward_weight_layout"]

# leaf name -> (permutation to the layout the forward wants, and back)
_LAYOUTS = {
    "W_in": ((1, 0), (1, 0)),
    "W_gate": ((1, 0), (1, 0)),
    "W_out": ((1, 0), (1, 0)),
    "W_U": ((1, 0), (1, 0)),
    "W_Q": ((0, 2, 1), (0, 2, 1)),
    "W_K": ((0, 2, 1), (0, 2, 1)),
    "W_V": ((0, 2, 1), (0, 2, 1)),
    "_W_K": ((0, 2, 1), (0, 2, 1)),
    "_W_V": ((0, 2, 1), (0, 2, 1)),
    "W_O": ((2, 0, 1), (1, 2, 0)),
}


def set_forward_weight_layout(model: torch.nn.Module) -> int:
    """Store a ``HookedTransformer``'s weights in the layout its forward asks for.

    Returns:
        The number of parameters whose storage changed.
    """
    changed = 0
    for name, param in model.named_parameters():
        layout = _LAYOUTS.get(name.rsplit(".", 1)[-1])
        if layout is None or param.ndim != len(layout[0]):
            continue
        there, back = layout
        if not param.permute(*there).is_contiguous():
            param.data = param.data.permute(*there).contiguous().permute(*back)
            changed += 1
    return changed
