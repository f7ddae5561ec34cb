"""Training of the latent DiT on a frozen tokenizer's latents: one jitted, sharded denoising update and
the shared plain loop.

Latents come from a cache encoded once (`config.tokenizer.latent_cache`) or from the encoder inside
each step. They are normalised as (z − mean) · scale with statistics estimated from data when training
starts and stored in the checkpoint (`model_state['latent_stats']`), so sampling undoes exactly the
normalisation the model was trained with.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqdiff import compiler_options
from vqdiff.data import pipeline
from vqdiff.diffusion.gaussian import diffusion_loss, sample_timesteps_and_noise
from vqdiff.errors import UserError
from vqdiff.diffusion.schedules import make_schedule
from vqdiff.models.dit import DiT, dit_hyperparameters
from vqdiff.train import checkpoint, latent_cache, loop, sharding
from vqdiff.train.accumulation import accumulated_value_and_grad
from vqdiff.train.frozen_tokenizer import FrozenTokenizer, encode_latents
from vqdiff.train.optimizer import create_optimizer, learning_rate_schedule
from vqdiff.train.state import TrainState, ema_update, skip_if_nonfinite, step_rng
from vqdiff.train.validation import validate_dit_config


def dit_architecture(model_config) -> dict:
    """depth, hidden_size, patch_size, num_heads: from `variant` (e.g. 'S/2') when set, else explicit."""
    if model_config.variant:
        return dit_hyperparameters(model_config.variant)
    return {k: model_config[k] for k in ("depth", "hidden_size", "patch_size", "num_heads")}


def build_dit(config, latent_shape) -> DiT:
    """The DiT of `config.model` over latents of `latent_shape` (h, w, D)."""
    m = config.model
    return DiT(input_size=latent_shape[0], in_channels=latent_shape[2], mlp_ratio=m.mlp_ratio,
               num_classes=m.num_classes, class_dropout_prob=m.class_dropout_prob, learn_sigma=m.learn_sigma,
               dtype=jnp.dtype(m.dtype), remat=m.remat, **dit_architecture(m))


def load_tokenizer(config) -> FrozenTokenizer:
    t = config.tokenizer
    return FrozenTokenizer(t.workdir, latents=t.latents, use_ema_params=t.use_ema_params)


def check_tokenizer_fits(config, tokenizer: FrozenTokenizer):
    """The DiT's data must be what the tokenizer was trained on, and its patches must tile the latents."""
    for key in ("image_size", "pad_to", "channels"):
        ours, theirs = config.data[key], tokenizer.config.data[key]
        if ours != theirs:
            raise UserError(f"config.data.{key}={ours} but the tokenizer in {tokenizer.workdir} was trained "
                            f"with {theirs}: use the tokenizer's data settings")
    patch = dit_architecture(config.model)["patch_size"]
    if tokenizer.latent_shape[0] % patch:
        raise UserError(f"the tokenizer's {tokenizer.latent_shape[0]}×{tokenizer.latent_shape[1]} latent grid "
                        f"is not divisible by the DiT patch size {patch}: choose a patch size that divides it")


def per_channel_scale(config) -> bool:
    """config.tokenizer.latent_scale: 'global' (one scale, LDM's) or 'per_channel' (unit variance per channel)."""
    return config.tokenizer.get("latent_scale", "global") == "per_channel"


def normalize_latents(z, stats):
    return (z - stats["mean"]) * stats["scale"]


def denormalize_latents(x, stats):
    return x / stats["scale"] + stats["mean"]


def init_state(config, model, tx, latent_shape, condition=None) -> TrainState:
    """Fresh params and optimizer state; identity latent statistics until data sets them. `condition`:
    an example of the model's conditioning input, batch 1 (default: a class label)."""
    condition = jnp.zeros((1,), jnp.int32) if condition is None else condition
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, *latent_shape)), jnp.zeros((1,), jnp.int32),
                        condition)["params"]
    scale_shape = (latent_shape[-1],) if per_channel_scale(config) else ()
    stats = dict(mean=jnp.zeros((latent_shape[-1],), jnp.float32), scale=jnp.ones(scale_shape, jnp.float32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=params,
                      model_state={"latent_stats": stats}, skipped_steps=jnp.zeros((), jnp.int32))


def train_step(state: TrainState, batch: dict, tokenizer_variables, *, model, tx, schedule, config,
               tokenizer_model):
    """One update on {'latent' [B, h, w, D] or 'image' [B, H, W, C], 'label' [B], 'mask' [B]}; a text-to-image
    model is conditioned on the batch's 'text' (see text_conditioning) instead of its labels."""
    if "latent" in batch:
        z = batch["latent"]
    else:
        z = encode_latents(tokenizer_model, tokenizer_variables, batch["image"], config.tokenizer.latents)
    x0 = normalize_latents(jax.lax.stop_gradient(z), state.model_state["latent_stats"])
    rng_diffusion, rng_dropout = jax.random.split(step_rng(config.seed, state.step))
    # t and noise are drawn for the whole batch, so micro-batches see the big batch's draws.
    t, noise = sample_timesteps_and_noise(schedule, rng_diffusion, x0.shape)
    examples = dict(x0=x0, t=t, noise=noise, mask=batch["mask"],
                    condition=batch["text"] if "text" in batch else batch["label"])
    accum_steps = config.train.get("grad_accum_steps", 1)

    def loss_fn(params, micro, carry, index):
        # Label dropout is drawn per micro-batch: with grad_accum_steps > 1 only its draws differ from
        # the big-batch step.
        dropout_rng = rng_dropout if accum_steps == 1 else jax.random.fold_in(rng_dropout, index)

        def model_fn(x, t):
            return model.apply({"params": params}, x, t, micro["condition"], train=True,
                               rngs={"label_dropout": dropout_rng})
        loss, metrics = diffusion_loss(schedule, model_fn, micro["x0"], None, t=micro["t"], noise=micro["noise"],
                                       prediction=config.diffusion.prediction,
                                       learn_sigma=config.model.learn_sigma, mask=micro["mask"],
                                       min_snr_gamma=config.diffusion.get("min_snr_gamma"))
        return loss, (metrics, carry)

    (loss, metrics, _), grads = accumulated_value_and_grad(loss_fn, state.params, examples, accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_update(state.ema_params, params, config.train.ema_decay))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if config.train.skip_nonfinite:
        new_state = skip_if_nonfinite(state, new_state, finite)
    metrics = dict(metrics, grad_norm=grad_norm, skipped_steps=new_state.skipped_steps,
                   learning_rate=learning_rate_schedule(config.train)(state.step))
    return new_state, jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), metrics)


class DiTTrainer:
    """DiT, optimizer, schedule, mesh and shardings of one DiT config over a frozen tokenizer."""

    def __init__(self, config, tokenizer: FrozenTokenizer, devices=None, *, model=None, condition=None):
        """`model` (default: the class-conditional DiT of the config) and `condition`, an example of its
        conditioning input with batch 1 (default: a class label)."""
        check_tokenizer_fits(config, tokenizer)
        self.config = config
        self.tokenizer = tokenizer
        self.latent_shape = tokenizer.latent_shape
        self.model = build_dit(config, self.latent_shape) if model is None else model
        self.schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
        self.tx = create_optimizer(config.train)
        self.mesh = sharding.create_mesh(config.mesh, devices)
        self.batch_sharding = sharding.batch_sharding(self.mesh, config.mesh.batch_axes)
        init = functools.partial(init_state, config, self.model, self.tx, self.latent_shape, condition)
        abstract = jax.eval_shape(init)
        self.state_shardings = sharding.state_shardings(abstract, self.mesh, config.mesh)
        self.abstract_state = checkpoint.abstract_with_shardings(abstract, self.state_shardings).as_dict()
        self._init = jax.jit(init, out_shardings=self.state_shardings)
        self.tokenizer_variables = jax.device_put(tokenizer.variables, sharding.replicated(self.mesh))

    def initial_state(self) -> TrainState:
        return self._init()

    def restore(self, checkpointer: checkpoint.Checkpointer, step: int | None = None) -> TrainState:
        return TrainState.from_dict(checkpointer.restore(self.abstract_state, step))

    def with_latent_stats(self, state: TrainState, stats: dict) -> TrainState:
        stats = {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}
        model_state = jax.device_put({"latent_stats": stats}, self.state_shardings.model_state)
        return state.replace(model_state=model_state)

    def compiled_train_step(self):
        """update(state, batch) → (state, metrics), jitted once with the state donated."""
        step = functools.partial(train_step, model=self.model, tx=self.tx, schedule=self.schedule,
                                 config=self.config, tokenizer_model=self.tokenizer.model)
        # With the latent cache the step is the DiT alone; without it, it also runs the tokenizer's encoder.
        kind = "transformer" if self.config.tokenizer.get("latent_cache", False) else "convolutional"
        jitted = compiler_options.jit(step, kind, in_shardings=(self.state_shardings, self.batch_sharding, None),
                                      out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                                      donate_argnums=(0,))
        return lambda state, batch: jitted(state, batch, self.tokenizer_variables)


def image_batches(config, start_step: int):
    return iter(pipeline.create_dataset(config.data, split=config.data.train_split, train=True,
                                        global_batch_size=config.train.batch_size, seed=config.seed,
                                        start_step=start_step))


def estimate_stats_from_images(config, tokenizer, num_batches: int = 20) -> dict:
    """Latent statistics from the first `num_batches` training batches (no cache)."""
    batches = image_batches(config, 0)
    return latent_cache.latent_statistics(
        np.concatenate([np.asarray(tokenizer.encode(next(batches)["image"])) for _ in range(num_batches)]),
        per_channel_scale(config))


PROGRESS_KEYS = ("loss", "mse", "vlb", "grad_norm", "skipped_steps")


def latent_stats_setter(config, trainer: DiTTrainer, cache):
    """prepare_state of the loop: stores the latent statistics of the cache (or of the first batches)."""
    def prepare_state(state):
        stats = (latent_cache.latent_statistics(cache["latents"], per_channel_scale(config)) if cache is not None
                 else estimate_stats_from_images(config, trainer.tokenizer))
        print(f"latent statistics: channel means {np.round(stats['mean'], 3).tolist()}, "
              f"scale {np.round(stats['scale'], 4).tolist()}", flush=True)
        return trainer.with_latent_stats(state, stats)
    return prepare_state


def train(config, workdir: str):
    """Trains (or resumes) the DiT of `config` in `workdir`; returns the last step's metrics."""
    validate_dit_config(config)
    return loop.train_in_workdir(config, workdir, lambda: _train(config, workdir))


def _train(config, workdir: str):
    from vqdiff.train import dit_sampling  # grids during training

    tokenizer = load_tokenizer(config)
    trainer = DiTTrainer(config, tokenizer)
    cache = latent_cache.load_or_build(config, tokenizer, workdir) if config.tokenizer.latent_cache else None

    def make_batches(start):
        if cache is not None:
            return latent_cache.random_batches(cache, config.train.batch_size, config.seed, start)
        return image_batches(config, start)

    generate = dit_sampling.ImageGenerator(trainer, config.train_grid)
    labels = dit_sampling.grid_labels(config.model.num_classes, config.train_grid.per_class)

    def draw_grid(state, step):
        images = generate(state, labels, seed=config.seed)
        dit_sampling.save_class_grid(images, config.train_grid.per_class,
                                     os.path.join(workdir, "grids", f"samples_{step:07d}.png"))

    return loop.run_loop(config, workdir, trainer, make_batches=make_batches, draw_grid=draw_grid,
                         progress_keys=PROGRESS_KEYS, prepare_state=latent_stats_setter(config, trainer, cache))
