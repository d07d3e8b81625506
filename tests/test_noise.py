"""The noise-scale estimator recovers a known B and variance cut on a synthetic problem."""

import numpy as np
import pytest
import torch

from seqis.importance.noise import NoiseScale, fixed_lr_step_gain, scheduled_step_gain
from seqis.sampling.sampler import ImportanceSampler


def population(n=4000, d=40, seed=0):
    """Per-sample gradients g_i = G + e_i with uneven noise: a known B and a known IS cut."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d)
    mean /= np.linalg.norm(mean)  # |G| = 1
    scale = rng.lognormal(0.0, 0.8, n)[:, None]  # some samples far noisier than others
    grads = mean + 0.8 * scale * rng.normal(size=(n, d))
    g = grads.mean(0)
    trace = float(np.mean(np.sum((grads - g) ** 2, 1)))
    return grads, g, trace


def run(grads, sampler, est, steps):
    norms = np.linalg.norm(grads, axis=1)
    for _ in range(steps):
        idx, w = sampler.draw()
        idx, w = idx.numpy(), w.double().numpy()
        batch_grad = (w[:, None] * grads[idx]).mean(0)
        est.observe_batch(float(batch_grad @ batch_grad))
        est.observe_samples(norms[idx], w)


@pytest.mark.parametrize("active", [False, True])
def test_recovers_noise_scale_and_variance_cut(active):
    grads, g, trace = population()
    n, b = len(grads), 32
    norms = np.linalg.norm(grads, axis=1)
    sampler = ImportanceSampler(range(n), batch_size=b, smoothing=0.2, seed=1)
    sampler.record(torch.arange(n), torch.from_numpy(norms))
    sampler.active = active
    est = NoiseScale(batch_size=b, decay=0.999)
    run(grads, sampler, est, 6000)
    true_b = trace / float(g @ g)
    assert est.noise_scale == pytest.approx(true_b, rel=0.15)
    p = sampler.probabilities()
    drawn_trace = float(np.sum(norms**2 / (n * n * p))) - float(g @ g)  # E_p[w^2 s^2] - |G|^2
    true_cut = trace / drawn_trace if active else 1.0
    assert est.variance_cut == pytest.approx(true_cut, rel=0.15)
    expected = (1 + true_b / b) / (1 + true_b / (b * true_cut))
    assert est.predicted_step_gain(lr_retuned=True) == pytest.approx(expected, rel=0.1)
    assert est.predicted_step_gain() == pytest.approx(2 - 1 / expected, rel=0.1)
    if active:
        assert true_cut > 1.5 and est.predicted_step_gain() > 1.2  # a case where IS pays


def test_predicted_cut_while_off_and_state_round_trip():
    est = NoiseScale(batch_size=8)
    assert est.noise_scale is None and est.predicted_step_gain() is None
    est.observe_batch(2.0)
    est.observe_samples(np.array([3.0, 4.0]), np.ones(2), predicted_cut=2.0)
    # uniform draws: m_p = m_u = 12.5 in |G|^2 = (8 * 2 - 12.5) / 7; the predicted cut enters g
    # alone, as m_u / 2 = 6.25 (feeding it into |G|^2 too biased B low)
    g2 = (16 - 12.5) / 7
    assert est.noise_scale == pytest.approx((12.5 - g2) / g2) == pytest.approx(24.0)
    assert est.variance_cut == pytest.approx((12.5 - g2) / (6.25 - g2))
    copy = NoiseScale(batch_size=8)
    copy.load_state_dict(est.state_dict())
    assert copy.predicted_step_gain() == est.predicted_step_gain()


@pytest.mark.parametrize("noise_scale, cut", [(40.0, 2.0), (400.0, 3.0), (4.0, 1.5)])
def test_step_gains_match_sgd_progress_on_a_noisy_quadratic(noise_scale, cut):
    """Monte Carlo SGD steps on L = h/2 |theta|^2: the expected loss decrease of one step.

    At uniform's best learning rate for batch b, a batch g*b (what a variance cut g buys)
    gains 2 - 1/G; at the learning rate best for g*b it gains G = (1 + B/b)/(1 + B/(g b)).
    """
    rng = np.random.default_rng(0)
    d, h, b, draws = 8, 0.5, 16, 400_000
    theta = rng.normal(size=d)
    grad = h * theta
    sigma = np.sqrt(noise_scale * float(grad @ grad) / d)  # tr(Sigma) = B |G|^2

    def progress(lr: float, batch: float) -> float:
        noisy = grad + rng.normal(size=(draws, d)) * sigma / np.sqrt(batch)
        after = theta - lr * noisy
        return float(h / 2 * (theta @ theta) - np.mean(h / 2 * np.sum(after * after, axis=1)))

    def best_lr(batch: float) -> float:  # |G|^2 / (G'HG + tr(H Sigma)/batch)
        return float(grad @ grad) / (h * float(grad @ grad) + h * d * sigma**2 / batch)

    uniform = progress(best_lr(b), b)
    tuned = (1 + noise_scale / b) / (1 + noise_scale / (b * cut))
    assert progress(best_lr(b), b * cut) / uniform == pytest.approx(fixed_lr_step_gain(tuned), rel=0.03)
    assert progress(best_lr(b * cut), b * cut) / uniform == pytest.approx(tuned, rel=0.03)
    assert fixed_lr_step_gain(tuned) < 2.0


def test_scheduled_step_gain_weights_each_steps_cut_by_its_learning_rate():
    constant = [1.0] * 100
    assert scheduled_step_gain(constant, [2.0] * 100) == pytest.approx(fixed_lr_step_gain(2.0))
    assert scheduled_step_gain(constant, [2.0] * 100, [2.0] * 100) == pytest.approx(2.0)  # re-tuned: G
    assert scheduled_step_gain(constant, [1.0] * 100) == pytest.approx(1.0)
    cosine = 0.5 * (1 + np.cos(np.pi * np.arange(100) / 100))
    # the same cut all along buys less under a decay than at a constant rate, and more than nothing
    assert 1.0 < scheduled_step_gain(cosine, [2.0] * 100) < fixed_lr_step_gain(2.0)
    # a cut that comes only once the rate has decayed buys almost nothing
    late = [1.0] * 80 + [3.0] * 20
    assert scheduled_step_gain(cosine, late) < 1.02 < scheduled_step_gain(cosine[::-1], late)
