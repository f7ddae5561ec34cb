"""vqdiff/data/pipeline.py under tfds.testing.mock_data (mnist, cifar10) and on the fake local builder."""
import itertools

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vqdiff.data import pipeline


def _config(**overrides) -> ml_collections.ConfigDict:
    config = dict(dataset="mnist", data_dir=None, manual_dir=None, train_split="train",
                  eval_split="test", image_size=28, pad_to=0, channels=1, random_flip=False,
                  shuffle_buffer=16, tf_threads=1)
    return ml_collections.ConfigDict({**config, **overrides})


def _batches(config, n=None, **kwargs) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(pipeline.create_dataset(config, **kwargs), n))


def _raw(name, split) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, h, w, c] uint8 and labels [N] of the (mocked) split, as TFDS gives them."""
    examples = list(tfds.as_numpy(tfds.builder(name).as_dataset(split=split, shuffle_files=False)))
    return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])


def _set_processes(monkeypatch, index, count):
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)


def test_train_batches_shapes_range_and_padding():
    config = _config(pad_to=32, random_flip=True)
    with tfds.testing.mock_data(num_examples=20):
        batches = _batches(config, 3, split="train", train=True, global_batch_size=8, seed=0)
    for batch in batches:
        assert batch["image"].shape == (8, 32, 32, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
        np.testing.assert_array_equal(batch["mask"], np.ones(8, np.float32))
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        border = np.ones((32, 32), bool)
        border[2:30, 2:30] = False
        np.testing.assert_array_equal(batch["image"][:, border], -1.0)
        assert np.all((batch["label"] >= 0) & (batch["label"] < 10))


@pytest.mark.parametrize("name, channels, to_channels", [
    ("mnist", 1, lambda x: x),
    ("mnist", 3, lambda x: np.repeat(x, 3, axis=-1)),
    ("cifar10", 3, lambda x: x),
    ("cifar10", 1, lambda x: x @ np.array([[0.2989], [0.5870], [0.1140]])),
])
def test_eval_pass_in_order_padded_with_mask(name, channels, to_channels):
    size = 28 if name == "mnist" else 32
    config = _config(dataset=name, image_size=size, channels=channels)
    with tfds.testing.mock_data(num_examples=10):
        batches = _batches(config, split="test", train=False, global_batch_size=4, seed=0)
        raw_images, raw_labels = _raw(name, "test")
    assert len(batches) == 3
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 10 + [0] * 2)
    images = np.concatenate([b["image"] for b in batches])[:10]
    labels = np.concatenate([b["label"] for b in batches])[:10]
    assert images.shape == (10, size, size, channels)
    np.testing.assert_allclose(images, to_channels(raw_images) / 127.5 - 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, raw_labels)


def test_train_is_deterministic_shuffled_and_resumable():
    config = _config(random_flip=True, shuffle_buffer=4)
    kwargs = dict(split="train", train=True, global_batch_size=4)
    with tfds.testing.mock_data(num_examples=10):
        stream = _batches(config, 7, seed=0, **kwargs)
        again = _batches(config, 7, seed=0, **kwargs)
        other_seed = _batches(config, 7, seed=1, **kwargs)
        # Step 3 starts at record 12: inside the second epoch of 10 records.
        resumed = _batches(config, 4, seed=0, start_step=3, **kwargs)
        _, raw_labels = _raw("mnist", "train")
    for a, b in zip(stream, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for a, b in zip(stream[3:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(stream, other_seed))
    labels = np.concatenate([b["label"] for b in stream])
    for epoch in range(2):  # Each epoch is a permutation of the split.
        np.testing.assert_array_equal(np.sort(labels[10 * epoch:10 * epoch + 10]), np.sort(raw_labels))
    assert not np.array_equal(labels[:10], labels[10:20])


def test_per_process_batches(monkeypatch):
    config = _config()
    kwargs = dict(split="train", train=True, global_batch_size=8, seed=0)
    with tfds.testing.mock_data(num_examples=20):
        streams = []
        for index in range(2):
            _set_processes(monkeypatch, index, 2)
            streams.append(_batches(config, 2, **kwargs))
        _set_processes(monkeypatch, 0, 3)
        with pytest.raises(ValueError, match=r"global_batch_size=8 .*jax.process_count\(\)=3"):
            pipeline.create_dataset(config, **kwargs)
    assert all(b["image"].shape == (4, 28, 28, 1) for s in streams for b in s)
    assert not np.array_equal(streams[0][0]["image"], streams[1][0]["image"])


def test_eval_across_processes_covers_split_once(monkeypatch, fake_fashion_mnist,
                                                 fake_fashion_mnist_data_dir):
    """10 test examples over 3 processes (4, 3, 3), 2 per process and batch: 2 batches each."""
    config = _config(dataset="fashion_mnist_local", data_dir=fake_fashion_mnist_data_dir)
    found = []
    for index in range(3):
        _set_processes(monkeypatch, index, 3)
        batches = _batches(config, split="test", train=False, global_batch_size=6, seed=0)
        assert len(batches) == 2 and all(b["image"].shape == (2, 28, 28, 1) for b in batches)
        for b in batches:
            pixels = np.round((b["image"][..., 0] + 1) * 127.5).astype(np.uint8)
            found += [(p.tobytes(), int(l)) for p, l, m in zip(pixels, b["label"], b["mask"]) if m]
    images, labels = fake_fashion_mnist[1]["test"]
    assert sorted(found) == sorted((img.tobytes(), int(l)) for img, l in zip(images, labels))


def test_num_examples(fake_fashion_mnist_data_dir):
    config = _config(dataset="fashion_mnist_local", data_dir=fake_fashion_mnist_data_dir)
    assert pipeline.num_examples(config, "train") == 20
    assert pipeline.num_examples(config, "test[:30%]") == 3


def test_missing_split_and_dataset_raise_one_line(fake_fashion_mnist_data_dir):
    config = _config(dataset="fashion_mnist_local", data_dir=fake_fashion_mnist_data_dir)
    with pytest.raises(ValueError, match="'fashion_mnist_local' has no split 'validation'") as e:
        pipeline.create_dataset(config, split="validation", train=False, global_batch_size=2, seed=0)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="No TFDS dataset named 'no_such_dataset'") as e:
        pipeline.num_examples(_config(dataset="no_such_dataset"), "train")
    assert "\n" not in str(e.value)


def test_preprocess_center_and_random_crop_without_resize():
    image = np.random.default_rng(0).integers(0, 256, (28, 40, 1), dtype=np.uint8)
    scaled = image / 127.5 - 1.0
    center = pipeline.preprocess_image(tf.constant(image), image_size=28, channels=1).numpy()
    np.testing.assert_allclose(center, scaled[:, 6:34], atol=1e-6)
    for seed in range(4):
        crop = pipeline.preprocess_image(tf.constant(image), image_size=28, channels=1,
                                         crop_seed=[seed, 0], flip_seed=[seed, 1]).numpy()
        windows = [w for left in range(13) for w in (scaled[:, left:left + 28], scaled[:, left:left + 28][:, ::-1])]
        assert any(np.allclose(crop, w, atol=1e-6) for w in windows)


def test_preprocess_resizes_shorter_side_and_pads():
    constant = tf.fill([40, 60, 3], tf.constant(51, tf.uint8))
    out = pipeline.preprocess_image(constant, image_size=20, channels=3, pad_to=24).numpy()
    assert out.shape == (24, 24, 3)
    np.testing.assert_allclose(out[2:22, 2:22], 51 / 127.5 - 1, atol=1e-5)
    np.testing.assert_array_equal(out[:2], -1.0)
    np.testing.assert_array_equal(out[:, 22:], -1.0)
    # Unknown static size (as for ImageNet's JPEGs) takes the same path.
    dynamic = tf.function(
        lambda x: pipeline.preprocess_image(x, image_size=20, channels=1),
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    gray = 51 * (0.2989 + 0.5870 + 0.1140) / 127.5 - 1
    np.testing.assert_allclose(dynamic(constant).numpy(), np.full((20, 20, 1), gray), atol=1e-5)
    with pytest.raises(ValueError, match="pad_to=16 is smaller than image_size=20"):
        pipeline.preprocess_image(constant, image_size=20, channels=3, pad_to=16)
