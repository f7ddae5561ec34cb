"""A small image classifier, the judge of conditional samples: does a sample show the requested class?

Images [B, H, W, C] in [-1, 1] → logits [B, num_classes]. Two space-to-depth stages keep every
convolution at low resolution with many channels (fast on XLA:CPU; kernel gradients as per-tap
matmuls there, see vqdiff.models.im2col), then a two-layer head.
"""
import flax.linen as nn
import jax.numpy as jnp

from vqdiff.models import im2col
from vqdiff.models.autoencoder import space_to_depth


class Classifier(nn.Module):
    num_classes: int
    channels: int = 64

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        b, h, w, _ = x.shape
        pad_h, pad_w = (-h) % 4, (-w) % 4   # both stages halve the side: pad to a multiple of 4
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-1.0)
        x = nn.relu(im2col.Conv(self.channels, (3, 3), name="conv_1")(space_to_depth(x, 2)))
        x = nn.relu(im2col.Conv(self.channels, (3, 3), name="conv_2")(x))
        x = nn.relu(im2col.Conv(2 * self.channels, (3, 3), name="conv_3")(space_to_depth(x, 2)))
        x = nn.relu(im2col.Conv(2 * self.channels, (3, 3), name="conv_4")(x))
        x = nn.relu(nn.Dense(256, name="hidden")(x.reshape(b, -1)))
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="logits")(x)
