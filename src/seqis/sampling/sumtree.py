"""A cumulative-sum tree: O(log N) draws and updates over N non-negative scores.

Internal nodes are always recomputed as the exact float64 sum of their two children
(never updated by deltas), so the tree cannot drift from a from-scratch rebuild.
All operations are vectorised over a batch of leaves with NumPy, so drawing b = 256
indices from N = 10^7 scores is ~log2(N) small array operations.
"""

from __future__ import annotations

import numpy as np

# A level this narrow costs less recomputed whole (one array call) than node by node (several):
# the calls' fixed cost, not the additions, is what a batch's update pays at these sizes.
WHOLE_LEVEL = 4096


class SumTree:
    """Scores ``values[i] >= 0``; :meth:`find` maps ``u in [0, total)`` to a leaf.

    Example:
        >>> tree = SumTree(np.array([1.0, 0.0, 3.0]))
        >>> tree.total
        4.0
        >>> tree.find(np.array([0.5, 1.5])).tolist()
        [0, 2]
    """

    def __init__(self, values: np.ndarray):
        self.size = len(values)
        self.capacity = 1 << max(0, int(self.size - 1).bit_length())
        self.depth = self.capacity.bit_length() - 1
        self.tree = np.zeros(2 * self.capacity, dtype=np.float64)
        self.rebuild(values)

    def rebuild(self, values: np.ndarray) -> None:
        """Set every leaf at once in O(N)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.size,):
            raise ValueError(f"expected {self.size} values, got shape {values.shape}")
        self.tree[:] = 0.0
        self.tree[self.capacity : self.capacity + self.size] = values
        lo = self.capacity
        while lo > 1:
            level = self.tree[lo : 2 * lo]
            self.tree[lo // 2 : lo] = level[0::2] + level[1::2]
            lo //= 2

    @property
    def total(self) -> float:
        return float(self.tree[1])

    @property
    def values(self) -> np.ndarray:
        return self.tree[self.capacity : self.capacity + self.size]

    def update(self, leaves: np.ndarray, values: np.ndarray) -> None:
        """Set ``values`` at ``leaves`` (duplicates: the last wins): O(b log N) node updates below
        the ``WHOLE_LEVEL`` widest level, O(min(N, 2 WHOLE_LEVEL)) additions above it."""
        nodes = np.asarray(leaves, dtype=np.int64) + self.capacity
        tree = self.tree
        tree[nodes] = values
        lo = self.capacity
        while lo > 1:
            lo //= 2  # the parents' level: nodes lo .. 2 lo - 1
            if lo <= WHOLE_LEVEL:  # every level above is narrower still: recompute them whole
                np.add(tree[2 * lo : 4 * lo : 2], tree[2 * lo + 1 : 4 * lo : 2], out=tree[lo : 2 * lo])
                continue
            # Recomputing a parent twice gives the same sum, so duplicate nodes need no dedup.
            nodes >>= 1
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]

    def find(self, u: np.ndarray) -> np.ndarray:
        """Leaves whose cumulative range holds each ``u``; never a zero-score leaf."""
        u = np.array(u, dtype=np.float64)
        node = np.ones(len(u), dtype=np.int64)
        tree = self.tree
        for _ in range(self.depth):
            node <<= 1
            left = tree[node]
            go_right = u >= left
            u -= left * go_right
            node += go_right
        leaf = node - self.capacity
        # Rounding can carry u past a subtree's sum onto an empty leaf (or past the last
        # leaf); such rare draws take the nearest leaf with a positive score instead.
        bad = (leaf >= self.size) | (self.tree[np.minimum(node, len(tree) - 1)] <= 0)
        if bad.any():
            positive = np.flatnonzero(self.values > 0)
            nearest = np.clip(np.searchsorted(positive, leaf[bad]), 0, len(positive) - 1)
            leaf[bad] = positive[nearest]
        return leaf
