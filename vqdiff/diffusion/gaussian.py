"""Gaussian diffusion math: forward noising, prediction targets, the reverse step's Gaussian, losses.

Shapes: t is int32 [B] (0-based timesteps); x0, x_t, noise are [B, ...] with channels last. All
math runs in float32. The model predicts one of three equivalent targets:
  'eps'  the noise ε                                        (Ho et al. 2020)
  'x0'   the clean data x_0
  'v'    √ᾱ_t ε − √(1−ᾱ_t) x_0                              (Salimans & Ho 2022)
With a learned σ (Nichol & Dhariwal 2021) the model also outputs, in C more channels, v_σ (meant to
lie in [−1, 1], not clipped, as in DiT) and the reverse variance is
exp(((1+v_σ)/2) log β_t + ((1−v_σ)/2) log β̃_t).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vqdiff.diffusion.schedules import DiffusionSchedule

PREDICTIONS = ("eps", "v", "x0")


def _check_prediction(prediction):
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def _at(values, t, ndim):
    """values[t] as [B, 1, ..., 1] with `ndim` dimensions, to broadcast against [B, ...]."""
    return values[t].reshape((t.shape[0],) + (1,) * (ndim - 1))


def q_sample(schedule: DiffusionSchedule, x0, t, noise):
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε; x0, noise: [B, ...], t: [B] -> [B, ...]."""
    x0 = x0.astype(jnp.float32)
    return (_at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def training_target(schedule: DiffusionSchedule, x0, noise, t, prediction: str):
    """What the model regresses to: ε, x_0 or v = √ᾱ_t ε − √(1−ᾱ_t) x_0; [B, ...]."""
    _check_prediction(prediction)
    x0 = x0.astype(jnp.float32)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return (_at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * noise
            - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0)


def predict_x0_eps(schedule: DiffusionSchedule, x_t, t, model_output, prediction: str,
                   clip_x0=None):
    """(x_0, ε) implied by x_t and the model's prediction; model_output: [B, ..., C] (no σ channels).

    With `clip_x0` = c, x_0 is clipped to [−c, c] and ε recomputed from the clipped x_0.
    """
    _check_prediction(prediction)
    x_t = x_t.astype(jnp.float32)
    output = model_output.astype(jnp.float32)
    sqrt_alpha = _at(schedule.sqrt_alphas_cumprod, t, x_t.ndim)
    sqrt_one_minus = _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
    eps = None
    if prediction == "eps":
        x0, eps = (x_t - sqrt_one_minus * output) / sqrt_alpha, output
    elif prediction == "x0":
        x0 = output
    else:
        # (x_t, v) is (x_0, ε) rotated by the angle whose cos is √ᾱ_t and sin is √(1−ᾱ_t).
        x0 = sqrt_alpha * x_t - sqrt_one_minus * output
        eps = sqrt_one_minus * x_t + sqrt_alpha * output
    if clip_x0 is not None:
        x0, eps = jnp.clip(x0, -clip_x0, clip_x0), None
    if eps is None:
        eps = (x_t - sqrt_alpha * x0) / sqrt_one_minus
    return x0, eps


def q_posterior_mean_variance(schedule: DiffusionSchedule, x0, x_t, t):
    """Mean, variance β̃_t and clipped log variance of q(x_{t−1} | x_t, x_0); each [B, ...]."""
    mean = (_at(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
            + _at(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t)
    variance = jnp.broadcast_to(_at(schedule.posterior_variance, t, x_t.ndim), x_t.shape)
    log_variance = jnp.broadcast_to(
        _at(schedule.posterior_log_variance_clipped, t, x_t.ndim), x_t.shape)
    return mean, variance, log_variance


def p_mean_variance(schedule: DiffusionSchedule, x_t, t, model_output, prediction: str,
                    learn_sigma: bool, clip_x0=None):
    """The model's reverse step p(x_{t−1} | x_t) = N(mean, variance).

    model_output: [B, ..., 2C] if `learn_sigma` (prediction, then v_σ), else [B, ..., C].
    A fixed variance is β_t ("fixed large", DiT's and improved DDPM's choice when σ is not learned).
    Returns dict of mean, variance, log_variance and x0 (the predicted x_0), each [B, ..., C].
    """
    output = model_output.astype(jnp.float32)
    if learn_sigma:
        output, interpolation = jnp.split(output, 2, axis=-1)
        fraction = (interpolation + 1.0) / 2.0
        max_log = _at(jnp.log(schedule.betas), t, x_t.ndim)
        min_log = _at(schedule.posterior_log_variance_clipped, t, x_t.ndim)
        log_variance = fraction * max_log + (1.0 - fraction) * min_log
    else:
        log_variance = jnp.broadcast_to(_at(jnp.log(schedule.betas), t, x_t.ndim), x_t.shape)
    x0, _ = predict_x0_eps(schedule, x_t, t, output, prediction, clip_x0)
    mean, _, _ = q_posterior_mean_variance(schedule, x0, x_t, t)
    return dict(mean=mean, variance=jnp.exp(log_variance), log_variance=log_variance, x0=x0)


def normal_kl(mean1, log_variance1, mean2, log_variance2):
    """KL(N(mean1, e^log_variance1) ‖ N(mean2, e^log_variance2)) in nats, elementwise."""
    return 0.5 * (log_variance2 - log_variance1 - 1.0 + jnp.exp(log_variance1 - log_variance2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-log_variance2))


def gaussian_nll(x, mean, log_variance):
    """−log N(x; mean, e^log_variance) in nats, elementwise."""
    return 0.5 * (np.log(2 * np.pi) + log_variance
                  + jnp.square(x - mean) * jnp.exp(-log_variance))


def _mean_over_examples(values, weights):
    """Σ weights · values / Σ weights over [B]; 0 when every weight is 0."""
    return jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), jnp.finfo(jnp.float32).tiny)


def min_snr_weight(schedule: DiffusionSchedule, t, prediction: str, gamma: float):
    """Min-SNR-γ loss weight per example [B] (Hang et al. 2023) for the MSE of `prediction`.

    It weights every timestep as if the model regressed x_0 with weight min(SNR_t, γ), SNR_t = ᾱ_t/(1−ᾱ_t):
    an ε error is an x_0 error divided by √SNR and a v error one times √(1+1/SNR), so the weight of the
    target's own MSE is min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v and min(SNR, γ) for x_0.
    """
    _check_prediction(prediction)
    alpha = schedule.alphas_cumprod[t]
    snr = alpha / (1.0 - alpha)
    clipped = jnp.minimum(snr, gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1.0)
    return clipped


def sample_timesteps_and_noise(schedule: DiffusionSchedule, rng, shape):
    """The training draws of `diffusion_loss` for x0 of `shape` [B, ...]: (t [B] int32 ~ U{0..T−1}, noise)."""
    t_rng, noise_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, shape[:1], 0, schedule.num_timesteps, dtype=jnp.int32)
    return t, jax.random.normal(noise_rng, shape, jnp.float32)


def diffusion_loss(schedule: DiffusionSchedule, model_fn, x0, rng, *, prediction="v",
                   learn_sigma=False, mask=None, t=None, noise=None, min_snr_gamma=None):
    """Denoising loss at t ~ U{0..T−1}: (scalar float32 loss, dict of float32 metrics).

    x0: [B, ...]; model_fn(x_t [B, ...], t [B] int32) -> [B, ..., C], or [B, ..., 2C] with
    `learn_sigma`; mask: [B] example weights (default all 1): weight-0 examples (which must still be
    finite) change neither the loss nor its gradient. `t` [B] and `noise` (like x0), when both given,
    replace the draws from `rng` (`sample_timesteps_and_noise`), e.g. to split a batch into micro-batches.
    Per example, mse = mean squared error of the prediction; `min_snr_gamma` = γ weights it by
    `min_snr_weight` in the loss (the `mse` metric stays unweighted). With `learn_sigma` the hybrid loss of
    improved DDPM and DiT adds vlb = L_t in bits per dimension: KL(q(x_{t−1}|x_t,x_0) ‖ p) for t > 0
    and −log p(x_0 | x_1) at t = 0, both with the predicted mean under stop-gradient so that vlb only
    trains σ. The t = 0 term is a continuous Gaussian NLL rather than the discretised decoder of
    Ho et al.: that decoder assumes 8-bit data in [−1, 1], while here x0 are unbounded continuous
    latents.
    """
    x0 = x0.astype(jnp.float32)
    batch = x0.shape[0]
    if t is None or noise is None:
        t, noise = sample_timesteps_and_noise(schedule, rng, x0.shape)
    x_t = q_sample(schedule, x0, t, noise)
    output = model_fn(x_t, t).astype(jnp.float32)
    if learn_sigma:
        prediction_output, sigma_output = jnp.split(output, 2, axis=-1)
    else:
        prediction_output = output
    target = training_target(schedule, x0, noise, t, prediction)
    reduce_axes = tuple(range(1, x0.ndim))
    mse = jnp.mean(jnp.square(target - prediction_output), axis=reduce_axes)
    weights = jnp.ones((batch,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    metrics = dict(mse=_mean_over_examples(mse, weights))
    per_example = mse if min_snr_gamma is None else mse * min_snr_weight(schedule, t, prediction, min_snr_gamma)
    if learn_sigma:
        frozen = jnp.concatenate([jax.lax.stop_gradient(prediction_output), sigma_output], -1)
        p = p_mean_variance(schedule, x_t, t, frozen, prediction, learn_sigma=True)
        q_mean, _, q_log_variance = q_posterior_mean_variance(schedule, x0, x_t, t)
        kl = normal_kl(q_mean, q_log_variance, p["mean"], p["log_variance"])
        nll = gaussian_nll(x0, p["mean"], p["log_variance"])
        at_start = (t == 0).reshape((batch,) + (1,) * (x0.ndim - 1))
        vlb = jnp.mean(jnp.where(at_start, nll, kl), axis=reduce_axes) / np.log(2.0)
        metrics["vlb"] = _mean_over_examples(vlb, weights)
        per_example = per_example + vlb
    loss = _mean_over_examples(per_example, weights)
    metrics["loss"] = loss
    return loss, metrics
