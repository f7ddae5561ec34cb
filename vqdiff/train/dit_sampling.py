"""Images from a trained DiT: compiled, sharded latent sampling (DDIM/DDPM, classifier-free guidance),
then the frozen tokenizer's decoder; class grids."""
import jax
import jax.numpy as jnp
import numpy as np

from vqdiff import compiler_options
from vqdiff.diffusion import samplers
from vqdiff.eval import grid
from vqdiff.train import text_conditioning
from vqdiff.train.dit_trainer import denormalize_latents
from vqdiff.train.fid_reference import to_uint8_native
from vqdiff.train.frozen_tokenizer import decode_latents

SAMPLERS = ("ddim", "ddpm")


def sample_latents(params, labels, rng, *, model, schedule, sample_config, prediction, latent_shape,
                   captions=None):
    """labels [B] int32 → normalised latents [B, h, w, D] from noise drawn with `rng`.

    With a caption table (`text_conditioning`), labels index its rows and the model is conditioned on
    those captions; the null branch is the table's empty caption instead of the null label.
    guidance_scale 1 samples the conditional model alone; other scales mix it with the null-label
    branch (classifier-free guidance). Pure: jit it with the schedule closed over.
    """
    s = sample_config

    def conditional(x, t, y):
        condition = y if captions is None else text_conditioning.lookup(captions, y)
        return model.apply({"params": params}, x, t, condition)

    null = model.num_classes if captions is None else text_conditioning.empty_index(captions)
    if s.guidance_scale == 1.0:
        guided = conditional
    else:
        interval = s.get("guidance_interval", None)
        guided = samplers.classifier_free_guidance(conditional, s.guidance_scale, null, model.learn_sigma,
                                                   tuple(interval) if interval else None)

    def model_fn(x, t):
        return guided(x, t, labels)

    x_T = jax.random.normal(rng, (labels.shape[0], *latent_shape), jnp.float32)
    common = dict(num_steps=s.num_steps, prediction=prediction, learn_sigma=model.learn_sigma)
    if s.sampler == "ddim":
        return samplers.ddim_sample(model_fn, schedule, x_T, rng, eta=s.eta, **common)
    if s.sampler == "ddpm":
        return samplers.ddpm_sample(model_fn, schedule, x_T, rng, **common)
    raise ValueError(f"sampler={s.sampler!r}: use one of {SAMPLERS}")


class ImageGenerator:
    """generator(state, labels, seed) → uint8 images [N, image_size, image_size, C] for any N labels.

    Batches of `sample_config.batch_size` (rounded up to the data-parallel size; smaller when fewer
    labels are asked for) are sharded over the mesh's batch axes; batch i draws its noise from
    fold_in(key(seed), i), so the images depend on the seed and the batch size, not on the number of
    devices.
    """

    def __init__(self, trainer, sample_config):
        self.trainer = trainer
        self.sample_config = sample_config
        data_parallel = int(np.prod([trainer.mesh.shape[a] for a in trainer.config.mesh.batch_axes]))
        self.data_parallel = data_parallel
        self.batch_size = -(-sample_config.batch_size // data_parallel) * data_parallel
        tokenizer = trainer.tokenizer
        snap_to_codebook = sample_config.get("snap_to_codebook", True)

        def generate(params, stats, tokenizer_variables, labels, rng, captions):
            x = sample_latents(params, labels, rng, model=trainer.model, schedule=trainer.schedule,
                               sample_config=sample_config, prediction=trainer.config.diffusion.prediction,
                               latent_shape=trainer.latent_shape, captions=captions)
            return decode_latents(tokenizer.model, tokenizer_variables, denormalize_latents(x, stats),
                                  snap_to_codebook)

        shardings = trainer.state_shardings
        self._generate = compiler_options.jit(
            generate, "convolutional", in_shardings=(shardings.params, shardings.model_state["latent_stats"], None,
                                                     trainer.batch_sharding, None, None),
            out_shardings=trainer.batch_sharding)

    def __call__(self, state, labels, seed: int, captions=None) -> np.ndarray:
        """`captions`: a caption table whose rows `labels` index (text-to-image models)."""
        params = state.ema_params if self.sample_config.use_ema_params else state.params
        labels = np.asarray(labels, np.int32)
        # Fewer labels than a batch: a smaller batch (still a multiple of the data-parallel size).
        batch_size = min(self.batch_size, -(-len(labels) // self.data_parallel) * self.data_parallel)
        images = []
        for i, start in enumerate(range(0, len(labels), batch_size)):
            chunk = labels[start:start + batch_size]
            padded = np.concatenate([chunk, np.zeros(batch_size - len(chunk), np.int32)])
            rng = jax.random.fold_in(jax.random.key(seed), i)
            out = self._generate(params, state.model_state["latent_stats"], self.trainer.tokenizer_variables,
                                 jax.device_put(padded, self.trainer.batch_sharding), rng, captions)
            images.append(to_uint8_native(out, self.trainer.config.data)[:len(chunk)])
        return np.concatenate(images)


def grid_labels(num_classes: int, per_class: int) -> np.ndarray:
    """[num_classes · per_class] labels, class-major: row c of a grid is class c."""
    return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def save_class_grid(images: np.ndarray, per_class: int, path: str) -> str:
    """A grid with one row per class, `per_class` samples in each (images in `grid_labels` order)."""
    return grid.save_grid(images, path, per_class, scale=2)

