"""What gives a TransformerLens model sight.

* ``contract``: the model contract every tool uses (:class:`MultimodalModel`);
* ``mixin``, ``hooked``, ``bridge``: the injection of image tokens, and the two model classes
  (``HookedMultimodalTransformer`` on TL 3.x, ``MultimodalTransformerBridge`` on TL 3.9/4.x);
* ``loading``, ``lm_loading``: :func:`from_parts`, and language models in either TL API;
* ``images``, ``encoders``, ``projection``, ``feature_cache``: image in, soft-prompt tokens out;
* ``layout``: :class:`MultimodalInput`, where the image tokens are;
* ``generation``: captions with a KV cache under hooks;
* ``hook_names``, ``paper`` (the method's constants), ``errors``, ``atomic``.
"""
