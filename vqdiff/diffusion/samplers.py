"""Samplers: ancestral DDPM and DDIM(η) over respaced timesteps, and classifier-free guidance.

Each sampler is one `lax.scan` over the kept steps, a pure function of arrays: under jit with x_T
sharded over a data axis the whole loop runs on the devices, and the per-step noise (threefry,
partitionable) is the same however x_T is sharded. The schedule is read on the host to respace it,
so under jit close over it rather than passing it as an argument.

model_fn(x [B, ...], t [B] int32) -> [B, ..., C] (or [B, ..., 2C] with a learned σ) is called with
the ORIGINAL timestep of each kept step, as in improved DDPM.

References: Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM, eq. 12 and 16), Nichol & Dhariwal 2021
(respacing, learned σ), Ho & Salimans 2021 (classifier-free guidance).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vqdiff.diffusion import gaussian
from vqdiff.diffusion.schedules import DiffusionSchedule, respace


def classifier_free_guidance(model_fn, guidance_scale, null_label, learn_sigma, interval=None):
    """fn(x [B, ...], t [B], y [B]) = uncond + scale(t) · (cond − uncond).

    model_fn(x, t, y) is called once, on the batch of 2B: (x, t, y) then (x, t, null_label).
    Guidance acts on the prediction channels only (linear in ε, v and x_0 alike for a fixed x_t);
    with `learn_sigma` the variance channels are the conditional branch's.
    `interval` (t_low, t_high): guide only at original timesteps t_low ≤ t ≤ t_high and return the
    conditional prediction elsewhere (Kynkäänniemi et al. 2024, guidance in a limited interval);
    None guides at every step.
    """

    def guided(x, t, y):
        batch = x.shape[0]
        output = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                          jnp.concatenate([y, jnp.full_like(y, null_label)]))
        cond, uncond = output[:batch], output[batch:]
        if learn_sigma:
            cond, sigma = jnp.split(cond, 2, axis=-1)
            uncond = jnp.split(uncond, 2, axis=-1)[0]
        scale = guidance_scale
        if interval is not None:
            inside = (t >= interval[0]) & (t <= interval[1])
            scale = jnp.where(inside, guidance_scale, 1.0).reshape((batch,) + (1,) * (cond.ndim - 1))
        mixed = uncond + scale * (cond - uncond)
        return jnp.concatenate([mixed, sigma], axis=-1) if learn_sigma else mixed

    return guided


def _scan_steps(step, x_T, rng, num_steps):
    """x_0 from `step(x, i, key)` applied for i = num_steps−1 down to 0."""
    indices = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)
    keys = jax.random.split(rng, num_steps)

    def body(x, inputs):
        return step(x, *inputs), None

    x0, _ = jax.lax.scan(body, x_T.astype(jnp.float32), (indices, keys))
    return x0


def ddim_sample(model_fn, schedule: DiffusionSchedule, x_T, rng, *, num_steps, eta=0.0,
                prediction="v", learn_sigma=False, clip_x0=None):
    """DDIM over `num_steps` respaced steps from x_T: [B, ...] -> x_0 [B, ...] float32.

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z with σ² = η² β̃ of the respaced step:
    η = 0 is deterministic, η = 1 is ancestral sampling with σ² = β̃. Learned σ channels are unused.
    """
    respaced, timesteps = respace(schedule, num_steps)
    batch = x_T.shape[0]

    def step(x, i, key):
        index = jnp.full((batch,), i)
        output = model_fn(x, jnp.full((batch,), timesteps[i]))
        if learn_sigma:
            output = jnp.split(output, 2, axis=-1)[0]
        x0, eps = gaussian.predict_x0_eps(respaced, x, index, output, prediction, clip_x0)
        alpha_prev = respaced.alphas_cumprod_prev[i]
        variance = eta ** 2 * respaced.posterior_variance[i]
        direction = jnp.sqrt(jnp.maximum(1.0 - alpha_prev - variance, 0.0))
        noise = jax.random.normal(key, x.shape, jnp.float32)
        return jnp.sqrt(alpha_prev) * x0 + direction * eps + jnp.sqrt(variance) * noise

    return _scan_steps(step, x_T, rng, num_steps)


def ddpm_sample(model_fn, schedule: DiffusionSchedule, x_T, rng, *, num_steps, prediction="v",
                learn_sigma=False, clip_x0=None):
    """Ancestral sampling from p(x_{t'} | x_t) of the respaced schedule: x_T [B, ...] -> x_0.

    The variance is learned (interpolating the respaced β and β̃) or fixed at the respaced β; the
    last step returns the mean without noise.
    """
    respaced, timesteps = respace(schedule, num_steps)
    batch = x_T.shape[0]

    def step(x, i, key):
        output = model_fn(x, jnp.full((batch,), timesteps[i]))
        p = gaussian.p_mean_variance(respaced, x, jnp.full((batch,), i), output, prediction,
                                     learn_sigma, clip_x0)
        noise = jax.random.normal(key, x.shape, jnp.float32)
        return p["mean"] + jnp.where(i > 0, jnp.exp(0.5 * p["log_variance"]), 0.0) * noise

    return _scan_steps(step, x_T, rng, num_steps)
