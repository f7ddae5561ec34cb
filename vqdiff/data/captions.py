"""Captions of class-labelled images, written from templates × class names.

Training draws one of TRAIN_TEMPLATES per image and step; evaluation prompts come from HELD_OUT_TEMPLATES,
which training never sees, so prompt accuracy measures whether the model follows the text rather than
memorising a fixed set of sentences. The two sets are disjoint (checked on import).
"""
from typing import Sequence

FASHION_MNIST_CLASSES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")

# {a} is the article of the class name ('a' or 'an'), {name} the class name.
TRAIN_TEMPLATES = (
    "a photo of {a} {name}",
    "a black and white picture of {a} {name}",
    "{a} {name}",
    "a grayscale image of {a} {name}",
    "a small photo of the {name}",
    "a low resolution photo of {a} {name}",
    "a product shot of {a} {name}",
    "{a} {name} on a black background",
)
HELD_OUT_TEMPLATES = (
    "an image showing {a} {name}",
    "a blurry picture of the {name}",
    "a catalogue photo of {a} {name}",
    "this is {a} {name}",
)
assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
TEMPLATE_SETS = {"train": TRAIN_TEMPLATES, "held_out": HELD_OUT_TEMPLATES}


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def fill(template: str, name: str) -> str:
    return template.format(a=article(name), name=name)


def class_captions(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """[num_classes · num_templates] captions, class-major: caption c·T + k is template k of class c."""
    return [fill(template, name) for name in class_names for template in templates]


def class_of_caption(index, num_templates: int):
    """Class id of caption `index` in `class_captions` order (ints or numpy arrays)."""
    return index // num_templates


def image_caption_batches(data_config, split: str, batch_size: int):
    """One in-order pass over an image–caption TFDS dataset (e.g. `coco_captions`): batches of
    {'image' [b, S, S, C] float32 in [-1, 1] (centre crops, see `pipeline.preprocess_image`),
    'captions' [b, K] str (each image's captions, K the batch's largest count, '' after the last)}.

    `data_config.caption_feature` names the captions' text feature, e.g. 'captions/text'.
    """
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from vqdiff.data import pipeline

    feature_path = data_config.caption_feature.split("/")

    def decode(example):
        captions = example
        for key in feature_path:
            captions = captions[key]
        image = pipeline.preprocess_image(example["image"], image_size=data_config.image_size,
                                          channels=data_config.channels, pad_to=data_config.pad_to)
        return {"image": image, "captions": captions}

    ds = tfds.load(data_config.dataset, split=split, data_dir=data_config.data_dir, shuffle_files=False)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.padded_batch(batch_size, padding_values={"image": 0.0, "captions": ""}).prefetch(2)
    for batch in ds.as_numpy_iterator():
        yield dict(image=batch["image"], captions=np.char.decode(batch["captions"].astype(bytes), "utf-8"))
