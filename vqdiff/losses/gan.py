"""Adversarial losses and regularisers for VQGAN training, as pure functions on logits and gradients.

Logits may have any shape (PatchGAN [B, h, w, 1], per-image [B]); means run over all their elements,
and every loss is a float32 scalar. The discriminator losses average their real and fake halves (the
0.5 of taming-transformers). The perceptual term is `vqdiff.models.lpips.make_lpips_fn`.

References: Lim & Ye 2017 (hinge), Goodfellow et al. 2014 (non-saturating), Mescheder et al. 2018 (R1),
Tseng et al. 2021 (LeCam), Esser et al. 2021 (adaptive weight, discriminator start),
Chang et al. 2022 (MaskGIT codebook entropy).
"""
from typing import Callable

import jax
import jax.numpy as jnp

LOSS_KINDS = ("hinge", "non_saturating")


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def hinge_d_loss(logits_real, logits_fake):
    """0.5 · (mean relu(1 − D(x)) + mean relu(1 + D(G(z))))."""
    real = jnp.mean(jax.nn.relu(1.0 - _f32(logits_real)))
    return 0.5 * (real + jnp.mean(jax.nn.relu(1.0 + _f32(logits_fake))))


def hinge_g_loss(logits_fake):
    """−mean D(G(z))."""
    return -jnp.mean(_f32(logits_fake))


def non_saturating_d_loss(logits_real, logits_fake):
    """0.5 · (mean softplus(−D(x)) + mean softplus(D(G(z)))): the logistic loss, real = 1, fake = 0."""
    real = jnp.mean(jax.nn.softplus(-_f32(logits_real)))
    return 0.5 * (real + jnp.mean(jax.nn.softplus(_f32(logits_fake))))


def non_saturating_g_loss(logits_fake):
    """mean softplus(−D(G(z))) = −mean log sigmoid(D(G(z)))."""
    return jnp.mean(jax.nn.softplus(-_f32(logits_fake)))


def gan_losses(kind: str) -> tuple[Callable, Callable]:
    """(d_loss(logits_real, logits_fake), g_loss(logits_fake)) for 'hinge' | 'non_saturating'."""
    if kind == "hinge":
        return hinge_d_loss, hinge_g_loss
    if kind == "non_saturating":
        return non_saturating_d_loss, non_saturating_g_loss
    raise ValueError(f"GAN loss kind={kind!r}: use one of {', '.join(LOSS_KINDS)}")


def r1_penalty(disc_apply_fn: Callable, images):
    """mean_b ‖∇_x Σ D(x)_b‖²: the squared norm of each example's input gradient, averaged over the batch.

    disc_apply_fn: images [B, H, W, C] -> logits [B, ...] (close over the discriminator params to
    differentiate the penalty with respect to them). Scale by γ/2 outside. The per-example split is exact
    when an example's logits depend on its image alone (no minibatch stddev).
    """
    images = _f32(images)
    grads = jax.grad(lambda x: jnp.sum(_f32(disc_apply_fn(x))))(images)
    return jnp.mean(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1))


def lecam_regularizer(logits_real, logits_fake, ema_real, ema_fake):
    """mean relu(D(x) − ema_fake)² + mean relu(ema_real − D(G(z)))², the EMAs held constant.

    ema_real, ema_fake: scalars, running means of the discriminator's real and fake logits.
    """
    ema_real, ema_fake = jax.lax.stop_gradient(_f32(ema_real)), jax.lax.stop_gradient(_f32(ema_fake))
    return (jnp.mean(jnp.square(jax.nn.relu(_f32(logits_real) - ema_fake)))
            + jnp.mean(jnp.square(jax.nn.relu(ema_real - _f32(logits_fake)))))


def lecam_ema_update(ema_real, ema_fake, logits_real, logits_fake, *, decay: float = 0.99):
    """(ema_real, ema_fake) moved towards the mean logits: ema ← decay · ema + (1 − decay) · mean(logits)."""
    mean_real = jax.lax.stop_gradient(jnp.mean(_f32(logits_real)))
    mean_fake = jax.lax.stop_gradient(jnp.mean(_f32(logits_fake)))
    return (decay * _f32(ema_real) + (1.0 - decay) * mean_real,
            decay * _f32(ema_fake) + (1.0 - decay) * mean_fake)


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(_f32(leaf))) for leaf in jax.tree.leaves(tree)))


def adaptive_generator_weight(rec_grads, gan_grads, *, max_weight: float = 1e4, eps: float = 1e-4):
    """λ = clip(‖∇L_rec‖ / (‖∇L_G‖ + eps), 0, max_weight), with no gradient through it.

    rec_grads, gan_grads: gradients of the reconstruction (+ perceptual) loss and of the generator's
    adversarial loss with respect to the decoder's last layer (taming: its kernel), as arrays or pytrees
    of one structure; the norms are global over all leaves. Multiply by the GAN weight and the
    discriminator factor outside.
    """
    ratio = _global_norm(rec_grads) / (_global_norm(gan_grads) + eps)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))


def discriminator_factor(step, start_step):
    """1.0 from `start_step` on, 0.0 before it (float32; `step` may be traced)."""
    return jnp.where(jnp.asarray(step) >= start_step, 1.0, 0.0).astype(jnp.float32)


def codebook_entropy_loss(distances, temperature: float = 1.0):
    """mean_n H(p_n) − H(mean_n p_n), with p_n = softmax(−distances_n / temperature) over the K codes.

    distances: [..., K] (e.g. squared distances to each code); all leading axes are positions. The first
    term rewards confident assignments, the second spread usage. Entropy is concave, so the loss lies in
    [−log K, 0]: −log K for one-hot assignments spread evenly over the codes, 0 whenever every position has
    the same distribution (all confidently on one code, or all uniform).
    """
    logits = -_f32(distances) / temperature
    log_probs = jax.nn.log_softmax(logits.reshape(-1, logits.shape[-1]), axis=-1)
    per_position = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    # log of the mean distribution, computed in log space so that rare codes stay finite.
    log_mean = jax.nn.logsumexp(log_probs, axis=0) - jnp.log(log_probs.shape[0])
    return jnp.mean(per_position) - (-jnp.sum(jnp.exp(log_mean) * log_mean))
