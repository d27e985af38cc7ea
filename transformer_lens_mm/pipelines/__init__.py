"""Runs that loop over data and write files.

* ``search``: the paper's per-batch search, written once (:func:`search_batch`), and
  :func:`find_multimodal_neurons`;
* ``steps``: the steps after it (ablation sweep, captions under ablation, soft prompts);
* ``experiments``: analyses over a run's tables;
* ``training``: training the projection;
* ``analyze``: ``tlmm analyze`` (config, run store, runner, report);
* ``demo``: ``tlmm demo``;
* ``cli``: the ``tlmm`` command.
"""
