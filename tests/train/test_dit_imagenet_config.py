"""The ImageNet DiT config describes the published DiT-XL/2: its parameter count and forward FLOPs."""
import jax
import jax.numpy as jnp
import numpy as np

from vqdiff.train.dit_trainer import build_dit

from support import load_experiment


def test_dit_imagenet_config_is_dit_xl_2_with_its_published_size():
    config = load_experiment("dit_imagenet")
    model = build_dit(config, (32, 32, 4))
    x, t, y = jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y))["params"]
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    # Peebles & Xie (2023), Table 4: DiT-XL/2 has 675 M parameters and costs 118.6 GFLOPs per forward pass
    # (they count a multiply-add as one FLOP; XLA counts two).
    assert abs(num_params - 675e6) < 1e6, num_params
    lowered = jax.jit(lambda p: model.apply({"params": p}, x, t, y)).lower(params)
    flops = lowered.cost_analysis()["flops"]
    assert abs(flops / 2 - 118.6e9) / 118.6e9 < 0.02, flops
