"""The image–caption path of text-to-image training (coco_captions), offline on TFDS mock data: reading
images with their captions, the latent + caption cache, and per-step caption draws."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vqdiff.data import captions
from vqdiff.models import text
from vqdiff.train import text_conditioning

NUM_EXAMPLES = 6
BYTES = dict(kind="bytes", max_length=64, width=8, depth=1, num_heads=2, mlp_ratio=2)


def coco_config():
    config = ml_collections.ConfigDict(dict(
        seed=3, data=dict(dataset="coco_captions", data_dir=None, train_split="train", image_size=8, pad_to=0,
                          channels=1, caption_feature="captions/text"),
        tokenizer=dict(cache_flips=False), train=dict(batch_size=16), text=dict(caption_dropout_prob=0.3)))
    return config


class SubsamplingTokenizer:
    """Stands in for the frozen tokenizer: 'latents' are every 4th pixel."""
    workdir, step, latents = "/fake", 1, "continuous"

    def encode(self, images):
        return np.asarray(images)[:, ::4, ::4]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """(captions of each mock example read straight from TFDS, the cache, its workdir)."""
    config = coco_config()
    workdir = str(tmp_path_factory.mktemp("coco"))
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        expected = [[c.decode() for c in ex["captions"]["text"]]
                    for ex in tfds.as_numpy(tfds.load("coco_captions", split="train", shuffle_files=False))]
        cache = text_conditioning.load_or_build_dataset_cache(config, SubsamplingTokenizer(), workdir,
                                                              batch_size=4)
    return expected, cache, workdir


def test_cache_holds_each_image_with_its_own_captions(coco):
    expected, cache, workdir = coco
    assert cache["latents"].shape == (NUM_EXAMPLES, 2, 2, 1)
    assert cache["counts"].tolist() == [len(c) for c in expected]
    for row, count, want in zip(cache["captions"], cache["counts"], expected):
        assert row[:count].tolist() == want and set(row[count:].tolist()) <= {""}
    # A second call reads the file instead of TFDS (no mock data here).
    again = text_conditioning.load_or_build_dataset_cache(coco_config(), SubsamplingTokenizer(), workdir)
    np.testing.assert_array_equal(again["captions"], cache["captions"])


def test_each_step_draws_one_of_the_images_own_captions_or_drops_it(coco):
    expected, cache, _ = coco
    config = coco_config()
    encoder = text_conditioning.CaptionEncoder(BYTES)
    tokenizer = text.ByteTokenizer(BYTES["max_length"])
    batches = text_conditioning.dataset_caption_batches(cache, encoder, config)
    dropped = total = 0
    for step in range(8):
        batch = next(batches)
        for image, caption in zip(batch["label"], tokenizer.decode(batch["text"]["token_ids"])):
            np.testing.assert_array_equal(batch["latent"][list(batch["label"]).index(image)], cache["latents"][image])
            total += 1
            if caption == "":
                dropped += 1
            else:
                assert caption in [c[:BYTES["max_length"] - 2] for c in expected[image]]
    assert 0.15 < dropped / total < 0.45
    resumed = next(text_conditioning.dataset_caption_batches(cache, encoder, config, start_step=7))
    np.testing.assert_array_equal(resumed["text"]["token_ids"], batch["text"]["token_ids"])


def test_read_pass_yields_centre_crops_in_range():
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        batch = next(captions.image_caption_batches(coco_config().data, "train", 4))
    assert batch["image"].shape == (4, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["captions"].dtype.kind == "U"
