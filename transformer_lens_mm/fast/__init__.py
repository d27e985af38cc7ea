"""The speed layer: everything that touches TransformerLens or torch internals, version-gated.

Same numbers as TransformerLens's own modules, fewer operations; one switch,
:func:`~transformer_lens_mm.fast.fusion.set_fused` (``from_parts(fused=...)``,
``with model.fused(False): ...``). Each part is used only on the TL versions it was verified on
(:data:`~transformer_lens_mm.fast.versions.VERIFIED`).

* ``versions``: which TL is installed, and the verified versions of each part;
* ``fusion``: :func:`set_fused` / :func:`is_fused`;
* ``classes``: switching built TL modules to fused subclasses (shared machinery);
* ``norms``, ``attention``: fused norms and SDPA attention of ``HookedTransformer`` (TL 3.9);
* ``bridge``: fused norms, attention and calls of ``TransformerBridge`` (TL 4.3);
* ``weights``: the weight layout TL 3.9's forward wants;
* ``patches``: the one reversible patch of TL code (the bridge's KV cache), listable;
* ``host``: device-to-host copies through pinned memory.
"""
