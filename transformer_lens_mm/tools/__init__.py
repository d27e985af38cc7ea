"""Analyses that take one model and one batch and return a tensor or a table.

``attribution`` (``Z * dy_c/dZ`` for every unit), ``decoding`` (units and soft prompts as
words), ``lens`` (logit lens), ``ablation`` (hooks, the top-vs-random sweep, captions under
ablation), ``patching``, ``spatial`` (patch maps, IoU), ``targets`` (first noun), ``words``
(the interpretability filter), ``units`` (unit sets, random same-layer controls), ``stats``
(confidence intervals), ``metrics`` (BERTScore/CLIPScore), ``direct`` (the gradient-free
MM_Neurons-style score, ranking agreement), ``specificity`` (generic vs concept-specific units,
cross-concept ablation).
"""
