"""seqis: importance-sampled training for recurrent networks.

The package is organised by concern; import what you need from its module:

- ``seqis.data``: sequence datasets with stable indices (``load_data``).
- ``seqis.models``: RNN/GRU/LSTM models that return per-sequence losses.
- ``seqis.importance``: importance factors (FIM and peers) and the factor store.
- ``seqis.sampling``: the importance batch sampler and its sum tree.
- ``seqis.training``: a readable training loop, checkpoints, metrics.
- ``seqis.experiments``: ``compare``, ``diagnose`` and the results reports.
"""

__version__ = "0.1.0"
