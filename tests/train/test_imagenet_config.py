"""The ImageNet config builds its real model and takes real update steps (on mock data: no download)."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vqdiff.data import pipeline
from vqdiff.models.autoencoder import downsampling_factor
from vqdiff.train import sharding
from vqdiff.train.tokenizer_trainer import Trainer

from support import load_experiment


@pytest.mark.slow
def test_imagenet_config_runs_two_update_steps_on_mock_data():
    config = load_experiment("vqvae_imagenet")
    assert downsampling_factor(config.model) == 8
    config.train.batch_size = 8     # the real model; a CPU-sized batch and resolution (the parameters of a
    config.data.image_size = 64     # fully convolutional model with attention do not depend on the size)
    trainer = Trainer(config)
    state = trainer.initial_state()
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    assert num_params > 40e6          # the taming/LDM f8 autoencoder, not a toy
    update = trainer.compiled_train_step()
    with tfds.testing.mock_data(num_examples=16):
        data = pipeline.create_dataset(config.data, split="train", train=True, global_batch_size=8, seed=0)
        for _ in range(2):
            batch = next(data)
            assert batch["image"].shape == (8, 64, 64, 3)
            state, metrics = update(state, sharding.global_batch(batch, trainer.batch_sharding))
            assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 2


def test_vqgan_imagenet_config_is_the_taming_f16_recipe():
    """Shapes only (jax.eval_shape): 16×16 tokens of 256 px images, taming's ~72 M-parameter first stage
    (plus 16384 × 256 codes) and its ~2.8 M-parameter 3-layer PatchGAN."""
    from vqdiff.train.validation import validate_vqgan_config
    from vqdiff.train.vqgan_trainer import VQGANTrainer

    config = load_experiment("vqgan_imagenet")
    validate_vqgan_config(config)
    assert downsampling_factor(config.model) == 16 and config.quantizer.num_codes == 16384
    state = jax.eval_shape(VQGANTrainer(config, devices=jax.devices()[:1]).make_init())
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
    assert 70e6 < count(state.params) < 80e6
    assert 2.7e6 < count(state.disc_params) < 2.9e6
