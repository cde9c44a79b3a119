"""Adapters from other engines to eagle_fast's protocols (optional dependencies).

* :mod:`eagle_fast.integrations.transformers` -- :class:`TransformersTarget`, a
  Hugging Face ``transformers`` causal LM (Llama, Qwen2/3, Mistral) as a
  :class:`eagle_fast.speculative.Target` (``pip install "eagle-fast[transformers]"``).

Nothing here is imported by ``import eagle_fast``; torch is imported only when
an adapter module is.
"""
