"""Caption templates of class-labelled datasets (vqdiff/data/captions.py)."""
import numpy as np

from vqdiff.data import captions


def test_held_out_templates_are_disjoint_from_training_ones_in_every_caption():
    names = captions.FASHION_MNIST_CLASSES
    train = captions.class_captions(names, captions.TRAIN_TEMPLATES)
    held_out = captions.class_captions(names, captions.HELD_OUT_TEMPLATES)
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert not set(train) & set(held_out)


def test_caption_order_and_class_of_caption():
    got = captions.class_captions(("ankle boot", "bag"), ("a photo of {a} {name}", "{a} {name}!"))
    assert got == ["a photo of an ankle boot", "an ankle boot!", "a photo of a bag", "a bag!"]
    np.testing.assert_array_equal(captions.class_of_caption(np.arange(4), 2), [0, 0, 1, 1])
