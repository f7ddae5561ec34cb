"""Noise schedules of the discrete Gaussian diffusion q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I).

A `DiffusionSchedule` holds the per-step constants as float32 arrays [T], computed once in float64
numpy. Timesteps are 0-based: x_t for t = 0..T−1 has had t + 1 noising steps, so ᾱ_0 = 1 − β_0.

References: Ho et al. 2020 (DDPM, linear βs), Nichol & Dhariwal 2021 (improved DDPM: cosine
schedule, timestep respacing), Peebles & Xie 2023 (DiT, which uses the linear schedule).
"""
from __future__ import annotations

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")


@struct.dataclass
class DiffusionSchedule:
    """Per-step constants, each float32 [T]; index with the 0-based timestep t.

    alphas_cumprod_prev[t] = ᾱ_{t−1} with ᾱ_{−1} = 1. The posterior q(x_{t−1} | x_t, x_0) has mean
    posterior_mean_coef1 · x_0 + posterior_mean_coef2 · x_t and variance posterior_variance = β̃_t;
    its log is clipped at t = 0 (where β̃_0 = 0) to log β̃_1, as in improved DDPM.
    """
    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def schedule_from_betas(betas) -> DiffusionSchedule:
    """The schedule of `betas`: [T] with T ≥ 2 and every β in (0, 1).

    The βs are rounded to float32 first and ᾱ is their float64 product, so the stored arrays describe
    one process exactly: `respace`, which rebuilds from the stored βs, then reproduces ᾱ at the kept
    steps bit for bit.
    """
    return _schedule(np.asarray(betas, np.float64).astype(np.float32).astype(np.float64))


def _schedule(betas) -> DiffusionSchedule:
    """All constants from float64 `betas` [T], derived in float64 and stored as float32."""
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(f"betas must have shape [T] with T >= 2, got {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError(f"betas must lie in (0, 1), got range [{betas.min()}, {betas.max()}]")
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    one_minus = 1.0 - alphas_cumprod
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / one_minus
    arrays = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(one_minus),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(
            np.concatenate([posterior_variance[1:2], posterior_variance[1:]])),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / one_minus,
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / one_minus,
    )
    return DiffusionSchedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


def linear_schedule(num_timesteps=1000, beta_start=1e-4, beta_end=0.02) -> DiffusionSchedule:
    """βs evenly spaced from `beta_start` to `beta_end` (DDPM; DiT's default with T = 1000)."""
    return schedule_from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))


def cosine_schedule(num_timesteps=1000, s=0.008, max_beta=0.999) -> DiffusionSchedule:
    """ᾱ(τ) = f(τ)/f(0) with f(τ) = cos²((τ + s)/(1 + s) · π/2) (Nichol & Dhariwal 2021, eq. 17).

    β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), max_beta); the clip keeps the last steps from β = 1.
    """
    tau = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((tau + s) / (1.0 + s) * np.pi / 2) ** 2
    return schedule_from_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta))


def make_schedule(name: str, num_timesteps: int) -> DiffusionSchedule:
    """Schedule by name, 'linear' or 'cosine'.

    'linear' scales its βs by 1000 / T as improved DDPM does, so that any T noises about as much as
    DiT's T = 1000 (T ≤ 20 would need β ≥ 1 and is refused).
    """
    if name == "linear":
        scale = 1000.0 / num_timesteps
        return linear_schedule(num_timesteps, 1e-4 * scale, 0.02 * scale)
    if name == "cosine":
        return cosine_schedule(num_timesteps)
    raise ValueError(f"unknown diffusion schedule {name!r}; expected one of {SCHEDULES}")


def respace(schedule: DiffusionSchedule, num_steps: int):
    """Keeps `num_steps` evenly spaced timesteps (always 0 and T−1) and recomputes the βs for them.

    Returns (schedule over the kept steps, timesteps [num_steps] int32 of the kept original steps).
    The new β_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}}, so ᾱ is unchanged at the kept steps (improved DDPM §4).
    Host-side numpy: `schedule` must be concrete (under jit, close over it rather than passing it as
    an argument).
    """
    num_timesteps = schedule.num_timesteps
    if not 2 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps={num_steps} must lie in [2, {num_timesteps}]")
    if isinstance(schedule.betas, jax.core.Tracer):
        raise TypeError("respace needs a concrete schedule; under jit, close over the schedule "
                        "instead of passing it as an argument")
    timesteps = np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32)
    # Products of (1 − β) over each gap of kept steps, in float64 from the stored float32 βs.
    log_keep = np.cumsum(np.log1p(-np.asarray(schedule.betas, np.float64)))[timesteps]
    return _schedule(-np.expm1(np.diff(log_keep, prepend=0.0))), jnp.asarray(timesteps)
