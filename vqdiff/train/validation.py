"""Up-front checks of a config, before anything is compiled: each failure is one UserError that names
the key, the value and what to do."""
import math

import jax

from vqdiff.errors import UserError
from vqdiff.models.autoencoder import downsampling_factor
from vqdiff.train import sharding


def check(condition: bool, message: str):
    if not condition:
        raise UserError(message)


def validate_common(config):
    """Data, batch and mesh keys every trainer shares."""
    d, t = config.data, config.train
    check(d.channels in (1, 3), f"config.data.channels={d.channels}: use 1 (grayscale) or 3 (RGB)")
    check(d.image_size > 0, f"config.data.image_size={d.image_size} must be positive")
    check(not d.pad_to or d.pad_to >= d.image_size,
          f"config.data.pad_to={d.pad_to} is smaller than config.data.image_size={d.image_size}: "
          f"use 0 (no padding) or a size ≥ image_size")
    check(t.num_steps > 0, f"config.train.num_steps={t.num_steps} must be positive")
    check(t.batch_size > 0, f"config.train.batch_size={t.batch_size} must be positive")
    for key in ("log_every", "checkpoint_every", "grid_every", "keep_checkpoints"):
        check(t[key] > 0, f"config.train.{key}={t[key]} must be positive")
    check(t.learning_rate > 0, f"config.train.learning_rate={t.learning_rate} must be positive")
    check(t.batch_size % jax.process_count() == 0,
          f"config.train.batch_size={t.batch_size} is not divisible by the {jax.process_count()} processes")
    try:
        mesh = sharding.create_mesh(config.mesh)
    except ValueError as e:
        raise UserError(str(e)) from None
    unknown = [a for a in config.mesh.batch_axes if a not in mesh.shape]
    check(not unknown, f"config.mesh.batch_axes={tuple(config.mesh.batch_axes)} names axes {unknown} that "
                       f"config.mesh.axes={tuple(config.mesh.axes)} lacks")
    data_parallel = math.prod(mesh.shape[a] for a in config.mesh.batch_axes)
    check(t.batch_size % data_parallel == 0,
          f"config.train.batch_size={t.batch_size} is not divisible by the {data_parallel} devices of the "
          f"batch axes {tuple(config.mesh.batch_axes)}: use a multiple of {data_parallel}")
    accum = t.get("grad_accum_steps", 1)
    check(accum >= 1 and t.batch_size % (accum * data_parallel) == 0,
          f"config.train.grad_accum_steps={accum} must be ≥ 1 and split config.train.batch_size={t.batch_size} "
          f"into micro-batches that are multiples of the {data_parallel} data-parallel devices")


def validate_tokenizer_config(config):
    """Checks a tokenizer (VQ-VAE/VQGAN) config; raises UserError on the first problem."""
    validate_common(config)
    m, q, d = config.model, config.quantizer, config.data
    check(len(m.channel_multipliers) > 0, "config.model.channel_multipliers is empty: give one per level")
    check(m.space_to_depth >= 1, f"config.model.space_to_depth={m.space_to_depth} must be ≥ 1")
    factor = downsampling_factor(m)
    side = d.pad_to or d.image_size
    check(side % factor == 0,
          f"image side {side} (config.data.{'pad_to' if d.pad_to else 'image_size'}) is not divisible by "
          f"the downsampling factor {factor} (space_to_depth × 2^(levels−1)); pad with config.data.pad_to="
          f"{-(-side // factor) * factor}")
    check(m.channels % m.norm_groups == 0,
          f"config.model.channels={m.channels} is not divisible by config.model.norm_groups={m.norm_groups}")
    check(m.upsample in ("depth_to_space", "nearest"),
          f"config.model.upsample={m.upsample!r}: use 'depth_to_space' or 'nearest'")
    check(q.num_codes >= 2, f"config.quantizer.num_codes={q.num_codes} must be ≥ 2")
    check(q.embedding_dim >= 1, f"config.quantizer.embedding_dim={q.embedding_dim} must be ≥ 1")
    check(q.lookup_dim is None or 1 <= q.lookup_dim,
          f"config.quantizer.lookup_dim={q.lookup_dim}: use None (lookup in embedding_dim) or a positive size")
    check(0 <= q.ema_decay < 1, f"config.quantizer.ema_decay={q.ema_decay} must be in [0, 1)")
    check(q.dead_code_threshold == 0 or q.use_ema,
          f"config.quantizer.dead_code_threshold={q.dead_code_threshold} needs config.quantizer.use_ema=True")
    e = config.eval
    check(e.lpips_backbone in ("alexnet", "vgg16"),
          f"config.eval.lpips_backbone={e.lpips_backbone!r}: use 'alexnet' or 'vgg16'")
    check(e.lpips_backbone != "alexnet" or (d.pad_to or d.image_size) >= 31,
          f"config.eval.lpips_backbone='alexnet' needs images of at least 31 pixels, these are "
          f"{d.pad_to or d.image_size}: use 'vgg16' or pad with config.data.pad_to=32")
    check(e.rfid_num_images == 0 or e.rfid_num_images >= 2,
          f"config.eval.rfid_num_images={e.rfid_num_images}: use 0 (no rFID) or at least 2 images")
    check(config.train.reconstruction_loss in ("mse", "l1"),
          f"config.train.reconstruction_loss={config.train.reconstruction_loss!r}: use 'mse' or 'l1'")


def validate_vqgan_config(config):
    """Checks a VQGAN config (the tokenizer keys and `config.gan`); raises UserError on the first problem."""
    from vqdiff.losses.gan import LOSS_KINDS
    from vqdiff.models.discriminator import KINDS, NORMS

    validate_tokenizer_config(config)
    g, d = config.gan, config.gan.disc
    check(d.kind in KINDS, f"config.gan.disc.kind={d.kind!r}: use one of {', '.join(KINDS)}")
    check(d.channels > 0, f"config.gan.disc.channels={d.channels} must be positive")
    if d.kind == "patchgan":
        check(d.n_layers >= 1, f"config.gan.disc.n_layers={d.n_layers} must be ≥ 1")
        check(d.norm in NORMS, f"config.gan.disc.norm={d.norm!r}: use one of {', '.join(NORMS)}")
        side = (config.data.pad_to or config.data.image_size) // 2 ** d.n_layers
        check(side >= 3, f"config.gan.disc.n_layers={d.n_layers} shrinks the "
                         f"{config.data.pad_to or config.data.image_size}-pixel images to {side} pixels before "
                         f"the last two 4×4 convs: use fewer layers")
    check(g.loss in LOSS_KINDS, f"config.gan.loss={g.loss!r}: use one of {', '.join(LOSS_KINDS)}")
    check(0 <= g.start_step, f"config.gan.start_step={g.start_step} must be ≥ 0")
    check(g.learning_rate > 0, f"config.gan.learning_rate={g.learning_rate} must be positive")
    for key in ("adam_b1", "adam_b2", "lecam_decay"):
        check(0 <= g[key] < 1, f"config.gan.{key}={g[key]} must be in [0, 1)")
    for key in ("adversarial_weight", "perceptual_weight", "weight_decay", "r1_weight", "lecam_weight",
                "entropy_weight"):
        check(g[key] >= 0, f"config.gan.{key}={g[key]} must be ≥ 0 (0 turns the term off)")
    for key in ("adaptive_weight_max", "adaptive_weight_eps", "grad_clip_norm", "entropy_temperature"):
        check(g[key] > 0, f"config.gan.{key}={g[key]} must be positive")
    check(g.lpips_backbone in ("alexnet", "vgg16"),
          f"config.gan.lpips_backbone={g.lpips_backbone!r}: use 'alexnet' or 'vgg16'")
    side = config.data.pad_to or config.data.image_size
    check(g.lpips_backbone != "alexnet" or side >= 31,
          f"config.gan.lpips_backbone='alexnet' needs images of at least 31 pixels, these are {side}: use "
          f"'vgg16' or pad with config.data.pad_to=32")


def validate_dit_config(config):
    """Checks a latent DiT config (before the tokenizer is loaded); raises UserError on the first problem."""
    from vqdiff.diffusion.gaussian import PREDICTIONS
    from vqdiff.diffusion.schedules import SCHEDULES
    from vqdiff.models.dit import VARIANTS
    from vqdiff.train.frozen_tokenizer import LATENT_KINDS

    validate_common(config)
    t, m, diff, s, e = config.tokenizer, config.model, config.diffusion, config.sample, config.eval
    check(bool(t.workdir), "config.tokenizer.workdir is empty: name the workdir of a trained tokenizer")
    check(t.latents in LATENT_KINDS, f"config.tokenizer.latents={t.latents!r}: use one of {LATENT_KINDS}")
    check(t.get("latent_scale", "global") in ("global", "per_channel"),
          f"config.tokenizer.latent_scale={t.get('latent_scale')!r}: use 'global' or 'per_channel'")
    if m.variant:
        check(m.variant.removeprefix("DiT-") in VARIANTS,
              f"config.model.variant={m.variant!r}: use one of {', '.join(VARIANTS)}, or None with explicit "
              f"depth/hidden_size/patch_size/num_heads")
    else:
        check(m.hidden_size % m.num_heads == 0,
              f"config.model.hidden_size={m.hidden_size} is not divisible by config.model.num_heads={m.num_heads}")
        check(m.hidden_size % 4 == 0, f"config.model.hidden_size={m.hidden_size} must be a multiple of 4 "
                                      f"(2-D sin-cos position embedding)")
    check(m.num_classes >= 1 or "text" in config,
          f"config.model.num_classes={m.num_classes} must be ≥ 1 (0 only for text-to-image configs)")
    check(0 <= m.class_dropout_prob < 1, f"config.model.class_dropout_prob={m.class_dropout_prob} must be in "
                                         f"[0, 1) (> 0 trains the null label that guidance needs)")
    check(diff.prediction in PREDICTIONS, f"config.diffusion.prediction={diff.prediction!r}: use one of "
                                          f"{PREDICTIONS}")
    check(diff.schedule in SCHEDULES, f"config.diffusion.schedule={diff.schedule!r}: use one of {SCHEDULES}")
    check(diff.num_timesteps >= 2, f"config.diffusion.num_timesteps={diff.num_timesteps} must be ≥ 2")
    check(s.sampler in ("ddim", "ddpm"), f"config.sample.sampler={s.sampler!r}: use 'ddim' or 'ddpm'")
    for name, value in (("config.sample.num_steps", s.num_steps),
                        ("config.train_grid.num_steps", config.train_grid.num_steps)):
        check(2 <= value <= diff.num_timesteps,
              f"{name}={value} must lie in [2, config.diffusion.num_timesteps={diff.num_timesteps}]")
    check(s.guidance_scale >= 0, f"config.sample.guidance_scale={s.guidance_scale} must be ≥ 0 (1 = no guidance)")
    for name, section in (("config.sample", s), ("config.train_grid", config.train_grid)):
        interval = section.get("guidance_interval")
        check(not interval or (len(interval) == 2 and 0 <= interval[0] <= interval[1] < diff.num_timesteps),
              f"{name}.guidance_interval={interval!r}: give (t_low, t_high) with 0 ≤ t_low ≤ t_high < "
              f"config.diffusion.num_timesteps={diff.num_timesteps}, or None to guide at every step")
    gamma = diff.get("min_snr_gamma")
    check(gamma is None or gamma > 0,
          f"config.diffusion.min_snr_gamma={gamma}: use a positive γ (5 in Hang et al. 2023) or None for the "
          f"plain MSE")
    # A text-to-image model's unconditional branch is trained by caption dropout instead.
    dropout_key, dropout = (("text.caption_dropout_prob", config.text.caption_dropout_prob) if "text" in config
                            else ("model.class_dropout_prob", m.class_dropout_prob))
    check(s.guidance_scale == 1 or dropout > 0,
          f"config.sample.guidance_scale={s.guidance_scale} needs a model trained with the null condition "
          f"(config.{dropout_key} > 0); use guidance_scale=1")
    check(s.batch_size > 0 and s.num_samples > 0,
          f"config.sample.batch_size={s.batch_size} and num_samples={s.num_samples} must be positive")
    check(e.num_samples >= 2 and e.fid_reference_images >= 2,
          f"config.eval.num_samples={e.num_samples} and fid_reference_images={e.fid_reference_images} must "
          f"be ≥ 2")


def validate_t2i_config(config):
    """Checks a text-to-image DiT config (the DiT keys and `config.text`); raises UserError on the first
    problem."""
    from vqdiff.data.captions import TEMPLATE_SETS
    from vqdiff.models.text import build_text_encoder
    from vqdiff.train.t2i_trainer import CAPTION_SOURCES

    validate_dit_config(config)
    t = config.text
    try:
        build_text_encoder(t.encoder)
    except UserError as e:
        raise UserError(f"config.text.encoder={dict(t.encoder)}: {e}") from None
    check(0 < t.caption_dropout_prob < 1,
          f"config.text.caption_dropout_prob={t.caption_dropout_prob} must be in (0, 1): the empty caption "
          f"it trains is the unconditional branch of guidance")
    check(t.captions in CAPTION_SOURCES,
          f"config.text.captions={t.captions!r}: use one of {', '.join(CAPTION_SOURCES)}")
    if t.captions == "class_templates":
        check(len(t.class_names) == config.model.num_classes,
              f"config.text.class_names has {len(t.class_names)} names but config.model.num_classes="
              f"{config.model.num_classes}: give one name per class")
        check(bool(config.tokenizer.latent_cache),
              "config.text.captions='class_templates' trains from the latent cache: set "
              "config.tokenizer.latent_cache=True")
    else:
        check(bool(config.data.get("caption_feature")),
              "config.text.captions='dataset' reads each image's captions: name their text feature in "
              "config.data.caption_feature (e.g. 'captions/text' for coco_captions)")
        check(len(t.grid_prompts) > 0, "config.text.grid_prompts is empty: give the prompts of the training "
                                       "grids")
    check(config.eval.prompt_templates in TEMPLATE_SETS,
          f"config.eval.prompt_templates={config.eval.prompt_templates!r}: use one of {', '.join(TEMPLATE_SETS)}")
