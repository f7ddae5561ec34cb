"""Tests for vqdiff/diffusion/schedules.py against the closed forms of the papers, in float64 numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff.diffusion import schedules

FIELDS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
          "sqrt_one_minus_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
          "posterior_mean_coef1", "posterior_mean_coef2")


def _cosine_alpha_bar(tau, s=0.008):
    """ᾱ(τ) of Nichol & Dhariwal 2021, eq. 17, for τ = t / T in [0, 1]."""
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    return f(tau) / f(0.0)


def test_linear_schedule_matches_closed_form():
    schedule = schedules.linear_schedule()
    betas = np.linspace(1e-4, 0.02, 1000)
    assert schedule.num_timesteps == 1000
    for name in FIELDS:
        array = getattr(schedule, name)
        assert array.shape == (1000,) and array.dtype == jnp.float32, name
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - betas), rtol=2e-6)
    np.testing.assert_allclose(schedule.alphas_cumprod_prev[1:], np.cumprod(1 - betas)[:-1],
                               rtol=2e-6)
    assert schedule.alphas_cumprod_prev[0] == 1.0


def test_cosine_schedule_matches_closed_form():
    schedule = schedules.cosine_schedule(num_timesteps=1000)
    t = np.arange(1000)
    expected_betas = np.minimum(1 - _cosine_alpha_bar((t + 1) / 1000) / _cosine_alpha_bar(t / 1000),
                                0.999)
    np.testing.assert_allclose(schedule.betas, expected_betas, rtol=1e-6)
    # Below the clip, the discrete ᾱ_t telescopes to ᾱ((t+1)/T) of the continuous form.
    unclipped = expected_betas < 0.999
    assert unclipped.sum() == 999   # only the last step is clipped
    np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod)[unclipped],
                               _cosine_alpha_bar((t[unclipped] + 1) / 1000), rtol=1e-5)


def test_posterior_constants_match_closed_form():
    schedule = schedules.cosine_schedule(num_timesteps=50)
    betas = np.asarray(schedule.betas, np.float64)
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    np.testing.assert_allclose(schedule.posterior_variance, posterior_variance, rtol=1e-5)
    np.testing.assert_allclose(schedule.posterior_log_variance_clipped[1:],
                               np.log(posterior_variance[1:]), rtol=1e-5)
    assert schedule.posterior_log_variance_clipped[0] == schedule.posterior_log_variance_clipped[1]
    np.testing.assert_allclose(schedule.posterior_mean_coef1,
                               betas * np.sqrt(alpha_bar_prev) / (1 - alpha_bar), rtol=1e-5)
    np.testing.assert_allclose(schedule.posterior_mean_coef2,
                               (1 - alpha_bar_prev) * np.sqrt(1 - betas) / (1 - alpha_bar),
                               rtol=1e-5)
    np.testing.assert_allclose(schedule.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - alpha_bar),
                               rtol=1e-5)


@pytest.mark.parametrize("make", [schedules.linear_schedule, schedules.cosine_schedule])
@pytest.mark.parametrize("num_steps", [2, 7, 50, 250, 999])
def test_respace_keeps_alpha_bar_at_kept_steps_exactly(make, num_steps):
    schedule = make(num_timesteps=1000)
    respaced, timesteps = schedules.respace(schedule, num_steps)
    assert timesteps.dtype == jnp.int32 and timesteps.shape == (num_steps,)
    timesteps = np.asarray(timesteps)
    np.testing.assert_array_equal(timesteps, np.round(np.linspace(0, 999, num_steps)))
    assert np.all(np.diff(timesteps) > 0)
    alpha_bar = np.asarray(schedule.alphas_cumprod)
    np.testing.assert_array_equal(respaced.alphas_cumprod, alpha_bar[timesteps])
    kept = np.cumprod(1 - np.asarray(schedule.betas, np.float64))[timesteps]
    np.testing.assert_allclose(respaced.betas, 1 - kept / np.concatenate([[1.0], kept[:-1]]),
                               rtol=1e-5)


@pytest.mark.parametrize("make", [schedules.linear_schedule, schedules.cosine_schedule])
def test_respace_to_all_steps_is_the_identity(make):
    schedule = make(num_timesteps=1000)
    respaced, timesteps = schedules.respace(schedule, 1000)
    np.testing.assert_array_equal(timesteps, np.arange(1000))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(respaced, name), getattr(schedule, name), name)


def test_respace_rejects_bad_step_counts():
    schedule = schedules.linear_schedule(num_timesteps=10, beta_end=0.2)
    for num_steps in (0, 1, 11):
        with pytest.raises(ValueError, match="num_steps"):
            schedules.respace(schedule, num_steps)


def test_make_schedule_by_name():
    np.testing.assert_array_equal(schedules.make_schedule("linear", 1000).betas,
                                  schedules.linear_schedule().betas)
    np.testing.assert_array_equal(schedules.make_schedule("cosine", 100).betas,
                                  schedules.cosine_schedule(100).betas)
    # improved DDPM's scaling: T = 100 ends at β = 0.2.
    np.testing.assert_allclose(schedules.make_schedule("linear", 100).betas,
                               np.linspace(1e-3, 0.2, 100), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown diffusion schedule 'quadratic'.*'linear'"):
        schedules.make_schedule("quadratic", 1000)


def test_schedule_from_betas_rejects_invalid_betas():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        schedules.make_schedule("linear", 20)   # β_end = 1
    with pytest.raises(ValueError, match="T >= 2"):
        schedules.schedule_from_betas([0.5])


def test_respace_of_a_traced_schedule_says_to_close_over_it():
    with pytest.raises(TypeError, match="close over the schedule"):
        jax.jit(lambda schedule: schedules.respace(schedule, 10)[1])(schedules.linear_schedule())
