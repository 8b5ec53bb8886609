"""DDB (Deliberated Domain Bridging) pieces, one module per concern: the bridging masks
(``bridging``), the batched colour jitter and blur of the bridged image (``photometric``), the
mean teacher and its alpha schedule (``teacher``), the self-training and distillation losses
(``losses``) and the prototype-weighted ensemble of the two teachers (``ensemble``). The steps
that use them are ``segcore.train.ddb_st`` and ``segcore.train.ddb_ckd``."""
