"""Training of the VQ tokenizer (VQ-VAE): one jitted, sharded update and a plain Python loop."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqdiff import compiler_options
from vqdiff.data import pipeline
from vqdiff.errors import UserError
from vqdiff.eval import grid
from vqdiff.eval.image_metrics import crop_padding, psnr, to_unit_range
from vqdiff.models.autoencoder import VQAutoencoder
from vqdiff.train import checkpoint, loop, sharding
from vqdiff.train.accumulation import accumulated_value_and_grad
from vqdiff.train.optimizer import create_optimizer, learning_rate_schedule
from vqdiff.train.state import TrainState, ema_update, skip_if_nonfinite, step_rng
from vqdiff.train.validation import validate_tokenizer_config


def build_tokenizer(config) -> VQAutoencoder:
    """The autoencoder + quantizer that `config.model` / `config.quantizer` describe."""
    return VQAutoencoder(model_config=config.model.to_dict(), quantizer_config=config.quantizer.to_dict(),
                         image_channels=config.data.channels)


def input_shape(config, batch_size: int = 1):
    size = config.data.pad_to or config.data.image_size
    return (batch_size, size, size, config.data.channels)


def init_state(config, model, tx) -> TrainState:
    """Fresh parameters, optimizer state, EMA params and quantizer statistics."""
    rngs = {"params": jax.random.key(config.seed), "quantizer": jax.random.key(config.seed + 1)}
    variables = model.init(rngs, jnp.zeros(input_shape(config), jnp.float32), train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params, model_state=model_state, skipped_steps=jnp.zeros((), jnp.int32))


def reconstruction_error(x, y, kind: str):
    """Per-example mean squared ('mse') or absolute ('l1') error. x, y: [B, H, W, C] → [B]."""
    if kind == "mse":
        return jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
    if kind == "l1":
        return jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))
    raise UserError(f"config.train.reconstruction_loss={kind!r}: use 'mse' or 'l1'")


def masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def train_step(state: TrainState, batch: dict, *, model, tx, config):
    """One update on a global batch {'image': [B, H, W, C], 'mask': [B]} → (new state, float32 metrics).

    With config.train.grad_accum_steps = k > 1 the batch is processed as k micro-batches in order; the
    gradients and loss terms equal the big-batch step's, while an EMA codebook takes one EMA step per
    micro-batch and perplexity / codes_used are averages over micro-batches.
    """
    rng_quantizer, rng_dropout = jax.random.split(step_rng(config.seed, state.step))
    mutable = list(state.model_state.keys())
    accum_steps = config.train.get("grad_accum_steps", 1)

    def loss_fn(params, micro, model_state, index):
        rngs = {"quantizer": rng_quantizer, "dropout": rng_dropout}
        if accum_steps > 1:
            rngs = {name: jax.random.fold_in(rng, index) for name, rng in rngs.items()}
        (reconstruction, aux), new_model_state = model.apply(
            {"params": params, **model_state}, micro["image"], train=True, mask=micro["mask"], mutable=mutable,
            rngs=rngs)
        rec_loss = masked_mean(reconstruction_error(reconstruction, micro["image"],
                                                    config.train.reconstruction_loss), micro["mask"])
        loss = rec_loss + aux["loss"]
        image_psnr = masked_mean(psnr(*(to_unit_range(crop_padding(x, config.data.image_size, config.data.pad_to))
                                        for x in (reconstruction, micro["image"]))), micro["mask"])
        metrics = dict(reconstruction_loss=rec_loss, psnr=image_psnr,
                       **{k: aux[k] for k in ("codebook_loss", "commitment_loss", "perplexity", "codes_used")})
        return loss, (metrics, {**model_state, **new_model_state})

    (loss, aux, new_model_state), grads = accumulated_value_and_grad(
        loss_fn, state.params, {"image": batch["image"], "mask": batch["mask"]}, accum_steps, state.model_state)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params, config.train.ema_decay),
        model_state={**state.model_state, **new_model_state})
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if config.train.skip_nonfinite:
        new_state = skip_if_nonfinite(state, new_state, finite)
    metrics = dict(aux, loss=loss, grad_norm=grad_norm, skipped_steps=new_state.skipped_steps,
                   learning_rate=learning_rate_schedule(config.train)(state.step))
    return new_state, jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), metrics)


class Trainer:
    """Model, optimizer, mesh and shardings of one tokenizer config: shared by train and eval.
    `devices` (default all) is the set the mesh spans."""

    state_class = TrainState
    progress_keys = ("loss", "reconstruction_loss", "psnr", "perplexity", "skipped_steps")

    def __init__(self, config, devices=None):
        self.config = config
        self.model = build_tokenizer(config)
        self.tx = create_optimizer(config.train)
        self.mesh = sharding.create_mesh(config.mesh, devices)
        self.batch_sharding = sharding.batch_sharding(self.mesh, config.mesh.batch_axes)
        init = self.make_init()
        abstract = jax.eval_shape(init)
        self.state_shardings = sharding.state_shardings(abstract, self.mesh, config.mesh)
        self.abstract_state = checkpoint.abstract_with_shardings(abstract, self.state_shardings).as_dict()
        self._init = jax.jit(init, out_shardings=self.state_shardings)

    def make_init(self):
        """() → a fresh state; jitted with the state's shardings by __init__."""
        return functools.partial(init_state, self.config, self.model, self.tx)

    def initial_state(self) -> TrainState:
        return self._init()

    def restore(self, checkpointer: checkpoint.Checkpointer, step: int | None = None) -> TrainState:
        return self.state_class.from_dict(checkpointer.restore(self.abstract_state, step))

    def compiled_train_step(self):
        step = functools.partial(train_step, model=self.model, tx=self.tx, config=self.config)
        return compiler_options.jit(step, "convolutional", in_shardings=(self.state_shardings, self.batch_sharding),
                                    out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                                    donate_argnums=(0,))

    def reconstruct_fn(self, use_ema_params: bool):
        """jitted (state, images) → (reconstructions, code indices)."""
        def reconstruct(state, images):
            params = state.ema_params if use_ema_params else state.params
            (recon, aux) = self.model.apply({"params": params, **state.model_state}, images, train=False)
            return recon, aux["indices"]
        return compiler_options.jit(reconstruct, "convolutional",
                                    in_shardings=(self.state_shardings, self.batch_sharding),
                                    out_shardings=self.batch_sharding)


def fixed_eval_images(config, count: int) -> np.ndarray:
    """The first `count` images of the eval split (same every time), for reconstruction grids."""
    it = pipeline.create_dataset(config.data, split=config.data.eval_split, train=False,
                                 global_batch_size=count * jax.process_count(), seed=config.seed)
    return next(iter(it))["image"]


def reconstruction_grid(originals, reconstructions, path: str, columns: int = 8):
    """Rows alternate: originals, then their reconstructions."""
    originals, reconstructions = np.asarray(originals), np.asarray(reconstructions)
    n = (len(originals) // columns) * columns
    pairs = np.stack([originals[:n].reshape(-1, columns, *originals.shape[1:]),
                      reconstructions[:n].reshape(-1, columns, *originals.shape[1:])], axis=1)
    return grid.save_grid(pairs.reshape(-1, *originals.shape[1:]), path, columns, scale=2)


def train(config, workdir: str):
    """Trains (or resumes) the tokenizer of `config` in `workdir`; returns the last step's metrics."""
    validate_tokenizer_config(config)
    return loop.train_in_workdir(config, workdir, lambda: run_training(config, workdir, Trainer))


def run_training(config, workdir: str, trainer_class):
    """The tokenizer training loop for `trainer_class` (Trainer or a subclass such as the VQGAN's)."""
    trainer = trainer_class(config)
    grid_images = sharding.global_batch(fixed_eval_images(config, config.eval.num_grid_images),
                                        trainer.batch_sharding)
    reconstruct = trainer.reconstruct_fn(config.eval.use_ema_params)

    def make_batches(start):
        return iter(pipeline.create_dataset(config.data, split=config.data.train_split, train=True,
                                            global_batch_size=config.train.batch_size, seed=config.seed,
                                            start_step=start))

    def draw_grid(state, step):
        recon, _ = reconstruct(state, grid_images)
        originals, recon = sharding.to_host((grid_images, recon))   # every process joins the gather
        if jax.process_index() == 0:
            count = config.eval.num_grid_images
            reconstruction_grid(originals[:count], recon[:count],
                                os.path.join(workdir, "grids", f"reconstructions_{step:07d}.png"))

    return loop.run_loop(config, workdir, trainer, make_batches=make_batches, draw_grid=draw_grid,
                         progress_keys=trainer.progress_keys)
