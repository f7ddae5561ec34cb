"""Training of a VQGAN tokenizer: the VQ-VAE objective plus LPIPS and a PatchGAN/StyleGAN adversary.

One jitted, sharded step updates both players from the same state: the generator (autoencoder +
quantizer) against the discriminator's current params, then the discriminator on real images against the
generator's current (stop-gradient) reconstructions. Neither half sees the other's update.

Generator loss = reconstruction (mse | l1) + perceptual_weight · LPIPS + quantizer loss
                 (+ entropy_weight · codebook entropy) + factor · adversarial_weight · λ · g_loss,
λ = ‖∇_W L_rec‖ / (‖∇_W g_loss‖ + eps) with W the decoder's last conv kernel (Esser et al. 2021), and
factor = 1 from `config.gan.start_step` on, 0 before. Before the start the generator gets no adversarial
term, and the discriminator, its optimizer state and the logit EMAs keep their exact values. The loop runs
those steps with a second compiled step that leaves the discriminator out altogether (the VQ-VAE's cost,
plus LPIPS when perceptual_weight > 0); the full step also gates by the step number (with jnp.where:
XLA:CPU ran a lax.cond branch holding the adversarial half 4× slower than the same ops outside it), so
either step is correct at any step. perceptual_weight 0 skips LPIPS.
λ needs no second backward pass: the autoencoder is differentiated once with jax.vjp, the two loss
gradients are taken with respect to the reconstruction, and each is pulled back through the vjp keeping
only the kernel's cotangent, which XLA reduces to the last layer's kernel gradient (dead-code elimination).
"""
import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax

from vqdiff import compiler_options
from vqdiff.eval.image_metrics import crop_padding, psnr, to_unit_range
from vqdiff.losses import gan
from vqdiff.models.discriminator import build_discriminator
from vqdiff.models.lpips import make_lpips_fn
from vqdiff.models.quantizer import squared_distances
from vqdiff.train import loop, sharding
from vqdiff.train.optimizer import decay_mask, learning_rate_schedule
from vqdiff.train.state import TrainState, ema_update, skip_if_nonfinite, step_rng
from vqdiff.train.tokenizer_trainer import (Trainer, init_state, input_shape, masked_mean,
                                            reconstruction_error, run_training)
from vqdiff.train.validation import validate_vqgan_config


@flax.struct.dataclass
class GANTrainState(TrainState):
    """TrainState of the generator, plus disc_params and disc_opt_state of the discriminator and
    logit_ema {'real', 'fake'}: float32 running means of its logits (LeCam's anchors)."""
    disc_params: object
    disc_opt_state: object
    logit_ema: object

    def as_dict(self) -> dict:
        return dict(super().as_dict(), disc_params=self.disc_params, disc_opt_state=self.disc_opt_state,
                    logit_ema=self.logit_ema)


def discriminator_optimizer(gan_config) -> optax.GradientTransformation:
    """clip → AdamW at the constant `config.gan.learning_rate` (weight decay on kernels only)."""
    return optax.chain(
        optax.clip_by_global_norm(gan_config.grad_clip_norm),
        optax.adamw(gan_config.learning_rate, b1=gan_config.adam_b1, b2=gan_config.adam_b2,
                    weight_decay=gan_config.weight_decay, mask=decay_mask))


def init_gan_state(config, model, tx, discriminator, disc_tx) -> GANTrainState:
    """The tokenizer's fresh state plus fresh discriminator params, optimizer state and logit EMAs."""
    generator = init_state(config, model, tx)
    disc_params = discriminator.init(jax.random.key(config.seed + 2),
                                     jnp.zeros(input_shape(config), jnp.float32))["params"]
    zero = jnp.zeros((), jnp.float32)
    return GANTrainState(**generator.as_dict(), disc_params=disc_params, disc_opt_state=disc_tx.init(disc_params),
                         logit_ema=dict(real=zero, fake=zero))


def autoencode(module, images, *, mask, with_distances: bool):
    """images [B, H, W, C] → (reconstructions [B, H, W, C], quantizer aux, distances [N, K] | None):
    the VQAutoencoder forward pass, also returning each latent's squared distances to the codes (read
    before the EMA codebook moves) for the entropy loss."""
    z = module.encode(images, train=True)
    distances = None
    if with_distances:
        quantizer = module.quantizer
        distances = squared_distances(quantizer._lookup_encodings(z.reshape(-1, z.shape[-1])),
                                      quantizer._lookup_codebook())
    z_q, aux = module.quantize(z, train=True, mask=mask)
    return module.decode(z_q, train=True), aux, distances


def discriminator_metric_names(gan_config) -> tuple[str, ...]:
    """The discriminator's metrics of a train step, as `discriminator_update` returns them."""
    return (("discriminator_loss", "logits_real", "logits_fake", "discriminator_grad_norm")
            + (("r1_penalty",) if gan_config.r1_weight > 0 else ())
            + (("lecam_loss",) if gan_config.lecam_weight > 0 else ()))


def discriminator_update(state: GANTrainState, images, fake, adversarial, *, disc_apply, d_loss_fn, disc_tx,
                         gan_config):
    """One discriminator update on real `images` and generated `fake` (both [B, H, W, C]) from the old
    state → (disc_params, disc_opt_state, logit_ema, metrics); the old values where `adversarial` is False."""
    g = gan_config

    def discriminator_loss(disc_params):
        logits_real, logits_fake = disc_apply(disc_params, images), disc_apply(disc_params, fake)
        d_loss = d_loss_fn(logits_real, logits_fake)
        terms = dict(discriminator_loss=d_loss)
        if g.r1_weight > 0:
            terms["r1_penalty"] = gan.r1_penalty(functools.partial(disc_apply, disc_params), images)
            d_loss = d_loss + 0.5 * g.r1_weight * terms["r1_penalty"]
        if g.lecam_weight > 0:
            terms["lecam_loss"] = gan.lecam_regularizer(logits_real, logits_fake, state.logit_ema["real"],
                                                        state.logit_ema["fake"])
            d_loss = d_loss + g.lecam_weight * terms["lecam_loss"]
        return d_loss, (terms, logits_real, logits_fake)

    (_, (d_terms, logits_real, logits_fake)), d_grads = jax.value_and_grad(
        discriminator_loss, has_aux=True)(state.disc_params)
    d_updates, disc_opt_state = disc_tx.update(d_grads, state.disc_opt_state, state.disc_params)
    ema_real, ema_fake = gan.lecam_ema_update(state.logit_ema["real"], state.logit_ema["fake"], logits_real,
                                              logits_fake, decay=g.lecam_decay)
    # Before the start the discriminator, its Adam moments and the logit EMAs keep their exact values.
    disc_params, disc_opt_state, logit_ema = jax.tree_util.tree_map(
        lambda new, old: jnp.where(adversarial, new, old),
        (optax.apply_updates(state.disc_params, d_updates), disc_opt_state, dict(real=ema_real, fake=ema_fake)),
        (state.disc_params, state.disc_opt_state, state.logit_ema))
    d_terms.update(logits_real=jnp.mean(logits_real), logits_fake=jnp.mean(logits_fake),
                   discriminator_grad_norm=optax.tree.norm(d_grads))
    return disc_params, disc_opt_state, logit_ema, d_terms


def train_step(state: GANTrainState, batch: dict, *, model, discriminator, tx, disc_tx, lpips_fn, config,
               with_discriminator: bool = True):
    """One generator and one discriminator update on {'image': [B, H, W, C], 'mask': [B]} → (state, metrics).

    The adversarial terms average over the whole batch (training batches carry no padding).
    with_discriminator=False: the step of a state before `config.gan.start_step`, without computing the
    discriminator at all (its params, optimizer state and logit EMAs are passed through; its metrics are 0).
    """
    g = config.gan
    d_loss_fn, g_loss_fn = gan.gan_losses(g.loss)
    images, mask = batch["image"], batch["mask"]
    rng_quantizer, rng_dropout = jax.random.split(step_rng(config.seed, state.step))
    mutable = list(state.model_state.keys())
    factor = gan.discriminator_factor(state.step, g.start_step)
    adversarial = factor > 0
    disc_apply = lambda params, x: discriminator.apply({"params": params}, x)

    def generator_forward(params):
        outputs, new_model_state = model.apply(
            {"params": params, **state.model_state}, images, mask=mask, with_distances=g.entropy_weight > 0,
            method=autoencode, mutable=mutable, rngs={"quantizer": rng_quantizer, "dropout": rng_dropout})
        recon, aux, distances = outputs
        quantizer_loss = aux["loss"]
        entropy = gan.codebook_entropy_loss(distances, g.entropy_temperature) if g.entropy_weight > 0 else 0.0
        return (recon, quantizer_loss + g.entropy_weight * entropy), (aux, entropy, new_model_state)

    (recon, latent_loss), generator_vjp, (aux, entropy, new_model_state) = jax.vjp(
        generator_forward, state.params, has_aux=True)

    def reconstruction_loss(x):
        pixel = masked_mean(reconstruction_error(x, images, config.train.reconstruction_loss), mask)
        perceptual = masked_mean(lpips_fn(x, images), mask) if g.perceptual_weight > 0 else jnp.zeros(())
        return pixel + g.perceptual_weight * perceptual, (pixel, perceptual)

    (rec_loss, (pixel_loss, perceptual_loss)), rec_cotangent = jax.value_and_grad(
        reconstruction_loss, has_aux=True)(recon)

    def last_kernel_grad(cotangent):
        """∂L/∂W of the decoder's last conv kernel, for a loss L whose gradient w.r.t. recon is `cotangent`."""
        return generator_vjp((cotangent, jnp.zeros_like(latent_loss)))[0]["decoder"]["conv_out"]["kernel"]

    if with_discriminator:
        g_loss, g_cotangent = jax.value_and_grad(lambda x: g_loss_fn(disc_apply(state.disc_params, x)))(recon)
        adaptive_weight = gan.adaptive_generator_weight(
            last_kernel_grad(rec_cotangent), last_kernel_grad(g_cotangent), max_weight=g.adaptive_weight_max,
            eps=g.adaptive_weight_eps)
        # where, not factor · x: a non-finite value of the idle discriminator must not leak in before the start.
        g_loss, g_cotangent, g_scale = (jnp.where(adversarial, x, 0.0) for x in (
            g_loss, g_cotangent, factor * g.adversarial_weight * adaptive_weight))
        cotangent = rec_cotangent + g_scale * g_cotangent
    else:
        g_loss = adaptive_weight = g_scale = jnp.zeros((), jnp.float32)
        cotangent = rec_cotangent
    (grads,) = generator_vjp((cotangent, jnp.ones_like(latent_loss)))
    loss = rec_loss + latent_loss + g_scale * g_loss
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if with_discriminator:
        disc_params, disc_opt_state, logit_ema, d_terms = discriminator_update(
            state, images, jax.lax.stop_gradient(recon), adversarial, disc_apply=disc_apply,
            d_loss_fn=d_loss_fn, disc_tx=disc_tx, gan_config=g)
    else:
        disc_params, disc_opt_state, logit_ema = state.disc_params, state.disc_opt_state, state.logit_ema
        d_terms = dict.fromkeys(discriminator_metric_names(g), jnp.zeros((), jnp.float32))

    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params, config.train.ema_decay),
        model_state={**state.model_state, **new_model_state},
        disc_params=disc_params, disc_opt_state=disc_opt_state, logit_ema=logit_ema)
    generator_grad_norm = optax.tree.norm(grads)
    # One norm over both players, so that the loop's non-finite check also catches a diverging discriminator.
    d_grad_norm = jnp.where(adversarial, d_terms["discriminator_grad_norm"], 0.0)
    grad_norm = jnp.sqrt(jnp.square(generator_grad_norm) + jnp.square(d_grad_norm))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if config.train.skip_nonfinite:
        new_state = skip_if_nonfinite(state, new_state, finite)
    metrics = dict(
        loss=loss, reconstruction_loss=pixel_loss, perceptual_loss=perceptual_loss,
        codebook_loss=aux["codebook_loss"], commitment_loss=aux["commitment_loss"],
        generator_adversarial_loss=g_loss, adaptive_weight=adaptive_weight, discriminator_factor=factor,
        perplexity=aux["perplexity"], codes_used=aux["codes_used"], grad_norm=grad_norm,
        generator_grad_norm=generator_grad_norm, skipped_steps=new_state.skipped_steps,
        learning_rate=learning_rate_schedule(config.train)(state.step),
        psnr=masked_mean(psnr(*(to_unit_range(crop_padding(x, config.data.image_size, config.data.pad_to))
                                for x in (recon, images))), mask),
        **d_terms)
    if g.entropy_weight > 0:
        metrics["entropy_loss"] = entropy
    return new_state, jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), metrics)


class VQGANTrainer(Trainer):
    """The tokenizer Trainer with a GANTrainState: discriminator, its optimizer, and the GAN step.
    LPIPS weights load once, on the first `compiled_train_step()`, so eval and the DiT's frozen tokenizer
    (which only restore) never need them."""

    state_class = GANTrainState
    progress_keys = ("loss", "reconstruction_loss", "perceptual_loss", "psnr", "adaptive_weight",
                     "logits_real", "logits_fake", "perplexity", "skipped_steps")

    def __init__(self, config, devices=None):
        self.discriminator = build_discriminator(config.gan.disc.to_dict())
        self.disc_tx = discriminator_optimizer(config.gan)
        super().__init__(config, devices)

    def make_init(self):
        return functools.partial(init_gan_state, self.config, self.model, self.tx, self.discriminator,
                                 self.disc_tx)

    @functools.cached_property
    def lpips_fn(self):
        """LPIPS with its pretrained weights (loaded once, on first use), or None when perceptual_weight is 0."""
        g = self.config.gan
        return make_lpips_fn(g.lpips_backbone) if g.perceptual_weight > 0 else None

    def compiled_train_step(self, with_discriminator: bool = True):
        """The jitted train_step (with_discriminator=False: the cheaper step for states before the start)."""
        step = functools.partial(train_step, model=self.model, discriminator=self.discriminator, tx=self.tx,
                                 disc_tx=self.disc_tx, config=self.config, with_discriminator=with_discriminator,
                                 lpips_fn=self.lpips_fn)
        return compiler_options.jit(step, "convolutional", in_shardings=(self.state_shardings, self.batch_sharding),
                                    out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                                    donate_argnums=(0,))

    def compiled_train_phases(self):
        """[(first step, update)]: the step without the discriminator before `config.gan.start_step`, the
        full step from there on (jit compiles each on its first call, so a resumed run skips the first)."""
        start = self.config.gan.start_step
        full = (start, self.compiled_train_step())
        return [(0, self.compiled_train_step(with_discriminator=False)), full] if start > 0 else [full]


def tokenizer_trainer(config, devices=None) -> Trainer:
    """The trainer whose state layout a `config.trainer` ('tokenizer' | 'vqgan') run checkpoints."""
    return (VQGANTrainer if config.trainer == "vqgan" else Trainer)(config, devices)


def train(config, workdir: str):
    """Trains (or resumes) the VQGAN of `config` in `workdir`; returns the last step's metrics."""
    validate_vqgan_config(config)
    return loop.train_in_workdir(config, workdir, lambda: run_training(config, workdir, VQGANTrainer))
