"""Tests for vqdiff/diffusion/samplers.py on Gaussian data, whose optimal denoiser is known.

Data x_0 ~ N(μ, s² I). Then x_t ~ N(√ᾱ μ, σ_t² I) with σ_t² = ᾱ s² + 1 − ᾱ, and with z = x_t − √ᾱ μ:
  E[x_0 | x_t] = μ + (√ᾱ s² / σ_t²) z,   E[ε | x_t] = (√(1−ᾱ) / σ_t²) z,   Var[x_0 | x_t] = s² (1−ᾱ) / σ_t².
Every sampler step is then affine in x_t plus Gaussian noise, so the law of its output is Gaussian
with a mean and variance that a float64 recursion computes exactly (`_exact_law`). The samples must
match that law to a tolerance set by the sample count: 5 standard errors for the mean (s_x/√N) and
for the variance (s_x² √(2/(N−1))). Where the discrete sampler is exact or nearly so (learned σ set
to the true reverse variance; all 1000 steps), the samples must match the data law itself.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vqdiff.diffusion import samplers, schedules

SCHEDULE = schedules.linear_schedule()
ALPHA_BAR = np.cumprod(1 - np.asarray(SCHEDULE.betas, np.float64))
MU = np.array([1.0, -2.0])
S = 0.5
NUM_SAMPLES = 16384


def _kept_alpha_bar(num_steps):
    """(ᾱ, ᾱ_prev) at the kept steps round(linspace(0, T−1, num_steps)) of improved DDPM."""
    kept = ALPHA_BAR[np.round(np.linspace(0, len(ALPHA_BAR) - 1, num_steps)).astype(int)]
    return kept, np.concatenate([[1.0], kept[:-1]])


def _ddpm_posterior(num_steps):
    """Respaced β, β̃ and the posterior mean coefficients (c1 of x_0, c2 of x_t), DDPM eq. 7."""
    alpha_bar, prev = _kept_alpha_bar(num_steps)
    beta = 1 - alpha_bar / prev
    return (beta, beta * (1 - prev) / (1 - alpha_bar), beta * np.sqrt(prev) / (1 - alpha_bar),
            np.sqrt(1 - beta) * (1 - prev) / (1 - alpha_bar))


def _optimal_variance(num_steps):
    """Var[x_{t'} | x_t] of the data's true reverse process at each kept step: β̃ + c1² Var[x_0|x_t]."""
    alpha_bar, _ = _kept_alpha_bar(num_steps)
    _, beta_tilde, c1, _ = _ddpm_posterior(num_steps)
    return beta_tilde + c1 ** 2 * S ** 2 * (1 - alpha_bar) / (alpha_bar * S ** 2 + 1 - alpha_bar)


def _exact_law(sampler, num_steps, eta=0.0, learned_sigma=False):
    """Mean [2] and variance of the sampler's output, from x_T ~ N(0, I), in float64."""
    alpha_bar, prev = _kept_alpha_bar(num_steps)
    beta, beta_tilde, c1, c2 = _ddpm_posterior(num_steps)
    mean, variance = np.zeros(2), 1.0
    for i in reversed(range(num_steps)):
        sigma_t2 = alpha_bar[i] * S ** 2 + 1 - alpha_bar[i]
        gain_x0 = np.sqrt(alpha_bar[i]) * S ** 2 / sigma_t2      # x̂_0 = μ + gain_x0 · z
        gain_eps = np.sqrt(1 - alpha_bar[i]) / sigma_t2         # ε̂ = gain_eps · z
        z_mean = mean - np.sqrt(alpha_bar[i]) * MU
        if sampler == "ddim":                                  # DDIM eq. 12
            noise = eta ** 2 * beta_tilde[i]
            gain = np.sqrt(prev[i]) * gain_x0 + np.sqrt(1 - prev[i] - noise) * gain_eps
            mean = np.sqrt(prev[i]) * MU + gain * z_mean
        else:
            noise = (_optimal_variance(num_steps)[i] if learned_sigma else beta[i]) if i else 0.0
            gain = c1[i] * gain_x0 + c2[i]
            mean = c1[i] * (MU + gain_x0 * z_mean) + c2[i] * mean
        variance = gain ** 2 * variance + noise
    return mean, variance


def _oracle(prediction, num_steps=None):
    """model_fn(x [B, 2], t [B]) of the optimal denoiser; with `num_steps`, also the learned-σ
    channels v_σ that give the true reverse variance at each kept step."""
    alpha_bar_table = jnp.asarray(ALPHA_BAR, jnp.float32)
    if num_steps is not None:
        beta, beta_tilde, _, _ = _ddpm_posterior(num_steps)
        fraction = (np.log(_optimal_variance(num_steps)[1:] / beta_tilde[1:])
                    / np.log(beta[1:] / beta_tilde[1:]))
        assert np.all((fraction >= 0) & (fraction <= 1))
        sigma = np.concatenate([[0.0], 2 * fraction - 1])   # the last step adds no noise
        timesteps = np.round(np.linspace(0, len(ALPHA_BAR) - 1, num_steps)).astype(int)
        sigma_table = jnp.zeros(len(ALPHA_BAR)).at[timesteps].set(sigma)
    mu = jnp.asarray(MU, jnp.float32)

    def model_fn(x, t):
        alpha_bar = alpha_bar_table[t][:, None]
        sigma_t2 = alpha_bar * S ** 2 + 1 - alpha_bar
        z = x - jnp.sqrt(alpha_bar) * mu
        x0 = mu + jnp.sqrt(alpha_bar) * S ** 2 / sigma_t2 * z
        eps = jnp.sqrt(1 - alpha_bar) / sigma_t2 * z
        output = {"x0": x0, "eps": eps,
                  "v": jnp.sqrt(alpha_bar) * eps - jnp.sqrt(1 - alpha_bar) * x0}[prediction]
        if num_steps is None:
            return output
        return jnp.concatenate([output, jnp.broadcast_to(sigma_table[t][:, None], x.shape)], -1)

    return model_fn


def _sample(sampler, prediction, num_steps, seed=0, **kwargs):
    learn_sigma = kwargs.pop("learned_sigma", False)
    model_fn = _oracle(prediction, num_steps if learn_sigma else None)
    sample = samplers.ddim_sample if sampler == "ddim" else samplers.ddpm_sample
    x_rng, rng = jax.random.split(jax.random.key(seed))
    x_T = jax.random.normal(x_rng, (NUM_SAMPLES, 2))
    run = jax.jit(lambda x_T, rng: sample(model_fn, SCHEDULE, x_T, rng, num_steps=num_steps,
                                          prediction=prediction, learn_sigma=learn_sigma, **kwargs))
    return np.asarray(run(x_T, rng), np.float64)


def _assert_law(samples, mean, variance):
    """Sample mean and variance per dimension within 5 standard errors of (mean, variance)."""
    n = samples.shape[0]
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * np.sqrt(variance / n))
    np.testing.assert_array_less(np.abs(samples.var(0, ddof=1) - variance),
                                 5 * variance * np.sqrt(2 / (n - 1)))


@pytest.mark.parametrize("sampler, prediction, num_steps, eta", [
    ("ddim", "v", 50, 0.0),
    ("ddim", "eps", 50, 0.0),
    ("ddim", "v", 50, 1.0),
    ("ddim", "x0", 20, 0.5),
    ("ddpm", "v", 50, None),
    ("ddpm", "eps", 100, None),
])
def test_respaced_samplers_follow_their_exact_discrete_law(sampler, prediction, num_steps, eta):
    kwargs = {} if eta is None else {"eta": eta}
    samples = _sample(sampler, prediction, num_steps, **kwargs)
    _assert_law(samples, *_exact_law(sampler, num_steps, eta or 0.0))


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_ddpm_with_the_true_reverse_variance_recovers_the_data(prediction):
    """With σ learned exactly, each respaced step is the true q(x_{t'} | x_t): no discretisation bias."""
    mean, variance = _exact_law("ddpm", 50, learned_sigma=True)
    np.testing.assert_allclose(variance, S ** 2, rtol=1e-3)
    np.testing.assert_allclose(mean, MU, atol=1e-2)
    _assert_law(_sample("ddpm", prediction, 50, learned_sigma=True), MU, S ** 2)


@pytest.mark.parametrize("sampler, prediction", [("ddpm", "eps"), ("ddim", "v")])
def test_samplers_with_all_1000_steps_recover_the_data(sampler, prediction):
    # Discretisation bias of the variance here is below 1% (DDPM 1.003 s², DDIM 0.994 s²).
    _assert_law(_sample(sampler, prediction, 1000), MU, S ** 2)


def test_the_exact_law_shows_the_bias_of_few_steps():
    """Guards the tolerance argument above: at 50 steps DDIM's bias is larger than 5 standard
    errors, so the tests of the discrete law would catch a sampler that matched the data instead."""
    _, variance = _exact_law("ddim", 50)
    assert abs(variance / S ** 2 - 1) > 5 * np.sqrt(2 / (NUM_SAMPLES - 1))


def test_classifier_free_guidance_mixes_the_prediction_and_keeps_conditional_sigma():
    calls = []

    def model_fn(x, t, y):
        calls.append(y)
        prediction = x * y[:, None] + t[:, None]
        return jnp.concatenate([prediction, 3 * x + y[:, None]], -1)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
    t, y = jnp.array([5, 6, 7, 8]), jnp.array([1, 2, 3, 4])
    cond = model_fn(x, t, y)
    uncond = model_fn(x, t, jnp.full_like(y, 9))
    for scale in (0.0, 1.0, 4.0):
        calls.clear()
        guided = samplers.classifier_free_guidance(model_fn, scale, 9, learn_sigma=True)(x, t, y)
        (y_seen,) = calls
        np.testing.assert_array_equal(y_seen, [1, 2, 3, 4, 9, 9, 9, 9])
        expected = uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3])
        np.testing.assert_allclose(guided[:, :3], expected, rtol=1e-6)
        np.testing.assert_array_equal(guided[:, 3:], cond[:, 3:])
    unguided = samplers.classifier_free_guidance(lambda *a: model_fn(*a)[:, :3], 0.0, 9, False)
    np.testing.assert_array_equal(unguided(x, t, y), uncond[:, :3])


def test_guidance_interval_guides_inside_and_returns_the_conditional_prediction_outside():
    def model_fn(x, t, y):
        return x * y[:, None] + t[:, None]

    x = jnp.asarray(np.random.default_rng(1).standard_normal((5, 3)), jnp.float32)
    t, y = jnp.array([10, 99, 100, 400, 401]), jnp.array([1, 2, 3, 4, 5])
    cond, uncond = model_fn(x, t, y), model_fn(x, t, jnp.full_like(y, 9))
    guided = samplers.classifier_free_guidance(model_fn, 3.0, 9, False, interval=(100, 400))(x, t, y)
    inside = np.array([False, False, True, True, False])
    expected = np.where(inside[:, None], uncond + 3.0 * (cond - uncond), cond)
    np.testing.assert_allclose(guided, expected, rtol=1e-6)
    assert not np.allclose(expected[inside], np.asarray(cond)[inside])   # the guidance is visible


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_loop_is_one_scan_calling_the_model_once_per_trace(sampler):
    traces = []

    def model_fn(x, t):
        traces.append(t)
        return jnp.concatenate([0.5 * x, jnp.zeros_like(x)], -1)

    sample = samplers.ddim_sample if sampler == "ddim" else samplers.ddpm_sample
    run = lambda x_T, rng: sample(model_fn, SCHEDULE, x_T, rng, num_steps=10, learn_sigma=True)
    x_T, rng = jnp.zeros((4, 2, 2, 3)), jax.random.key(0)
    jaxpr = jax.make_jaxpr(run)(x_T, rng)
    assert len(traces) == 1 and traces[0].shape == (4,) and traces[0].dtype == jnp.int32
    assert "scan" in [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
    jax.jit(run).lower(x_T, rng)


def test_model_sees_the_original_timesteps_in_descending_order():
    seen = []

    def model_fn(x, t):
        jax.debug.callback(lambda t: seen.append(int(t[0])), t, ordered=True)
        return jnp.zeros_like(x)

    samplers.ddim_sample(model_fn, SCHEDULE, jnp.zeros((2, 1)), jax.random.key(0), num_steps=5,
                         prediction="eps")
    assert seen == [999, 749, 500, 250, 0]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_sharded_over_8_devices_matches_1_device(sampler):
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    sample = samplers.ddim_sample if sampler == "ddim" else samplers.ddpm_sample
    kwargs = {"eta": 1.0} if sampler == "ddim" else {}
    run = jax.jit(lambda x_T, rng: sample(_oracle("v"), SCHEDULE, x_T, rng, num_steps=20,
                                          **kwargs))
    x_T = jax.random.normal(jax.random.key(1), (64, 2))
    rng = jax.random.key(2)
    single = run(x_T, rng)
    x_sharded = jax.device_put(x_T, sharding)
    rng_replicated = jax.device_put(rng, NamedSharding(mesh, P()))
    compiled = run.lower(x_sharded, rng_replicated).compile()
    with jax.transfer_guard("disallow"):   # no transfer of any kind while the loop runs
        sharded = compiled(x_sharded, rng_replicated)
    assert sharded.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
