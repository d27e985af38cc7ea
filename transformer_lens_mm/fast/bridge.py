"""Fused norms and attention for ``MultimodalTransformerBridge`` (TL 4.3) while hooks are unused.

TransformerLens 4.3's ``TransformerBridge`` recomputes what the Hugging Face modules it wraps
would compute, so that hook points can see the intermediate values: a LayerNorm as eight tensor
operations (``NormalizationBridge``), an RMSNorm as TL's six operations for the hooks followed
by Hugging Face's own six (``RMSNormalizationBridge``), and attention eagerly (scores, a mask
normalised with ``masked_fill``, a softmax guarded against fully masked rows, the pattern's NaN
scrub, pattern @ V; ``JointQKVAttentionBridge`` for GPT-2, ``PositionEmbeddingsAttentionBridge``
for Llama-family models). On a GPU a decoding step of a small model is bound by launching
kernels; a KV-cached GPT-2-small-sized caption dispatched 2.4x the operations of Hugging Face's
``generate``, a SmolLM2-sized one 1.8x.

Here a norm returns its Hugging Face module's output directly, and attention runs one
``scaled_dot_product_attention`` call, **unless** a hook (forward or backward, including those
``run_with_cache`` adds) is attached to a hook point only TL's computation can serve
(``hook_scale``/``hook_normalized``; ``hook_attn_scores``/``hook_pattern``), or the layer is
configured in a way the fused path does not reproduce (split Q/K/V inputs, per-head results,
Q/K norms, gated queries, soft-capped scores, attention sinks, rotary conventions other than
Llama's, an additive bias in the mask, training with dropout, TL's non-compatibility mode):
then TransformerLens's own forward runs. Every other hook point (``hook_in``/``hook_out``,
``hook_q``/``k``/``v``, ``hook_rot_q``/``rot_k``, ``hook_z``) still fires with TL's values.
Same values up to float rounding (tested: ``tests/test_fused_bridge.py``);
``set_fused_bridge(model, False)`` restores TL's computation.

Per-call overhead goes too (with launches, Python time per decoding step is what bounds a small
model): an attention none of whose hook points (nor its projections' or their wrapped modules')
has a hook is one function, ``_whole`` (the q/k/v products, GPT-2's as one, the rotary
embedding, the KV cache, one SDPA call, the output projection, with no TL helper between; a
hook on any of those points brings TL's per-component path back for that layer, where the point
fires); a component, norm, MLP or block without hooks of its own calls its ``forward`` directly
(what ``nn.Module.__call__`` would do); the wrapped Hugging Face model builds SDPA's boolean
masks rather than eager float ones (GPT-2 and Llama types: ``_boolean_masks``); a block or an
MLP without hooks on its own hook points (an MLP: nor on its projections') is its Hugging Face
module's call (TL's block forward wires and clears capture hooks and calls two identity hook
points on every call, the MLP's two more and sets flags); every component call enters
Accelerate's ``align_module_device`` even when no weight is offloaded (skipped where the
wrapped module has no Accelerate hook); every block call runs ``inspect.signature`` on its
Hugging Face layer (read once per class); hook points without a hook return their input without
``nn.Module.__call__``, and linear bridges without hooks call their Hugging Face module
directly (unless a global module hook is registered). GPT-2's q, k and v are one product with
``c_attn``'s weight while TL's q/k/v weights are still views of it (TL splits it into three
products): checked on every call, so in-place edits show and replaced weights, hooks on the
q/k/v hook points or gradients for those weights bring TL's back.

The bridge is young and changes between releases, so the fused classes are used only with the
TransformerLens versions they were checked against (``versions.VERIFIED["fused_bridge"]``);
elsewhere ``set_fused_bridge`` switches nothing and says so by returning 0.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules import module as _nn_module

import transformer_lens_mm.fast.versions as versions
from transformer_lens_mm.fast.classes import FusedClasses, check_model, has_hooks, sdpa

__all__ = ["set_fused_bridge"]


class _MaskPlan(NamedTuple):
    """TL's masking of one forward, as ``scaled_dot_product_attention`` arguments."""

    attn_mask: Tensor | None  # boolean, True = may attend
    is_causal: bool
    rows: Tensor | None  # [batch, 1, query, 1]: queries that see some key (None: all do)


_NO_MASK = _MaskPlan(None, False, None)
_CAUSAL = _MaskPlan(None, True, None)
# The last plan computed: every layer of a forward gets the same mask tensor.
_memo: tuple[Any, ...] = ()


def _mask_plan(
    mask: Tensor | None, n_query: int, n_key: int, causal: bool, device: torch.device | None = None
) -> _MaskPlan | None:
    """What ``AttentionBridge._apply_reconstruct_attention_mask`` does (compatibility mode), as
    SDPA arguments; ``None`` where SDPA would not compute the same (a mask carrying an additive
    bias, a mask of fewer than 4 dimensions).

    A 4-D Hugging Face mask is authoritative (it already holds the causal structure); without
    one TL builds the causal mask itself. A query that sees no key (TL: a NaN pattern, zeroed)
    is pointed at every key, and its output zeroed afterwards through ``rows``.
    """
    global _memo
    if mask is None:
        if not causal or n_query == 1:
            return _NO_MASK
        if n_query == n_key:
            return _CAUSAL
        tril = torch.ones(n_query, n_key, dtype=torch.bool, device=device).tril(n_key - n_query)
        return _MaskPlan(tril, False, None)
    if mask.ndim != 4:
        return None
    key = (n_query, n_key, None if mask.is_inference() else mask._version)
    if _memo and _memo[0]() is mask and _memo[1] == key:
        return _memo[2]
    m = mask[..., :n_key]
    if m.shape[-2] != n_query:
        m = m[..., -n_query:, :]
    if m.dtype == torch.bool:
        allowed = m
    elif m.is_floating_point():
        masked = m <= torch.finfo(m.dtype).min
        if not bool((masked | (m == 0)).all()):
            return None  # a bias (ALiBi-like) folded into the mask: TL adds it, SDPA would too,
            # but not with TL's -inf sentinel semantics; leave it to TL
        allowed = ~masked
    else:
        return None
    rows = allowed.any(-1, keepdim=True)
    if not bool(rows.all()):
        plan = _MaskPlan(allowed | ~rows, False, rows)
    elif bool(allowed.all()):
        plan = _NO_MASK
    elif (
        n_query == n_key
        and bool((allowed == torch.ones_like(allowed[0, 0]).tril()).all())  # plain causal
    ):
        plan = _CAUSAL
    else:
        plan = _MaskPlan(allowed, False, None)
    if not mask.is_inference():
        _memo = (weakref.ref(mask), key, plan)
    return plan


def _attend(q: Tensor, k: Tensor, v: Tensor, plan: _MaskPlan, scale: float) -> Tensor:
    """SDPA on ``[batch, head, pos, d_head]`` tensors with TL's zeroing of blind queries."""
    z = sdpa(q, k, v, plan.attn_mask, plan.is_causal, scale)
    if plan.rows is not None:
        z = z * plan.rows.to(z.dtype)
    return z


def _call(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``GeneralizedComponent.__call__`` without Accelerate's ``align_module_device`` where the
    wrapped module has no Accelerate hook (then that context manager does nothing, at ~10 us per
    call of every component)."""
    inner = self._modules.get("_original_component")
    if self.fused and (inner is None or "_hf_hook" not in inner.__dict__):
        if (
            _GLOBAL_HOOKS_KNOWN
            and not (
                self._forward_hooks
                or self._forward_pre_hooks
                or self._backward_hooks
                or self._backward_pre_hooks
                or self._compiled_call_impl is not None
                or _G_FWD
                or _G_PRE
                or _G_BWD
                or _G_BWD_PRE
            )
            and not _tracing()
        ):
            return self.forward(*args, **kwargs)  # what ``nn.Module.__call__`` would call
        return torch.nn.Module.__call__(self, *args, **kwargs)
    return self._tl.__call__(self, *args, **kwargs)


# torch's registries of global module hooks (dicts filled in place by
# ``register_module_forward_hook`` and friends); None where this torch names them otherwise.
_GLOBAL_HOOKS = [
    getattr(_nn_module, f"_global_{kind}_hooks", None)
    for kind in ("forward", "forward_pre", "backward", "backward_pre")
]
_GLOBAL_HOOKS_KNOWN = all(isinstance(hooks, dict) for hooks in _GLOBAL_HOOKS)
_G_FWD, _G_PRE, _G_BWD, _G_BWD_PRE = (h if isinstance(h, dict) else {} for h in _GLOBAL_HOOKS)
_tracing = torch._C._get_tracing_state
_CONV1D: list[Any] = [None]  # transformers' Conv1D class, once ``_conv1d`` has imported it

# The checks below run on every module call of a decoding step (thousands per caption batch),
# where a Python function call costs about what the module's own work does on a small model:
# they are written out inline (attribute and dict lookups, no helper calls).


def _plain_dispatch() -> bool:
    """No global module hook is registered and nothing traces: skipping a module call (or
    ``nn.Module.__call__``) changes nothing anyone can observe. False on a torch whose global
    hook registries are not where this looks (then every call goes through torch)."""
    return _GLOBAL_HOOKS_KNOWN and not (_G_FWD or _G_PRE or _G_BWD or _G_BWD_PRE) and not _tracing()


def _unhooked(*modules: torch.nn.Module) -> bool:
    """None of ``modules`` has a hook of its own, is compiled or has its ``forward`` wrapped on
    the instance (as nnsight's tracing and other wrapping tools do): each call is its class's
    plain ``forward``, so skipping the call (or calling what it wraps) changes nothing."""
    for module in modules:  # a loop, not any(<generator>): one call checks them all
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or module._backward_pre_hooks
            or module._compiled_call_impl is not None
            or "forward" in module.__dict__
        ):
            return False
    return True


def _hook_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``HookPoint.__call__``: its input itself while no hook is attached (TL's ``forward`` is
    the identity; ``nn.Module.__call__`` around it costs ~2 us, ~3000 times per caption).
    The most frequent call of a decoding step: ``_unhooked`` and ``_plain_dispatch`` are
    written out here rather than called (keep the three in step)."""
    if (
        self.fused
        and not kwargs
        and args
        and not args[1:]  # one argument (a slice: no function call)
        and not (
            self._forward_hooks
            or self._forward_pre_hooks
            or self._backward_hooks
            or self._backward_pre_hooks
            or self._compiled_call_impl is not None
            or "forward" in self.__dict__
        )
        and _GLOBAL_HOOKS_KNOWN
        and not (_G_FWD or _G_PRE or _G_BWD or _G_BWD_PRE)
        and not _tracing()
    ):
        return args[0]
    return torch.nn.Module.__call__(self, *args, **kwargs)


def _bypassable(linear: Any) -> torch.nn.Module | None:
    """The wrapped module of a switched ``LinearBridge`` that neither has a hook itself nor on
    its ``hook_in``/``hook_out`` (nor an Accelerate hook): what may run in its place."""
    modules = linear._modules
    inner = modules.get("_original_component")
    if (
        inner is None
        or "_hf_hook" in inner.__dict__
        or not getattr(linear, "fused", False)
        or not _unhooked(linear, modules["hook_in"], modules["hook_out"])
    ):
        return None
    return inner


def _record_call(*linears: Any) -> None:
    """What ``LinearBridge.forward`` records for its container, for each of ``linears`` whose
    call a fused path stood in for (TL's projection-hook protocol): its ``hook_in`` suppression
    consumed, its ``hook_out`` fired."""
    for linear in linears:
        state = linear.__dict__  # not TL's ``__setattr__``: plain attributes
        state["_suppress_next_hook_in"] = False
        state["_fired_hook_out"] = True


def _plain_linear(linear: Any) -> torch.nn.Linear | None:
    """The ``nn.Linear`` a switched ``LinearBridge`` wraps when a fused path may read its
    weights instead of calling it: neither the bridge, its hook points nor the Linear has a
    hook (``_bypassable``, and the Linear itself unhooked); ``None`` otherwise."""
    inner = _bypassable(linear)
    if inner is None or inner.__class__ is not torch.nn.Linear or not _unhooked(inner):
        return None
    return inner


def _linear_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``LinearBridge.__call__``: while neither it nor its ``hook_in``/``hook_out`` has a hook,
    its wrapped module's call with TL's bookkeeping (``LinearBridge.forward`` without the three
    module calls around it)."""
    inner = _bypassable(self) if self.fused and _plain_dispatch() else None
    if inner is None:
        return _call(self, *args, **kwargs)
    cls = inner.__class__
    direct = len(args) == 1 and not kwargs and _unhooked(inner)
    if direct and cls is torch.nn.Linear:
        params = inner._parameters  # ``Linear.forward`` itself, its call not repeated
        out = F.linear(args[0], params["weight"], params["bias"])
    elif direct and cls is _CONV1D[0]:
        x, params = args[0], inner._parameters  # ``Conv1D.forward`` (GPT-2), the same way
        flat = x.view(-1, x.shape[-1]) if x.is_contiguous() else x.reshape(-1, x.shape[-1])
        out = torch.addmm(params["bias"], flat, params["weight"])
        out = out.view(*x.shape[:-1], out.shape[-1])
    else:
        out = inner(*args, **kwargs)
    _record_call(self)
    return out


class _PlainCall:
    """The methods of a ``HookPoint`` or ``LinearBridge``: only a cheaper ``__call__`` (given
    with the class in ``_spec``)."""

    _tl: Any
    _counted = False
    fused: bool = True


# forward function -> (its parameter names, whether it takes **kwargs)
_SIGNATURES: dict[Any, tuple[list[str], bool]] = {}


class _FusedBlock:
    """The methods of a ``BlockBridge``: its keyword filter with the wrapped module's signature
    read once per ``forward`` function instead of by ``inspect.signature`` on every call, and
    its ``forward`` without TL's bookkeeping while nothing could observe the difference."""

    _tl: Any
    _counted = False
    fused: bool = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``BlockBridge.forward`` as the wrapped layer's call alone (TL's keyword filter and
        output convention kept) while ``hook_in``, ``hook_out`` and ``hook_mlp_in`` have no
        hook, no global module hook is registered, no ``start_at_layer``/``stop_at_layer`` run
        is under way and the config asks for no pre-norm fork (``use_split_qkv_input``,
        ``use_attn_in``, ``use_hook_mlp_in``): TL's forward would then call two identity hook
        points, wire and clear capture hooks that nothing reads, and check layer indices that
        are unset. The layer's bridged submodules still run with their own hooks."""
        modules, state = self._modules, self.__dict__
        layer = modules.get("_original_component")
        config = state.get("config")
        if (
            not self.fused
            or layer is None
            or state.get("_stop_at_layer_idx") is not None
            or state.get("_start_at_layer_idx") is not None
            or getattr(config, "use_split_qkv_input", False)
            or getattr(config, "use_attn_in", False)
            or getattr(config, "use_hook_mlp_in", False)
            or state.get("_use_hook_mlp_in")  # TL's fallback when the config has no such flag
            or not _plain_dispatch()
            or not _unhooked(modules["hook_in"], modules["hook_out"], modules["hook_mlp_in"])
        ):
            return self._tl.forward(self, *args, **kwargs)
        known = _SIGNATURES.get(layer.__class__.forward)
        if known is not None and known[1] and "forward" not in layer.__dict__:
            filtered = kwargs  # the layer takes **kwargs: ``_filter_kwargs_for_forward`` keeps all
        else:
            filtered = self._filter_kwargs_for_forward(kwargs, len(args))
        if _unhooked(layer):
            output = layer.forward(*args, **filtered)  # what its ``__call__`` would call
        else:
            output = layer(*args, **filtered)
        if state.get("_capture_hooks_wired"):  # an earlier TL forward wired ln1's capture
            attn = (state.get("submodules") or {}).get("attn")
            if attn is not None and "_captured_pre_ln_residual" in attn.__dict__:
                attn.__dict__["_captured_pre_ln_residual"] = None
        if (
            len(filtered) < 2  # TL's check below never holds for the model's (many keywords)
            and isinstance(output, Tensor)
            and self._is_standalone_hidden_state_call(args, filtered)
        ):
            return (output,)  # TL's convention for a direct block(hidden_states) call
        return output

    def _filter_kwargs_for_forward(
        self, kwargs: dict[str, Any], num_positional_args: int = 0
    ) -> dict[str, Any]:
        module = self.original_component  # type: ignore[attr-defined]
        forward = getattr(type(module), "forward", None)
        if not self.fused or module is None or forward is None or "forward" in vars(module):
            return self._tl._filter_kwargs_for_forward(self, kwargs, num_positional_args)
        if forward not in _SIGNATURES:
            try:
                params = inspect.signature(module.forward).parameters
            except (ValueError, TypeError):
                return self._tl._filter_kwargs_for_forward(self, kwargs, num_positional_args)
            _SIGNATURES[forward] = (
                list(params),
                any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()),
            )
        names, takes_any = _SIGNATURES[forward]
        if takes_any:
            return kwargs
        valid = set(names).difference(names[:num_positional_args])
        return {k: v for k, v in kwargs.items() if k in valid}


class _FusedMLP:
    """The methods of an ``MLPBridge`` / ``GatedMLPBridge``: ``forward`` as the wrapped MLP's
    call alone while neither the bridge's ``hook_in``/``hook_out`` nor its projections'
    ``hook_in``/``hook_out`` have a hook and no global module hook is registered (TL's forward
    would call identity hook points around it and set two flags its projections set again);
    the projections inside still run with their own hooks."""

    _tl: Any
    _counted = False
    fused: bool = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        modules, state = self._modules, self.__dict__
        inner = modules.get("_original_component")
        points = [modules["hook_in"], modules["hook_out"]]
        for name in ("in", "input", "out"):
            projection = modules.get(name)
            if projection is not None:
                own = projection._modules
                points += [own[p] for p in ("hook_in", "hook_out") if p in own]
        if (
            not self.fused
            or inner is None
            or not args
            or state.get("name") is None  # containerless: TL refuses the call
            or state.get("_use_processed_weights")  # TL's folded-weight path
            or not _plain_dispatch()
            or not _unhooked(*points)
        ):
            return self._tl.forward(self, *args, **kwargs)
        if _unhooked(inner):
            return inner.forward(*args, **kwargs)  # what its ``__call__`` would call
        return inner(*args, **kwargs)


class _FusedEmbedding:
    """The methods of an ``EmbeddingBridge`` / ``PosEmbedBridge`` over a plain
    ``nn.Embedding``: ``forward`` as the Embedding's own while neither its hook points nor the
    Embedding have a hook (TL's ``EmbeddingBridge.forward`` runs ``inspect.signature`` on
    every call, ~14 us, to learn that an ``nn.Embedding`` takes no ``position_ids``)."""

    _tl: Any
    _counted = False
    fused: bool = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        modules, state = self._modules, self.__dict__
        inner = modules.get("_original_component")
        if (
            not self.fused
            or len(args) != 1
            or (kwargs and (len(kwargs) != 1 or kwargs.get("position_ids", 0) is not None))
            or inner is None
            or inner.__class__ is not torch.nn.Embedding
            or "_hf_hook" in inner.__dict__
            or state.get("_output_contribution_scale", 1.0) != 1.0
            or not _plain_dispatch()
            or not _unhooked(modules["hook_in"], modules["hook_out"], inner)
        ):
            return self._tl.forward(self, *args, **kwargs)
        output = inner.forward(args[0])
        batch_size = state.get("_current_batch_size")  # PosEmbedBridge: read and cleared
        if batch_size is not None:
            state["_current_batch_size"] = None
            if batch_size > 1 and output.ndim >= 1 and output.shape[0] == 1:
                output = output.expand(batch_size, *[-1] * (output.ndim - 1))
        return output


class _FusedNorm:
    """The methods of a fused norm bridge: the wrapped Hugging Face module's own forward."""

    _tl: Any
    _counted = True
    fused: bool = True

    def forward(self, hidden_states: Tensor, **kwargs: Any) -> Tensor:
        modules = self._modules  # submodules read from it: no TL ``__getattr__`` per call
        hf_norm = modules.get("_original_component")
        if (
            not self.fused
            or kwargs
            or hf_norm is None
            or hf_norm.__class__ is torch.nn.Identity
            or getattr(self.config, "layer_norm_folding", False)  # type: ignore[attr-defined]
            or has_hooks(modules["hook_scale"], modules["hook_normalized"])
        ):
            return self._tl.forward(self, hidden_states, **kwargs)
        if _plain_dispatch() and _unhooked(modules["hook_in"], modules["hook_out"], hf_norm):
            out = hf_norm.forward(hidden_states)  # the three calls below, without their calls
            return out if out.dtype == hidden_states.dtype else out.to(hidden_states.dtype)
        x = modules["hook_in"](hidden_states)
        out = hf_norm(x)
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return modules["hook_out"](out)


class _FusedAttentionCommon:
    _tl: Any
    _counted = True
    fused: bool = True

    def _fusable(self, attention_mask: Any) -> bool:
        """No hook wants the scores or the pattern, and nothing TL's path would add is set."""
        cfg = self.config  # type: ignore[attr-defined]
        return (
            self.fused
            and self.compatibility_mode  # type: ignore[attr-defined]
            and not self.training  # type: ignore[attr-defined]
            and not self.is_cross_attention  # type: ignore[attr-defined]
            and not getattr(cfg, "use_attn_result", False)
            and not getattr(cfg, "use_split_qkv_input", False)
            and not getattr(cfg, "use_attn_in", False)
            and (attention_mask is None or isinstance(attention_mask, Tensor))
            and not has_hooks(self._modules["hook_attn_scores"], self._modules["hook_pattern"])
        )

    def _cache_plan(
        self, hidden: Tensor, kwargs: dict[str, Any]
    ) -> tuple[Any, Any, _MaskPlan] | None:
        """For ``_whole``: the KV cache (any of the names it is passed by), the layer index and
        the mask plan, decided before anything is computed or cached; ``None`` where TL's path
        must run (a mask that is not a tensor or that SDPA would not reproduce, a cache without
        a layer index: TL warns and skips it)."""
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.__class__ is not Tensor:
            return None
        cache = kwargs.get("cache")
        if cache is None:
            cache = kwargs.get("past_key_values")
            if cache is None:
                cache = kwargs.get("layer_past")
        state = self.__dict__
        layer = state.get("_layer_idx")
        if cache is not None and layer is None:
            return None
        n_query = hidden.shape[1]
        n_cached = 0 if cache is None else cache.get_seq_length(layer)
        plan = _mask_plan(mask, n_query, n_query + n_cached, state["is_causal"], hidden.device)
        return None if plan is None else (cache, layer, plan)

    def _plan(
        self, attention_mask: Tensor | None, queries: Tensor, kwargs: dict
    ) -> _MaskPlan | None:
        """The mask plan, decided before anything is computed or written into the KV cache."""
        cache = next(
            (
                kwargs[k]
                for k in ("past_key_values", "layer_past", "cache")
                if kwargs.get(k) is not None
            ),
            None,
        )
        layer = self._layer_idx  # type: ignore[attr-defined]
        n_cached = 0 if cache is None or layer is None else int(cache.get_seq_length(layer))
        n_query = queries.shape[1]  # [batch, pos, ...]
        causal = self.is_causal  # type: ignore[attr-defined]
        return _mask_plan(attention_mask, n_query, n_query + n_cached, causal, queries.device)


def _views_of_joint(parts: list[Tensor | None], joint: Tensor | None) -> bool:
    """Whether ``parts`` are, in order, the consecutive thirds of ``joint`` (a Conv1D weight
    ``[in, 3n]``, the parts ``[n, in]`` transposed views; or a bias ``[3n]``), as TL's
    ``split_qkv_matrix`` made them: then ``joint`` holds every in-place change to the parts."""
    if joint is None or any(p is None for p in parts):
        return joint is None and all(p is None for p in parts)
    dim = joint.dim() - 1  # the output dimension
    n = joint.shape[dim] // 3
    shape = (n, joint.shape[0]) if dim else (n,)
    strides = (joint.stride(1), joint.stride(0)) if dim else (joint.stride(0),)
    step = n * joint.stride(dim) * joint.element_size()
    return all(
        p.dtype == joint.dtype  # type: ignore[union-attr]
        and tuple(p.shape) == shape  # type: ignore[union-attr]
        and p.stride() == strides  # type: ignore[union-attr]
        and p.data_ptr() == joint.data_ptr() + i * step  # type: ignore[union-attr]
        for i, p in enumerate(parts)
    )


_ATTENTION_POINTS = (
    "hook_in",
    "hook_out",
    "hook_hidden_states",
    "hook_attn_scores",
    "hook_pattern",
)


_ROTARY_POINTS = (
    "hook_in",
    "hook_out",
    "hook_hidden_states",
    "hook_attn_scores",
    "hook_pattern",
    "hook_rot_q",
    "hook_rot_k",
    "hook_cos",
    "hook_sin",
)


def _flag(config: Any, name: str) -> bool:
    """A TL config switch (``False`` where this config class has no such field)."""
    return bool(getattr(config, name, False))


def _conv1d() -> type:
    if _CONV1D[0] is None:
        from transformers.pytorch_utils import Conv1D

        _CONV1D[0] = Conv1D
    return _CONV1D[0]


class _FusedJointQKVAttention(_FusedAttentionCommon):
    """The methods of a fused ``JointQKVAttentionBridge`` (GPT-2): q, k and v in one matrix
    product with ``c_attn``'s weight (TL's q/k/v projections are views of it) while none of
    their hooks has a hook, then one SDPA call in place of TL's eager attention."""

    def _joint_qkv(self) -> tuple[Tensor, Tensor | None, list[Any]] | None:
        """``c_attn``'s weight and bias, and the q/k/v bridges, when one product can stand for
        the three projections; ``None`` when TL's own projections must run.

        Runs in every layer of every decoding step: modules and parameters are read from their
        dicts (no TL ``__getattr__``)."""
        modules = self._modules
        hf_attn = modules.get("_original_component")
        if hf_attn is None or "q" not in modules or "k" not in modules or "v" not in modules:
            return None
        projections = [modules["q"], modules["k"], modules["v"]]
        joint = hf_attn._modules.get("c_attn")
        if joint is not None and "_original_component" in joint._modules:  # TL's bridge of it
            joint = joint._modules["_original_component"]
        weight = None if joint is None else joint._parameters.get("weight")
        cfg = self.config  # type: ignore[attr-defined]
        if (
            weight is None
            or "_hf_hook" in joint.__dict__  # type: ignore[union-attr]
            or weight.ndim != 2
            or (
                cfg is not None and (_flag(cfg, "use_split_qkv_input") or _flag(cfg, "use_attn_in"))
            )
        ):
            return None
        tensors = [weight, joint._parameters.get("bias")]  # type: ignore[union-attr]
        for proj in projections:
            # q/k/v bridges whose products one c_attn product may stand for
            inner = _plain_linear(proj)
            if inner is None:
                return None
            params = inner._parameters
            tensors += (params.get("weight"), params.get("bias"))
        if torch.is_grad_enabled():
            for t in tensors:
                if t is not None and t.requires_grad:
                    return None  # gradients belong to TL's q/k/v parameters: their products
        # whether q/k/v are views of c_attn changes only with a tensor or its storage: the
        # verdict is kept for the same tensors (held, so their ids stay theirs) at the same
        # addresses (``.data = ...`` moves one)
        ptrs = [0 if t is None else t.data_ptr() for t in tensors]
        known = self.__dict__.get("_tlmm_joint_views")
        same = known is not None and known[1] == ptrs
        if same:
            for held, t in zip(known[0], tensors):
                if held is not t:
                    same = False
                    break
        if not same:
            views = _views_of_joint(tensors[2::2], weight) and _views_of_joint(
                tensors[3::2], tensors[1]
            )
            known = (tensors, ptrs, views)
            object.__setattr__(self, "_tlmm_joint_views", known)
        if not known[2]:
            return None
        return weight, tensors[1], projections

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        joint = self._joint_qkv() if self.fused and _plain_dispatch() else None
        if joint is None:
            return self._tl.forward(self, *args, **kwargs)
        whole = self._whole(joint, args, kwargs)
        if whole is not None:
            return whole
        weight, bias, projections = joint
        x = self._apply_attention_input_hook(*args, **kwargs)  # type: ignore[attr-defined]
        flat = x.reshape(-1, x.shape[-1])
        qkv = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
        q, k, v = qkv.view(*x.shape[:-1], -1).split(weight.shape[1] // 3, dim=-1)
        _record_call(*projections)
        output = self._reconstruct_attention(q, k, v, **kwargs)
        return self._process_output(output)  # type: ignore[attr-defined]

    def _whole(self, joint: tuple, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        """The whole attention in one function (c_attn's product, the KV cache, one SDPA call,
        the output projection) while no hook point of the attention or its output projection
        has a hook: what TL's forward computes, without its per-step plumbing (input and output
        hooks, q/k/v reshapes, the cache helper, output processing). ``None``, before anything
        is computed or cached, where the layer needs more (see ``_fusable``)."""
        modules, state = self._modules, self.__dict__
        hidden = args[0] if len(args) == 1 and "hidden_states" not in kwargs else None
        o = modules.get("o")
        if (
            hidden is None
            or hidden.__class__ is not Tensor
            or hidden.ndim != 3
            or "query_input" in kwargs
            or "position_bias" in kwargs
            or o is None
            or state.get("_reorder_and_upcast_attn")
            or not state.get("compatibility_mode")
            or self.training
            or state.get("is_cross_attention")
        ):
            return None
        o_inner = _bypassable(o)
        cfg = self.config  # type: ignore[attr-defined]
        if (
            o_inner is None
            or o_inner.__class__ is not _conv1d()
            or (cfg is not None and _flag(cfg, "use_attn_result"))
        ):
            return None
        for name in _ATTENTION_POINTS:
            if name not in modules:
                return None
        if not _unhooked(
            modules["hook_in"],
            modules["hook_out"],
            modules["hook_hidden_states"],
            modules["hook_attn_scores"],
            modules["hook_pattern"],
            o_inner,
        ):
            return None
        cached = self._cache_plan(hidden, kwargs)
        if cached is None:
            return None
        cache, layer, plan = cached
        batch, n_query, width = hidden.shape
        weight, bias, projections = joint
        n_heads = cfg.n_heads  # type: ignore[union-attr]
        d_head = weight.shape[1] // (3 * n_heads)
        flat = hidden.view(-1, width) if hidden.is_contiguous() else hidden.reshape(-1, width)
        qkv = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
        # [batch, pos, 3, head, d_head] -> q, k, v [batch, head, pos, d_head] (HF's strides)
        q, k, v = qkv.view(batch, n_query, 3, n_heads, d_head).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.update(k, v, layer + kwargs.get("cycle_offset", 0))
        scale = d_head**-0.5
        if layer is not None and _flag(cfg, "scale_attn_by_inverse_layer_idx"):
            scale /= float(layer + 1)
        z = F.scaled_dot_product_attention(
            q, k, v, attn_mask=plan.attn_mask, is_causal=plan.is_causal, scale=scale
        )
        if plan.rows is not None:
            z = z * plan.rows.to(z.dtype)
        z = z.transpose(1, 2).reshape(batch * n_query, n_heads * d_head)
        o_params = o_inner._parameters
        o_bias = o_params["bias"]
        out = (
            z @ o_params["weight"] if o_bias is None else torch.addmm(o_bias, z, o_params["weight"])
        )
        _record_call(*projections, o)
        return out.view(batch, n_query, -1), None

    def _reconstruct_attention(self, q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> tuple:
        mask = kwargs.get("attention_mask")
        plan = (
            self._plan(mask, q, kwargs)
            if self._fusable(mask) and not getattr(self, "_reorder_and_upcast_attn", False)
            else None
        )
        if plan is None:
            return self._tl._reconstruct_attention(self, q, k, v, **kwargs)
        cfg = self.config  # type: ignore[attr-defined]
        n_heads = cfg.n_heads
        n_kv_heads = getattr(cfg, "n_key_value_heads", None) or n_heads
        q, k, v, batch, n_query, d_head = self._reshape_qkv_to_heads(q, k, v, n_heads, n_kv_heads)  # type: ignore[attr-defined]
        k, v = self._update_kv_cache(k, v, **kwargs)  # type: ignore[attr-defined]
        scale = d_head**-0.5
        layer = self._layer_idx  # type: ignore[attr-defined]
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) and layer is not None:
            scale /= float(layer + 1)
        z = _attend(q, k, v, plan, scale)
        z = self._reshape_attn_output(z, batch, n_query, n_heads, d_head)  # type: ignore[attr-defined]
        return (self._apply_output_projection(z), None)  # type: ignore[attr-defined]


class _FusedRotaryAttention(_FusedAttentionCommon):
    """The methods of a fused ``PositionEmbeddingsAttentionBridge`` (Llama family): TL's
    forward for the plain case (q/k/v projections, Llama's rotary embedding, KV cache, output
    projection, each with its hook points) around one SDPA call."""

    def _plain(self, hf_attn: Any, position_embeddings: Any, attention_mask: Any) -> bool:
        return (
            self._fusable(attention_mask)
            and isinstance(position_embeddings, tuple)
            and len(position_embeddings) == 2
            and position_embeddings[0].shape[-1] == hf_attn.head_dim  # rotary over whole heads
            and self._plain_layer(hf_attn)
        )

    def _plain_layer(self, hf_attn: Any) -> bool:
        """The layer computes Llama's attention (nothing TL's path would add); kept per
        wrapped module (these are the architecture's settings, read once)."""
        known = self.__dict__.get("_tlmm_plain_layer")
        if known is not None and known[0] is hf_attn:
            return known[1]
        cfg = self.config  # type: ignore[attr-defined]
        rope = getattr(getattr(hf_attn, "config", None), "rope_parameters", None)
        plain = (
            not getattr(cfg, "gated_q_proj", False)
            and not getattr(cfg, "rotary_interleaved_cos_sin", False)
            and not getattr(cfg, "rotary_adjacent_pairs", False)
            and not getattr(cfg, "qk_norm_after_rope", False)
            and "q_norm" not in self.submodules  # type: ignore[attr-defined]
            and "k_norm" not in self.submodules  # type: ignore[attr-defined]
            and self._modules.get("gate") is None  # type: ignore[attr-defined]
            and getattr(hf_attn, "key_multiplier", None) is None
            and getattr(getattr(hf_attn, "config", None), "clip_qkv", None) is None
            and getattr(hf_attn, "attn_logit_softcapping", None) is None
            and getattr(hf_attn, "sinks", None) is None
            and not (isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None)
        )
        object.__setattr__(self, "_tlmm_plain_layer", (hf_attn, plain))
        return plain

    def _whole(self, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        """The whole attention in one function (q/k/v products, the rotary embedding, the KV
        cache, one SDPA call, the output projection) while no hook point of the attention or
        its projections has a hook: what ``forward``'s fused path computes, without TL's
        per-call plumbing. ``None``, before anything is computed or cached, otherwise."""
        modules, state = self._modules, self.__dict__
        if args:
            hidden = args[0] if len(args) == 1 and "hidden_states" not in kwargs else None
        else:
            hidden = kwargs.get("hidden_states")
        hf_attn = modules.get("_original_component")
        if (
            hidden is None
            or hidden.__class__ is not Tensor
            or hidden.ndim != 3
            or hf_attn is None
            or "_hf_hook" in hf_attn.__dict__
            or not state.get("compatibility_mode")
            or self.training
            or state.get("is_cross_attention")
        ):
            return None
        position_embeddings = kwargs.get("position_embeddings")
        head_dim = hf_attn.head_dim
        if (
            position_embeddings.__class__ is not tuple
            or len(position_embeddings) != 2
            or position_embeddings[0].shape[-1] != head_dim  # rotary over whole heads
            or not self._plain_layer(hf_attn)
        ):
            return None
        cfg = self.config  # type: ignore[attr-defined]
        if cfg is not None and (
            _flag(cfg, "use_attn_result")
            or _flag(cfg, "use_split_qkv_input")
            or _flag(cfg, "use_attn_in")
        ):
            return None
        for name in _ROTARY_POINTS:
            if name not in modules:
                return None
        linears, inners = [modules["q"], modules["k"], modules["v"], modules["o"]], []
        for linear in linears:
            inner = _plain_linear(linear)
            if inner is None:
                return None
            inners.append(inner._parameters)
        if not _unhooked(*[modules[name] for name in _ROTARY_POINTS]):
            return None
        cached = self._cache_plan(hidden, kwargs)
        if cached is None:
            return None
        cache, layer, plan = cached
        batch, n_query, _ = hidden.shape
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        qp, kp, vp, op = inners
        q = F.linear(hidden, qp["weight"], qp["bias"]).view(batch, n_query, -1, head_dim)
        k = F.linear(hidden, kp["weight"], kp["bias"]).view(batch, n_query, -1, head_dim)
        v = F.linear(hidden, vp["weight"], vp["bias"]).view(batch, n_query, -1, head_dim)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, layer + kwargs.get("cycle_offset", 0))
        z = _attend(q, k, v, plan, hf_attn.scaling)
        z = z.transpose(1, 2).reshape(batch, n_query, -1)
        o_weight = op["weight"]
        if o_weight.dtype.is_floating_point and z.dtype != o_weight.dtype:
            z = z.to(o_weight.dtype)
        _record_call(*linears)
        return F.linear(z, o_weight, op["bias"]), None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.fused and _plain_dispatch():
            whole = self._whole(args, kwargs)
            if whole is not None:
                return whole
        hf_attn = self.original_component  # type: ignore[attr-defined]
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        position_embeddings = kwargs.get("position_embeddings")
        mask = kwargs.get("attention_mask")
        plan = None
        if (
            hf_attn is not None
            and isinstance(hidden_states, Tensor)
            and len(args) + ("hidden_states" in kwargs) == 1
            and self._plain(hf_attn, position_embeddings, mask)
        ):
            plan = self._plan(mask, hidden_states, kwargs)
        if plan is None:
            return self._tl.forward(self, *args, **kwargs)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        hidden_states = self.hook_in(hidden_states)  # type: ignore[attr-defined]
        input_shape = hidden_states.shape[:-1]
        head_dim = hf_attn.head_dim
        q, k, v = (
            proj(hidden_states).view(*input_shape, -1, head_dim).transpose(1, 2)
            for proj in (self.q, self.k, self.v)  # type: ignore[attr-defined]
        )
        cos, sin = self._apply_position_embedding_hooks(position_embeddings)  # type: ignore[attr-defined]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if hasattr(self, "hook_rot_q"):
            q = self.hook_rot_q(q)
        if hasattr(self, "hook_rot_k"):
            k = self.hook_rot_k(k)
        k, v = self._update_kv_cache(k, v, **kwargs)  # type: ignore[attr-defined]
        z = _attend(q, k, v, plan, getattr(hf_attn, "scaling", head_dim**-0.5))
        z = z.transpose(1, 2).reshape(*input_shape, -1)
        o_weight = getattr(getattr(self.o, "original_component", None), "weight", None)  # type: ignore[attr-defined]
        if (
            isinstance(o_weight, Tensor)
            and o_weight.dtype.is_floating_point
            and z.dtype != o_weight.dtype
        ):
            z = z.to(o_weight.dtype)
        return self.hook_out(self.o(z)), None  # type: ignore[attr-defined]


def _spec() -> list[tuple[type, type, dict[str, Any]]]:
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components.block import BlockBridge
    from transformer_lens.model_bridge.generalized_components.embedding import EmbeddingBridge
    from transformer_lens.model_bridge.generalized_components.gated_mlp import GatedMLPBridge
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import (
        JointQKVAttentionBridge,
    )
    from transformer_lens.model_bridge.generalized_components.linear import LinearBridge
    from transformer_lens.model_bridge.generalized_components.mlp import MLPBridge
    from transformer_lens.model_bridge.generalized_components.normalization import (
        NormalizationBridge,
    )
    from transformer_lens.model_bridge.generalized_components.pos_embed import PosEmbedBridge
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )
    from transformer_lens.model_bridge.generalized_components.rms_normalization import (
        RMSNormalizationBridge,
    )

    _conv1d()  # the class ``_linear_call`` compares with
    call = {"__call__": _call}
    return [
        (HookPoint, _PlainCall, {"__call__": _hook_call}),
        (NormalizationBridge, _FusedNorm, call),
        (RMSNormalizationBridge, _FusedNorm, call),
        (JointQKVAttentionBridge, _FusedJointQKVAttention, call),
        (PositionEmbeddingsAttentionBridge, _FusedRotaryAttention, call),
        (LinearBridge, _PlainCall, {"__call__": _linear_call}),
        (BlockBridge, _FusedBlock, call),
        (MLPBridge, _FusedMLP, call),
        (GatedMLPBridge, _FusedMLP, call),
        (EmbeddingBridge, _FusedEmbedding, call),
        (PosEmbedBridge, _FusedEmbedding, call),
    ]


_FUSED = FusedClasses(__name__, _spec)
__getattr__ = _FUSED.module_getattr


def set_fused_bridge(model: torch.nn.Module, enabled: bool = True) -> int:
    """Turn the fused norms and attention of a ``TransformerBridge`` on or off.

    Use :func:`~transformer_lens_mm.fast.fusion.set_fused` (one switch for every model); this
    is its bridge part. Only on the TransformerLens versions in
    ``versions.VERIFIED["fused_bridge"]``. A module computes TL's own way anyway whenever one
    of the hook points only that way can serve has a hook (see the module docstring). Turn it
    off to reproduce a plain ``TransformerBridge``'s numbers bit for bit.

    Args:
        model: A ``TransformerBridge`` (or ``MultimodalTransformerBridge``).
        enabled: Fused (``True``) or TransformerLens's own computation (``False``).

    Returns:
        The number of norm and attention modules switched (linear layers and blocks also
        switch, to a cheaper ``__call__`` and keyword filter); 0 on an unverified TL version
        (nothing is switched there, whatever ``enabled`` says).

    Example:
        >>> set_fused_bridge(model, False)  # doctest: +SKIP
        25
    """
    check_model(model)
    if not versions.verified("fused_bridge"):
        return 0
    switched = _FUSED.switch(model, enabled)
    _boolean_masks(model, enabled)
    return sum(module._counted for module in switched)


#: Hugging Face model types whose masks the fused bridge has Hugging Face build for SDPA.
BOOLEAN_MASK_MODELS = ("gpt2", "llama")


def _boolean_masks(model: torch.nn.Module, enabled: bool) -> None:
    """While fused, the wrapped Hugging Face language model builds SDPA's masks (boolean, or
    none at all where nothing is padded) instead of the eager additive float masks TL's loading
    asks for. TL's bridge rebuilds every attention itself, so the mask is all HF computes with
    that setting; building and then reading the float mask was ~5% of a small model's decoding
    step. Only where every attention is one of the fused classes (TL's own path there reads a
    boolean mask the same way: ``True`` = may attend) and for the model types tested
    (:data:`BOOLEAN_MASK_MODELS`); switched back to eager with the fused classes."""
    hf = model.__dict__.get("original_model")
    config = getattr(hf, "config", None)
    state = model.__dict__
    if config is None:
        return
    if not enabled:
        if state.pop("_tlmm_eager_masks", False):
            config._attn_implementation = "eager"
        return
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    fused = tuple(c for c in _FUSED.get().values() if issubclass(c, AttentionBridge))
    attention = [m for m in model.modules() if isinstance(m, AttentionBridge)]
    if (
        getattr(config, "model_type", None) not in BOOLEAN_MASK_MODELS
        or getattr(config, "sub_configs", None)  # a composite (vision + text) model
        or getattr(config, "_attn_implementation", None) != "eager"
        or not attention
        or not all(isinstance(m, fused) and m.fused for m in attention)
    ):
        return
    config._attn_implementation = "sdpa"
    state["_tlmm_eager_masks"] = True
