import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from vqdiff.train.optimizer import decay_mask, learning_rate_schedule


def train_config(**overrides):
    return ConfigDict(dict(learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=10, num_steps=110,
                           grad_clip_norm=1.0, adam_b1=0.9, adam_b2=0.99, weight_decay=0.1, **overrides))


def test_schedule_warms_up_linearly_then_follows_cosine():
    schedule = learning_rate_schedule(train_config())
    np.testing.assert_allclose(float(schedule(0)), 0.0)
    np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
    # halfway through the decay: end + (peak − end)·(1 + cos(π/2))/2
    np.testing.assert_allclose(float(schedule(60)), 1e-5 + (1e-3 - 1e-5) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(110)), 1e-5, rtol=1e-5)


def test_weight_decay_only_on_kernels():
    params = {"conv": {"kernel": jnp.zeros((3, 3, 1, 2)), "bias": jnp.zeros(2)},
              "quantizer": {"codebook": jnp.zeros((4, 2))}, "norm": {"scale": jnp.zeros(2)}}
    mask = decay_mask(params)
    assert mask == {"conv": {"kernel": True, "bias": False}, "quantizer": {"codebook": False},
                    "norm": {"scale": False}}
