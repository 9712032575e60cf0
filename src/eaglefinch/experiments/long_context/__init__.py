"""Loss against token position on long documents (the paper's Figure 5), at small scale.

``data`` reads and tokenises the corpus into a compact vocabulary, ``models`` builds the four
language models (RWKV-4, Eagle, Finch, a RoPE Transformer), ``evaluate`` computes per-position
losses with the state carried across chunks and bins them, ``run`` is ``eaglefinch bench long-context``.
"""
