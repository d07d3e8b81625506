"""seqis: importance-sampled training for recurrent networks.

The public API is importable from here; each name loads its module on first use, so
``import seqis`` stays cheap. The package is organised in layers, lower first; a module imports
its own layer and lower ones only (docs/architecture.md):

- ``seqis.errors``, ``seqis.options``, ``seqis.plan``: one-line errors, the option fields every
  config is built from, and the ``Plan`` a run trains to.
- ``seqis.data``: sequence datasets with stable indices (``load_data``).
- ``seqis.models``: RNN/GRU/LSTM models that return per-sequence losses.
- ``seqis.sampling``: batch samplers (uniform epochs, importance draws from a sum tree, pools,
  pruned epochs) and DataLoader glue; draw mechanics only.
- ``seqis.importance``: factors (a registry), hooks on your output layer, the noise scale, the
  switch, the miner, and the sampling schemes (a registry) that tie a sampler to its mining.
- ``seqis.training``: the wiring of sampler and miner, a readable training loop,
  ``ImportanceLoader`` for your own loop, checkpoints, metrics.
- ``seqis.experiments``: races (``compare``), their analysis and reports, ``diagnose``.
- ``seqis.lightning``: the Lightning callback; ``seqis.cli``: the command line.

Example:
    >>> import seqis
    >>> sampler = seqis.ImportanceSampler(range(len(train_set)), batch_size=32)
    >>> loader = DataLoader(seqis.WeightedDataset(train_set), batch_sampler=sampler,
    ...                     collate_fn=seqis.weighted_collate(my_collate))
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "load_data": "seqis.data.registry",
    "DataOptions": "seqis.data.registry",
    "RecurrentModel": "seqis.models.rnn",
    "ModelConfig": "seqis.models.rnn",
    "Plan": "seqis.plan",
    "fim_factors": "seqis.importance.factors",
    "Factor": "seqis.importance.factors",
    "register_factor": "seqis.importance.factors",
    "Scheme": "seqis.importance.schemes",
    "register_scheme": "seqis.importance.schemes",
    "OutputLayerNorms": "seqis.importance.hooks",
    "Miner": "seqis.importance.mining",
    "MiningConfig": "seqis.importance.config",
    "Switch": "seqis.importance.switch",
    "estimated_gain": "seqis.importance.switch",
    "NoiseScale": "seqis.importance.noise",
    "UniformBatchSampler": "seqis.sampling.sampler",
    "ImportanceSampler": "seqis.sampling.sampler",
    "PruningSampler": "seqis.sampling.sampler",
    "RandomSubsetSampler": "seqis.sampling.sampler",
    "WeightedDataset": "seqis.sampling.loader",
    "weighted_collate": "seqis.sampling.loader",
    "RankSlice": "seqis.sampling.loader",
    "sampling_for": "seqis.training.wiring",
    "ImportanceLoader": "seqis.training.own_loop",
    "output_layer_scorer": "seqis.importance.scoring",
    "TrainConfig": "seqis.training.config",
    "train": "seqis.training.trainer",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'seqis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
