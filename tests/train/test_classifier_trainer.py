"""The cond_accuracy classifier: cached after its first training, and batched prediction = direct argmax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vqdiff.train import classifier_trainer

from support import load_experiment


def tiny_config():
    config = load_experiment("dit_fashion_mnist", "tiny")
    config.data.dataset = "mnist"        # served by tfds.testing.mock_data, offline
    return config


def test_second_load_reads_the_cache_and_batched_prediction_is_direct_argmax(weights_cache, monkeypatch):
    config = tiny_config()
    config.seed = 123   # a cache entry of its own
    with tfds.testing.mock_data(num_examples=20):
        model, params, accuracy = classifier_trainer.load_or_train_classifier(config)
    assert classifier_trainer.classifier_cache_path(config).exists() and 0.0 <= accuracy <= 1.0
    monkeypatch.setattr(classifier_trainer, "train_classifier", lambda c: pytest.fail("trained again"))
    _, cached, cached_accuracy = classifier_trainer.load_or_train_classifier(config)
    assert cached_accuracy == accuracy
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(cached)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    direct = np.argmax(model.apply({"params": params}, jnp.asarray(images, jnp.float32) / 127.5 - 1.0), -1)
    np.testing.assert_array_equal(classifier_trainer.predict_labels(model, params, images, batch_size=3), direct)


def test_cache_path_changes_with_the_classifier_config():
    a, b = tiny_config(), tiny_config()
    b.classifier.num_steps += 1
    assert classifier_trainer.classifier_cache_path(a) != classifier_trainer.classifier_cache_path(b)
