"""Tests for vqdiff/diffusion/gaussian.py against closed forms in float64 numpy.

The posterior reference is derived by Bayes' rule from q(x_{t−1} | x_0) and q(x_t | x_{t−1}), not from
the schedule's precomputed coefficients.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff.diffusion import gaussian, schedules

SCHEDULE = schedules.linear_schedule()
SMALL = schedules.linear_schedule(num_timesteps=4, beta_start=0.05, beta_end=0.5)


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _alpha_bar(schedule):
    """(ᾱ_t, ᾱ_{t−1}) in float64 from the schedule's βs."""
    alpha_bar = np.cumprod(1 - np.asarray(schedule.betas, np.float64))
    return alpha_bar, np.concatenate([[1.0], alpha_bar[:-1]])


def _col(values, t, ndim):
    return np.asarray(values, np.float64)[np.asarray(t)].reshape((-1,) + (1,) * (ndim - 1))


def _numpy_posterior(schedule, x0, x_t, t):
    """Mean and variance of q(x_{t−1} | x_t, x_0) ∝ N(x_{t−1}; √ᾱ' x_0, 1−ᾱ') N(x_t; √(1−β) x_{t−1}, β)."""
    alpha_bar, alpha_bar_prev = _alpha_bar(schedule)
    beta = _col(schedule.betas, t, x0.ndim)
    prev = _col(alpha_bar_prev, t, x0.ndim)
    known = prev == 1   # t = 0: x_{−1} is x_0 itself
    prev = np.where(known, 0.5, prev)
    precision = 1 / (1 - prev) + (1 - beta) / beta
    mean = (np.sqrt(prev) * x0 / (1 - prev) + np.sqrt(1 - beta) * x_t / beta) / precision
    return (np.where(known, x0, mean),
            np.broadcast_to(np.where(known, 0.0, 1 / precision), np.shape(x_t)))


def _numpy_x0(schedule, x_t, t, output, prediction):
    alpha_bar = _col(_alpha_bar(schedule)[0], t, x_t.ndim)
    if prediction == "eps":
        return (x_t - np.sqrt(1 - alpha_bar) * output) / np.sqrt(alpha_bar)
    if prediction == "v":
        return np.sqrt(alpha_bar) * x_t - np.sqrt(1 - alpha_bar) * output
    return output


def _batch(seed, t):
    x0, noise = _normal(seed, len(t), 3, 2, 4), _normal(seed + 1, len(t), 3, 2, 4)
    return jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t, jnp.int32)


def test_q_sample_matches_closed_form():
    x0, noise, t = _batch(0, [0, 1, 500, 999])
    alpha_bar = _col(_alpha_bar(SCHEDULE)[0], t, 4)
    expected = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * noise
    np.testing.assert_allclose(gaussian.q_sample(SCHEDULE, x0, t, noise), expected, rtol=1e-5,
                               atol=1e-6)


def test_training_targets_match_closed_forms():
    x0, noise, t = _batch(2, [0, 3, 640, 999])
    alpha_bar = _col(_alpha_bar(SCHEDULE)[0], t, 4)
    np.testing.assert_array_equal(gaussian.training_target(SCHEDULE, x0, noise, t, "eps"), noise)
    np.testing.assert_array_equal(gaussian.training_target(SCHEDULE, x0, noise, t, "x0"), x0)
    np.testing.assert_allclose(gaussian.training_target(SCHEDULE, x0, noise, t, "v"),
                               np.sqrt(alpha_bar) * noise - np.sqrt(1 - alpha_bar) * x0,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        gaussian.training_target(SCHEDULE, x0, noise, t, "score")


# ε-prediction divides by √ᾱ_t (≈ 0.0063 at t = 999) to get x_0, x_0-prediction by √(1−ᾱ_t)
# (0.01 at t = 0) to get ε: float32 rounding of x_t is amplified by up to ~160.
@pytest.mark.parametrize("prediction, atol", [("eps", 3e-5), ("v", 2e-6), ("x0", 3e-5)])
def test_predict_x0_eps_inverts_the_training_target(prediction, atol):
    x0, noise, t = _batch(4, [0, 1, 250, 998, 999])
    x_t = gaussian.q_sample(SCHEDULE, x0, t, noise)
    target = gaussian.training_target(SCHEDULE, x0, noise, t, prediction)
    x0_hat, eps_hat = gaussian.predict_x0_eps(SCHEDULE, x_t, t, target, prediction)
    np.testing.assert_allclose(x0_hat, x0, atol=atol)
    np.testing.assert_allclose(eps_hat, noise, atol=atol)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_predict_x0_eps_clips_x0_and_keeps_x_t_consistent(prediction):
    x0, noise, t = _batch(6, [5, 100, 400, 900])
    x_t = gaussian.q_sample(SCHEDULE, 3 * x0, t, noise)
    output = jnp.asarray(_normal(7, *x0.shape))
    x0_hat, eps_hat = gaussian.predict_x0_eps(SCHEDULE, x_t, t, output, prediction, clip_x0=1.0)
    unclipped = _numpy_x0(SCHEDULE, np.asarray(x_t, np.float64), t, output, prediction)
    np.testing.assert_allclose(x0_hat, np.clip(unclipped, -1, 1), atol=1e-4)
    alpha_bar = _col(_alpha_bar(SCHEDULE)[0], t, 4)
    np.testing.assert_allclose(np.sqrt(alpha_bar) * x0_hat + np.sqrt(1 - alpha_bar) * eps_hat, x_t,
                               atol=1e-5)


def test_q_posterior_matches_bayes_rule():
    x0, x_t, t = _batch(8, [0, 1, 2, 500, 999])
    mean, variance, log_variance = gaussian.q_posterior_mean_variance(SCHEDULE, x0, x_t, t)
    expected_mean, expected_variance = _numpy_posterior(SCHEDULE, x0, x_t, t)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, expected_variance, rtol=1e-5, atol=1e-12)
    assert np.all(np.asarray(variance)[0] == 0)   # x_{−1} = x_0 is known given x_0
    np.testing.assert_allclose(log_variance[1:], np.log(expected_variance[1:]), rtol=1e-5)
    np.testing.assert_allclose(log_variance[0], np.log(expected_variance[1]), rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_p_mean_variance_learned_sigma_interpolates_beta_and_posterior_variance(prediction):
    x_t, _, t = _batch(10, [0, 1, 2, 300, 999])
    output = jnp.asarray(_normal(11, *x_t.shape))
    beta = _col(SCHEDULE.betas, t, 4)
    _, beta_tilde = _numpy_posterior(SCHEDULE, x_t, x_t, np.maximum(t, 1))   # clipped at t = 0
    x0 = _numpy_x0(SCHEDULE, np.asarray(x_t, np.float64), t, output, prediction)
    for v, expected in [(1.0, beta), (-1.0, beta_tilde), (0.0, np.sqrt(beta * beta_tilde))]:
        model_output = jnp.concatenate([output, jnp.full_like(output, v)], axis=-1)
        p = gaussian.p_mean_variance(SCHEDULE, x_t, t, model_output, prediction, learn_sigma=True)
        np.testing.assert_allclose(p["variance"], np.broadcast_to(expected, x_t.shape), rtol=1e-4)
        np.testing.assert_allclose(p["log_variance"], np.log(p["variance"]), rtol=1e-5)
        np.testing.assert_allclose(p["x0"], x0, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(p["mean"], _numpy_posterior(SCHEDULE, x0, x_t, t)[0],
                                   rtol=1e-4, atol=1e-4)
    fixed = gaussian.p_mean_variance(SCHEDULE, x_t, t, output, prediction, learn_sigma=False)
    np.testing.assert_allclose(fixed["variance"], np.broadcast_to(beta, x_t.shape), rtol=1e-5)


def _recording_model(scale, learn_sigma, calls):
    """model_fn(x_t, t) = scale·x_t (and tanh(x_t) as σ channels), recording its inputs."""

    def model_fn(x_t, t):
        calls.append((np.asarray(x_t, np.float64), np.asarray(t)))
        output = scale * x_t
        return jnp.concatenate([output, jnp.tanh(x_t)], -1) if learn_sigma else output

    return model_fn


def _numpy_loss(schedule, x0, x_t, t, output, prediction, learn_sigma, mask):
    """(loss, mse, vlb) by hand: ε from x_t and x_0, Gaussian KL / NLL in bits per dimension."""
    x0 = np.asarray(x0, np.float64)
    alpha_bar = _col(_alpha_bar(schedule)[0], t, x0.ndim)
    noise = (x_t - np.sqrt(alpha_bar) * x0) / np.sqrt(1 - alpha_bar)
    target = {"eps": noise, "x0": x0,
              "v": np.sqrt(alpha_bar) * noise - np.sqrt(1 - alpha_bar) * x0}[prediction]
    channels = x0.shape[-1]
    axes = tuple(range(1, x0.ndim))
    mse = ((target - output[..., :channels]) ** 2).mean(axes)
    vlb = np.zeros_like(mse)
    if learn_sigma:
        x0_hat = _numpy_x0(schedule, x_t, t, output[..., :channels], prediction)
        p_mean, _ = _numpy_posterior(schedule, x0_hat, x_t, t)
        q_mean, q_variance = _numpy_posterior(schedule, x0, x_t, t)
        _, min_variance = _numpy_posterior(schedule, x0, x_t, np.maximum(t, 1))
        fraction = (output[..., channels:] + 1) / 2
        p_log_variance = (fraction * np.log(_col(schedule.betas, t, x0.ndim))
                          + (1 - fraction) * np.log(min_variance))
        p_variance = np.exp(p_log_variance)
        kl = 0.5 * (p_log_variance - np.log(min_variance) - 1 + q_variance / p_variance
                    + (q_mean - p_mean) ** 2 / p_variance)
        nll = 0.5 * (np.log(2 * np.pi) + p_log_variance + (x0 - p_mean) ** 2 / p_variance)
        at_start = (np.asarray(t) == 0).reshape((-1,) + (1,) * (x0.ndim - 1))
        vlb = np.where(at_start, nll, kl).mean(axes) / np.log(2)
    weights = np.ones(len(t)) if mask is None else np.asarray(mask, np.float64)
    mean = lambda values: (weights * values).sum() / weights.sum()
    return mean(mse + vlb), mean(mse), mean(vlb)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_diffusion_loss_is_zero_for_the_true_target(prediction):
    x0 = jnp.asarray(_normal(12, 16, 4, 4, 3))

    def oracle(x_t, t):
        alpha_bar = SCHEDULE.alphas_cumprod[t][:, None, None, None]
        noise = (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1 - alpha_bar)
        return {"eps": noise, "x0": x0,
                "v": jnp.sqrt(alpha_bar) * noise - jnp.sqrt(1 - alpha_bar) * x0}[prediction]

    loss, metrics = gaussian.diffusion_loss(SCHEDULE, oracle, x0, jax.random.key(0),
                                            prediction=prediction)
    assert loss < 1e-7 and metrics["mse"] == loss


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_diffusion_loss_matches_hand_computation(prediction, learn_sigma):
    x0 = jnp.asarray(_normal(13, 32, 2, 2, 3))
    calls = []
    loss, metrics = gaussian.diffusion_loss(SMALL, _recording_model(0.3, learn_sigma, calls), x0,
                                            jax.random.key(1), prediction=prediction,
                                            learn_sigma=learn_sigma)
    (x_t, t), = calls
    assert t.dtype == np.int32 and 0 in t and np.any(t > 0)   # both the NLL and the KL branch
    output = np.asarray(_recording_model(0.3, learn_sigma, [])(jnp.asarray(x_t, jnp.float32), t),
                        np.float64)
    expected_loss, expected_mse, expected_vlb = _numpy_loss(SMALL, x0, x_t, t, output, prediction,
                                                            learn_sigma, None)
    assert set(metrics) == ({"loss", "mse", "vlb"} if learn_sigma else {"loss", "mse"})
    for value in [loss, *metrics.values()]:
        assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-4)
    np.testing.assert_allclose(metrics["mse"], expected_mse, rtol=1e-4)
    if learn_sigma:
        np.testing.assert_allclose(metrics["vlb"], expected_vlb, rtol=1e-4)


def test_vlb_trains_only_sigma_and_mse_only_the_prediction():
    x0 = jnp.asarray(_normal(14, 32, 2, 2, 3))

    def metric(params, name):
        model_fn = lambda x_t, t: jnp.concatenate([params[0] * x_t, params[1] * jnp.tanh(x_t)], -1)
        return gaussian.diffusion_loss(SMALL, model_fn, x0, jax.random.key(2), prediction="eps",
                                       learn_sigma=True)[1][name]

    params = jnp.array([0.3, 0.5])
    vlb_grad = jax.grad(metric)(params, "vlb")
    mse_grad = jax.grad(metric)(params, "mse")
    assert vlb_grad[0] == 0 and vlb_grad[1] != 0
    assert mse_grad[0] != 0 and mse_grad[1] == 0


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_masked_examples_are_ignored(learn_sigma):
    x0 = _normal(15, 32, 2, 2, 3)
    mask = np.tile([1.0, 0.0], 16).astype(np.float32)
    garbage = np.where(mask[:, None, None, None] > 0, x0, 50 * x0 + 7)

    def loss_and_grad(data, calls):
        def loss(scale):
            return gaussian.diffusion_loss(SMALL, _recording_model(scale, learn_sigma, calls),
                                           jnp.asarray(data), jax.random.key(3), prediction="v",
                                           learn_sigma=learn_sigma, mask=jnp.asarray(mask))[0]
        return loss(0.3), jax.grad(loss)(0.3)

    calls = []
    loss, grad = loss_and_grad(x0, calls)
    garbage_loss, garbage_grad = loss_and_grad(garbage, [])
    np.testing.assert_allclose(garbage_loss, loss, rtol=1e-6)
    np.testing.assert_allclose(garbage_grad, grad, rtol=1e-6)
    x_t, t = calls[0]
    output = np.asarray(_recording_model(0.3, learn_sigma, [])(jnp.asarray(x_t, jnp.float32), t),
                        np.float64)
    expected, _, _ = _numpy_loss(SMALL, x0, x_t, t, output, "v", learn_sigma, mask)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weight_gives_every_target_the_same_loss_for_the_same_x0_error(gamma):
    """Weighted MSE of ε, v and x_0 predictions that imply the same x̂_0 equals min(SNR, γ)·‖x̂_0 − x_0‖²
    (float64 SNR from the βs)."""
    t = jnp.array([0, 10, 100, 300, 600, 999])
    x0, noise = _normal(0, 6, 4, 4, 2), _normal(1, 6, 4, 4, 2)
    x0_hat = x0 + 0.3 * _normal(2, 6, 4, 4, 2)
    alpha_bar, _ = _alpha_bar(SCHEDULE)
    a = _col(alpha_bar, t, 4)
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    eps_hat = (x_t - np.sqrt(a) * x0_hat) / np.sqrt(1 - a)   # what an ε-model implying x̂_0 outputs
    outputs = dict(x0=x0_hat, eps=eps_hat, v=np.sqrt(a) * eps_hat - np.sqrt(1 - a) * x0_hat)
    snr = alpha_bar[np.asarray(t)] / (1 - alpha_bar[np.asarray(t)])
    expected = np.minimum(snr, gamma) * np.mean((x0_hat - x0) ** 2, axis=(1, 2, 3))
    for prediction, output in outputs.items():
        target = np.asarray(gaussian.training_target(SCHEDULE, x0, noise, t, prediction), np.float64)
        mse = np.mean((output - target) ** 2, axis=(1, 2, 3))
        weighted = np.asarray(gaussian.min_snr_weight(SCHEDULE, t, prediction, gamma)) * mse
        np.testing.assert_allclose(weighted, expected, rtol=2e-3, err_msg=prediction)


def test_diffusion_loss_applies_the_min_snr_weight_but_reports_the_plain_mse():
    x0, noise = _normal(3, 4, 2, 2, 1), _normal(4, 4, 2, 2, 1)
    t = jnp.array([1, 50, 500, 900])
    model_fn = lambda x_t, t: 0.5 * x_t
    plain, plain_metrics = gaussian.diffusion_loss(SCHEDULE, model_fn, x0, None, t=t, noise=noise)
    weighted, metrics = gaussian.diffusion_loss(SCHEDULE, model_fn, x0, None, t=t, noise=noise, min_snr_gamma=5.0)
    target = gaussian.training_target(SCHEDULE, x0, noise, t, "v")
    mse = np.mean((0.5 * np.asarray(gaussian.q_sample(SCHEDULE, x0, t, noise)) - np.asarray(target)) ** 2,
                  axis=(1, 2, 3))
    weight = np.asarray(gaussian.min_snr_weight(SCHEDULE, t, "v", 5.0))
    np.testing.assert_allclose(plain, mse.mean(), rtol=1e-5)
    np.testing.assert_allclose(weighted, (weight * mse).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["mse"], plain_metrics["mse"], rtol=1e-6)
    assert abs(float(weighted) - float(plain)) > 1e-3
