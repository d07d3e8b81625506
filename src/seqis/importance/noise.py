"""The output layer's gradient noise scale, and the step gain importance sampling predicts.

McCandlish et al. (2018, "An Empirical Model of Large-Batch Training"): with gradient G and
per-sample covariance Sigma, the simple noise scale B = tr(Sigma) / |G|^2 says how much
gradient noise limits progress; a step with batch b, at the learning rate best for b, makes
progress in proportion to 1 / (1 + B/b). Importance sampling that cuts the per-sample
variance by g acts like a batch g times larger, so, with the learning rate re-tuned for that
larger effective batch, it saves steps by at most

    G_tuned = (1 + B/b) / (1 + B/(b g)).

seqis keeps the learning rate the user tuned for uniform draws (unless ``--lr-scale``). In
the same quadratic model a step at learning rate x * lr_max makes progress
2x - x^2 (1 + B/b_eff); at uniform's best x = 1 / (1 + B/b) with b_eff = b g this is

    G_fixed = 2 - 1 / G_tuned    (< 2 whatever g and B),

the prediction seqis reports and switches on. At an unchanged learning rate a variance cut
can never halve the steps; that takes a larger learning rate as well.

Both quantities come from what a step already has, for the output layer only: the squared
norm of the batch's output-layer gradient before clipping, |G_b|^2, and the harvested
per-sequence output-layer gradient norms s_i with their sampling weights w_i = 1/(N p_i).
Taking expectations,

    E|G_b|^2 = |G|^2 + (m_p - |G|^2) / b,   m_p = E_p[w^2 s^2]   (the drawn estimator's)
    m_u = E_u[s^2] = E_p[w s^2]                                  (uniform's)

so |G|^2 = (b E|G_b|^2 - m_p) / (b - 1), tr(Sigma_uniform) = m_u - |G|^2 and the variance
cut of the distribution in use is g = (m_u - |G|^2) / (m_p - |G|^2). While importance
sampling is off the batch is drawn uniformly, m_p = m_u, and g is the cut it *would* deliver,
with m_u / gain (the switch's fresh-factor gain) in place of m_p in g alone: feeding that
into |G|^2 as well would bias B low. At a switch the batch moments restart. Each moment is
an exponential moving average, so the ratios are ratios of averages, not averages of noisy
ratios.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class NoiseScale:
    """Running estimate of B = tr(Sigma)/|G|^2 and of the variance cut g; O(1) an update.

    Example:
        >>> est = NoiseScale(batch_size=64)
        >>> est.observe_batch(grad_sq=0.8)              # |G_b|^2 of a step, before clipping
        >>> est.observe_samples(np.array([1.0, 2.0]), np.array([1.0, 1.0]))   # s_i, w_i
        >>> est.noise_scale, est.variance_cut, est.predicted_step_gain()     # doctest: +SKIP
    """

    batch_size: int
    decay: float = 0.98  # ~50 updates of memory
    batch_sq: float | None = None  # E|G_b|^2
    uniform_sq: float | None = None  # m_u = E_u[s^2]
    drawn_sq: float | None = None  # m_p = E_p[w^2 s^2] of the draws in use
    predicted_cut: float | None = None  # under uniform draws: the switch's predicted second-moment cut
    pool_ratio: int | None = None  # while presampling draws: its pool, in batches (its mean's noise)

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else self.decay * old + (1.0 - self.decay) * new

    def observe_batch(self, grad_sq: float) -> None:
        """The squared norm of one step's output-layer gradient, before clipping."""
        if np.isfinite(grad_sq):
            self.batch_sq = self._ema(self.batch_sq, float(grad_sq))

    def observe_samples(
        self, factors: np.ndarray, weights: np.ndarray, predicted_cut: float | None = None
    ) -> None:
        """Harvested per-sequence gradient norms with the weights they were drawn with.

        The drawn moment is always the estimator's that drew the batch (m_u itself under
        uniform draws), so |G|^2 and B stay unbiased in both regimes. Under uniform draws
        pass ``predicted_cut``, the second-moment cut the switch predicts importance sampling
        would deliver (``estimated_gain``): :attr:`variance_cut` and
        :meth:`predicted_step_gain` then say what switching on would buy.
        """
        s2 = np.asarray(factors, dtype=np.float64) ** 2
        w = np.asarray(weights, dtype=np.float64)
        good = np.isfinite(s2) & np.isfinite(w)
        if good.any():
            s2, w = s2[good], w[good]
            self.observe_moments(float(np.mean(w * s2)), float(np.mean(w * w * s2)), predicted_cut)

    def observe_moments(self, uniform_sq: float, drawn_sq: float, predicted_cut: float | None = None) -> None:
        """One harvest's E_u[s^2] (as mean(w s^2)) and E_p[w^2 s^2]; see :meth:`observe_samples`."""
        self.uniform_sq = self._ema(self.uniform_sq, float(uniform_sq))
        self.drawn_sq = self._ema(self.drawn_sq, float(drawn_sq))
        self.predicted_cut = predicted_cut

    def regime_changed(self) -> None:
        """Importance sampling switched on or off: E|G_b|^2 and m_p of the old draws no longer apply."""
        self.batch_sq = self.drawn_sq = self.predicted_cut = None

    @property
    def gradient_sq(self) -> float | None:
        """|G|^2, from E|G_b|^2 and the drawn estimator's per-sample second moment."""
        if self.batch_sq is None or self.drawn_sq is None:
            return None
        b = self.batch_size
        if b < 2:
            return None
        if self.pool_ratio is None:
            estimate = (b * self.batch_sq - self.drawn_sq) / (b - 1)
        else:  # a presampled batch also carries its pool mean's noise, tr(Sigma) / (r b)
            if self.uniform_sq is None:
                return None
            r = self.pool_ratio
            estimate = (b * self.batch_sq - self.drawn_sq - self.uniform_sq / r) / (b - 1 - 1 / r)
        return estimate if estimate > 0 else None  # all noise so far: |G|^2 not yet identifiable

    @property
    def noise_scale(self) -> float | None:
        """B = tr(Sigma_uniform) / |G|^2 (in sequences)."""
        g2 = self.gradient_sq
        if g2 is None or self.uniform_sq is None:
            return None
        return max(self.uniform_sq - g2, 0.0) / g2

    @property
    def variance_cut(self) -> float | None:
        """g = tr(Sigma_uniform) / tr(Sigma_drawn): delivered while on, predicted while off."""
        g2 = self.gradient_sq
        if g2 is None or self.uniform_sq is None:
            return None
        if self.predicted_cut is not None:  # uniform draws: the moment importance sampling would have
            drawn = self.uniform_sq / max(self.predicted_cut, 1e-12) - g2
        else:
            drawn = self.drawn_sq - g2
            if self.pool_ratio is not None:  # presampling: the pool mean's noise adds to the draws'
                drawn += max(self.uniform_sq - g2, 0.0) / self.pool_ratio
        return max(self.uniform_sq - g2, 0.0) / drawn if drawn > 0 else None

    def predicted_step_gain(self, lr_retuned: bool = False) -> float | None:
        """Fewer steps to the same loss, at most: at uniform's learning rate, or re-tuned for g."""
        b_noise, cut = self.noise_scale, self.variance_cut
        if b_noise is None or cut is None or cut <= 0:
            return None
        return step_gain_of_cut(b_noise, cut, self.batch_size, lr_retuned)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def step_gain_of_cut(noise_scale: float, cut: float, batch_size: int, lr_retuned: bool = False) -> float:
    """G = (1 + B/b) / (1 + B/(b g)) for a covariance cut ``cut``, or 2 - 1/G at uniform's lr."""
    b = batch_size
    tuned = (1.0 + noise_scale / b) / (1.0 + noise_scale / (b * cut))
    return tuned if lr_retuned else fixed_lr_step_gain(tuned)


def fixed_lr_step_gain(tuned_gain: float) -> float:
    """The step gain at uniform's best learning rate, from the gain with a re-tuned one: 2 - 1/G."""
    return 2.0 - 1.0 / tuned_gain


def scheduled_step_gain(
    lr_factors: Sequence[float], retuned_gains: Sequence[float], multipliers: Sequence[float] | None = None
) -> float:
    """The step gain of a whole run under its schedule, step by step (the same quadratic model).

    At a share s of uniform's tuned peak a step makes progress s (2 - s) for uniform and
    m s (2 - m s / G) under a cut worth G (m: the lr multiplier, 1 without ``--lr-scale``), so
    the run's gain is the ratio of the sums: 2 - 1/G at a constant rate (m = 1) or G (m = G),
    and near 1 where the cut comes only as the rate decays.

    Example:
        >>> round(scheduled_step_gain([1.0, 1.0], [2.0, 2.0]), 3)      # constant rate: 2 - 1/G
        1.5
        >>> round(scheduled_step_gain([1.0, 0.1], [1.0, 4.0]), 3)      # the cut only at a low rate
        1.006
    """
    m = np.ones(len(lr_factors)) if multipliers is None else np.asarray(multipliers, dtype=float)
    s, g = np.asarray(lr_factors, dtype=float), np.asarray(retuned_gains, dtype=float)
    uniform = float(np.sum(s * (2.0 - s)))
    return float(np.sum(m * s * (2.0 - m * s / g))) / uniform if uniform > 0 else 1.0


def predicted_step_gain(
    noise_scale: float | None, gain: float, batch_size: int, lr_retuned: bool = False
) -> float | None:
    """The step gain of a second-moment gain ``gain``: at uniform's learning rate, or re-tuned.

    The formula wants g as a cut of the covariance; with |G|^2 = E[s^2] / (1 + B), a cut of
    the second moment by ``gain`` is a covariance cut g = B gain / (1 + B - gain).
    """
    if noise_scale is None:
        return None
    return step_gain_of_cut(noise_scale, covariance_cut(noise_scale, gain), batch_size, lr_retuned)


def covariance_cut(noise_scale: float, gain: float) -> float:
    """The covariance cut of a second-moment ``gain``: B gain / (1 + B - gain) (inf: all noise gone)."""
    if gain >= 1.0 + noise_scale:
        return math.inf
    return noise_scale * gain / (1.0 + noise_scale - gain)


def second_moment_cut(noise_scale: float, cut: float) -> float:
    """The inverse of :func:`covariance_cut`: g (1 + B) / (B + g)."""
    if math.isinf(cut):
        return 1.0 + noise_scale
    return cut * (1.0 + noise_scale) / (noise_scale + cut)
