"""Tests for vqdiff/losses/gan.py against numpy closed forms and hand-computed gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff.losses import gan


def _normal(seed, *shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _softplus(x):
    return np.logaddexp(0.0, x.astype(np.float64))


def _entropy(p):
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


LOGITS_REAL = _normal(0, 3, 4, 4, 1, scale=2.0)
LOGITS_FAKE = _normal(1, 3, 4, 4, 1, scale=2.0)


def test_hinge_losses_match_closed_form():
    real, fake = LOGITS_REAL.astype(np.float64), LOGITS_FAKE.astype(np.float64)
    expected_d = 0.5 * (np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean())
    np.testing.assert_allclose(jax.jit(gan.hinge_d_loss)(LOGITS_REAL, LOGITS_FAKE), expected_d, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(gan.hinge_g_loss)(LOGITS_FAKE), -fake.mean(), rtol=1e-6)
    # Past the margins the discriminator loss is exactly zero.
    assert float(jax.jit(gan.hinge_d_loss)(jnp.full(5, 1.5), jnp.full(5, -2.0))) == 0.0


def test_non_saturating_losses_match_closed_form():
    expected_d = 0.5 * (_softplus(-LOGITS_REAL).mean() + _softplus(LOGITS_FAKE).mean())
    d_loss = jax.jit(gan.non_saturating_d_loss)(LOGITS_REAL, LOGITS_FAKE)
    np.testing.assert_allclose(d_loss, expected_d, rtol=1e-6)
    expected_g = -np.log(1.0 / (1.0 + np.exp(-LOGITS_FAKE.astype(np.float64)))).mean()
    np.testing.assert_allclose(jax.jit(gan.non_saturating_g_loss)(LOGITS_FAKE), expected_g, rtol=1e-6)
    # At logits 0 both halves are log 2.
    at_zero = jax.jit(gan.non_saturating_d_loss)(jnp.zeros(3), jnp.zeros(3))
    np.testing.assert_allclose(at_zero, np.log(2.0), rtol=1e-6)


def test_non_saturating_losses_stay_finite_for_extreme_logits():
    extreme = jnp.array([-1e4, 1e4], jnp.float32)
    np.testing.assert_allclose(jax.jit(gan.non_saturating_g_loss)(extreme), 1e4 / 2, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(gan.non_saturating_d_loss)(extreme, extreme), 1e4 / 2, rtol=1e-6)


def test_gan_losses_picks_pair_and_rejects_unknown_kind():
    assert gan.gan_losses("hinge") == (gan.hinge_d_loss, gan.hinge_g_loss)
    assert gan.gan_losses("non_saturating") == (gan.non_saturating_d_loss, gan.non_saturating_g_loss)
    with pytest.raises(ValueError, match="wasserstein.*hinge, non_saturating"):
        gan.gan_losses("wasserstein")


def test_r1_of_linear_discriminator_is_squared_weight_norm():
    w = _normal(2, 4, 4, 3)
    images = _normal(3, 5, 4, 4, 3)
    penalty = jax.jit(lambda x: gan.r1_penalty(lambda y: jnp.sum(y * w, axis=(1, 2, 3)), x))(images)
    np.testing.assert_allclose(penalty, np.sum(w.astype(np.float64) ** 2), rtol=1e-5)


def test_r1_squares_each_example_gradient_then_averages():
    # D(x)_b = 0.5 Σ a x_b², so ∇_x D = a x_b per example and the penalty is mean_b ‖a x_b‖².
    a = _normal(4, 2, 2, 1)
    images = _normal(5, 3, 2, 2, 1)
    penalty = jax.jit(lambda x: gan.r1_penalty(lambda y: 0.5 * jnp.sum(a * y**2, axis=(1, 2, 3)), x))(images)
    expected = np.mean(np.sum((a * images).astype(np.float64) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)


def test_r1_is_differentiable_in_discriminator_params():
    # R1 = ‖w‖² for D(x) = ⟨w, x⟩, so its gradient in w is 2w.
    w = _normal(6, 2, 2, 1)
    images = _normal(7, 3, 2, 2, 1)
    grad = jax.jit(jax.grad(lambda w: gan.r1_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3)), images)))(w)
    np.testing.assert_allclose(grad, 2 * w, rtol=1e-5)


def test_lecam_regularizer_and_ema_match_numpy():
    ema_real, ema_fake = 0.3, -0.2
    real, fake = LOGITS_REAL.astype(np.float64), LOGITS_FAKE.astype(np.float64)
    expected = (np.maximum(0, real - ema_fake) ** 2).mean() + (np.maximum(0, ema_real - fake) ** 2).mean()
    np.testing.assert_allclose(
        jax.jit(gan.lecam_regularizer)(LOGITS_REAL, LOGITS_FAKE, ema_real, ema_fake), expected, rtol=1e-5)
    new_real, new_fake = jax.jit(functools.partial(gan.lecam_ema_update, decay=0.9))(
        ema_real, ema_fake, LOGITS_REAL, LOGITS_FAKE)
    np.testing.assert_allclose(new_real, 0.9 * ema_real + 0.1 * real.mean(), rtol=1e-5)
    np.testing.assert_allclose(new_fake, 0.9 * ema_fake + 0.1 * fake.mean(), rtol=1e-5)


def test_lecam_is_zero_when_real_logits_below_fake_ema_and_fake_above_real_ema():
    assert float(jax.jit(gan.lecam_regularizer)(jnp.full(4, -1.0), jnp.full(4, 2.0), 1.0, 0.0)) == 0.0


def test_adaptive_weight_is_ratio_of_hand_computed_gradient_norms():
    # Decoder last layer y = h W + b; L_rec = mean (y − t)², L_G = −mean(v ⊙ y) (a linear critic).
    h, w, b = _normal(8, 6, 4), _normal(9, 4, 3), _normal(10, 3)
    target, v = _normal(11, 6, 3), _normal(12, 6, 3)
    params = {"kernel": w, "bias": b}

    def rec_loss(p):
        return jnp.mean((h @ p["kernel"] + p["bias"] - target) ** 2)

    def gan_loss(p):
        return -jnp.mean(v * (h @ p["kernel"] + p["bias"]))

    h64, y64 = h.astype(np.float64), h.astype(np.float64) @ w + b
    n = y64.size
    rec_kernel = h64.T @ (2 * (y64 - target) / n)
    gan_kernel = h64.T @ (-v / n)
    rec_bias, gan_bias = (2 * (y64 - target) / n).sum(0), (-v / n).sum(0)

    @jax.jit
    def weights(p):
        rec_grads, gan_grads = jax.grad(rec_loss)(p), jax.grad(gan_loss)(p)
        return (gan.adaptive_generator_weight(rec_grads["kernel"], gan_grads["kernel"]),
                gan.adaptive_generator_weight(rec_grads, gan_grads))

    kernel_only, whole_tree = weights(params)
    expected = np.linalg.norm(rec_kernel) / (np.linalg.norm(gan_kernel) + 1e-4)
    np.testing.assert_allclose(kernel_only, expected, rtol=1e-5)
    rec_norm = np.sqrt(np.sum(rec_kernel**2) + np.sum(rec_bias**2))
    gan_norm = np.sqrt(np.sum(gan_kernel**2) + np.sum(gan_bias**2))
    np.testing.assert_allclose(whole_tree, rec_norm / (gan_norm + 1e-4), rtol=1e-5)


def test_adaptive_weight_is_clipped_and_uses_eps():
    @jax.jit
    def weights(rec, gan_grads):
        return (gan.adaptive_generator_weight(rec, jnp.zeros(2), eps=1e-2),
                gan.adaptive_generator_weight(rec, jnp.zeros(2)),
                gan.adaptive_generator_weight(rec, gan_grads, max_weight=7.0))

    # ‖(3, 4)‖ = 5: 5 / 0.01 = 500 unclipped, 5 / 1e-4 clipped to 1e4, 5 / 0.1 clipped to 7.
    np.testing.assert_allclose(weights(jnp.array([3.0, 4.0]), jnp.array([0.1, 0.0])), [500.0, 1e4, 7.0],
                               rtol=1e-6)


def test_adaptive_weight_passes_no_gradient():
    grads = jax.jit(jax.grad(gan.adaptive_generator_weight, argnums=(0, 1)))(
        jnp.array([1.0, 2.0]), jnp.array([0.5, 0.5]))
    for grad in grads:
        np.testing.assert_array_equal(grad, 0.0)


def test_discriminator_factor_before_at_and_after_start():
    factor = jax.jit(gan.discriminator_factor)
    steps = jnp.array([0, 9, 10, 11], jnp.int32)
    np.testing.assert_array_equal(factor(steps, 10), [0.0, 0.0, 1.0, 1.0])
    assert factor(jnp.int32(0), 0).dtype == jnp.float32 and float(factor(jnp.int32(0), 0)) == 1.0


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_codebook_entropy_loss_matches_numpy(temperature):
    distances = _normal(13, 2, 3, 5, scale=2.0) ** 2
    logits = -distances.reshape(-1, 5).astype(np.float64) / temperature
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = _entropy(probs).mean() - _entropy(probs.mean(0))
    loss = jax.jit(gan.codebook_entropy_loss, static_argnums=1)(distances, temperature)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_codebook_entropy_loss_extremes():
    num_codes = 4
    far = 1e3 * (1.0 - np.eye(num_codes, dtype=np.float32))  # position i sits on code i % K
    confident_uniform = np.concatenate([far, far])
    all_on_one = np.tile(far[:1], (8, 1))
    undecided = np.zeros((8, num_codes), np.float32)
    cases = np.stack([confident_uniform, all_on_one, undecided])
    losses = jax.jit(jax.vmap(gan.codebook_entropy_loss))(cases)
    np.testing.assert_allclose(losses, [-np.log(num_codes), 0.0, 0.0], atol=1e-5)


def test_codebook_entropy_loss_gradient_is_finite_for_unused_codes():
    distances = jnp.asarray(np.tile(1e3 * (1.0 - np.eye(3, dtype=np.float32))[:1], (4, 1)))
    grad = jax.jit(jax.grad(gan.codebook_entropy_loss))(distances)
    assert np.all(np.isfinite(grad))
