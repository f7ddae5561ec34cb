"""Tests for vqdiff/models/discriminator.py: shapes, receptive field and parameter counts worked out by hand,
numpy references for the residual block and minibatch stddev."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vqdiff.models import discriminator as disc


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _init_shapes(module, images_shape):
    """(logits shape/dtype, params shapes) without running the network."""
    logits, variables = jax.eval_shape(
        lambda: module.init_with_output(jax.random.key(0), jnp.zeros(images_shape, jnp.float32)))
    return logits, variables["params"]


def _random_params(module, images_shape, seed=0):
    """{'params': ...} drawn in numpy with fan-in scaling: JAX's own random init compiles for seconds on CPU."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "scale":
            return np.ones(leaf.shape, np.float32)
        fan_in = math.prod(leaf.shape[:-1]) if path[-1].key == "kernel" else 1
        return (rng.standard_normal(leaf.shape) / math.sqrt(fan_in)).astype(np.float32)

    return {"params": jax.tree_util.tree_map_with_path(draw, _init_shapes(module, images_shape)[1])}


def _num_params(params):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("size,patches", [(32, 2), (64, 6)])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes(size, patches, channels):
    patchgan, _ = _init_shapes(disc.build_discriminator({"kind": "patchgan"}), (2, size, size, channels))
    assert patchgan.shape == (2, patches, patches, 1) and patchgan.dtype == jnp.float32
    stylegan, _ = _init_shapes(disc.build_discriminator({"kind": "stylegan"}), (2, size, size, channels))
    assert stylegan.shape == (2,) and stylegan.dtype == jnp.float32


@pytest.mark.parametrize("n_layers,side", [(1, 30), (2, 14), (3, 6), (4, 2)])
def test_patchgan_depth_sets_output_side_and_number_of_convs(n_layers, side):
    # n_layers stride-2 convs halve 64 each; the two stride-1 4×4 convs with padding 1 take 1 each.
    module = disc.PatchGANDiscriminator(channels=4, n_layers=n_layers, norm="none")
    logits, params = _init_shapes(module, (1, 64, 64, 3))
    assert logits.shape == (1, side, side, 1)
    assert sorted(params) == sorted(f"conv_{i}" for i in range(n_layers + 2))


def test_patchgan_width_doubles_and_caps_at_eight_times():
    _, params = _init_shapes(disc.PatchGANDiscriminator(channels=2, n_layers=5, norm="none"), (1, 128, 128, 3))
    out_widths = [params[f"conv_{i}"]["kernel"].shape[-1] for i in range(7)]
    assert out_widths == [2, 4, 8, 16, 16, 16, 1]
    assert all(params[f"conv_{i}"]["kernel"].shape[:2] == (4, 4) for i in range(7))


@pytest.mark.parametrize("n_layers", [1, 2])
def test_patchgan_receptive_field(n_layers):
    # Jumps 1, 2, …, 2^n over n stride-2 and two stride-1 4×4 convs: field 1 + 3(2^n − 1) + 2·3·2^n
    # = 9·2^n − 2 pixels, starting 3·2^n − 1 pixels (the paddings) before output index · 2^n.
    size = 48
    module = disc.PatchGANDiscriminator(channels=4, n_layers=n_layers, norm="none")
    images = jnp.asarray(_normal(0, 1, size, size, 1))
    params = _random_params(module, images.shape)
    index = (size // 2**n_layers - 2) // 2
    grad = jax.jit(jax.grad(lambda x: module.apply(params, x)[0, index, index, 0]))(images)
    rows = np.flatnonzero(np.abs(np.asarray(grad)[0, :, :, 0]).sum(axis=1))
    cols = np.flatnonzero(np.abs(np.asarray(grad)[0, :, :, 0]).sum(axis=0))
    start = index * 2**n_layers - (3 * 2**n_layers - 1)
    expected = np.arange(start, start + 9 * 2**n_layers - 2)
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(cols, expected)


def test_patchgan_parameter_count_by_hand():
    # channels 4, n_layers 2, RGB: conv_0 3→4, conv_1 4→8 (stride 2), conv_2 8→16 (stride 1), conv_3 16→1.
    kernels = 16 * (3 * 4 + 4 * 8 + 8 * 16 + 16 * 1)
    no_norm = kernels + 4 + 8 + 16 + 1                    # every conv has a bias
    with_norm = kernels + 4 + 1 + 2 * 8 + 2 * 16          # conv_1, conv_2 lose their bias to a scale and shift
    counts = {norm: _num_params(_init_shapes(disc.PatchGANDiscriminator(channels=4, n_layers=2, norm=norm),
                                             (1, 32, 32, 3))[1])
              for norm in disc.NORMS}
    assert counts == {"none": no_norm, "group": with_norm, "layer": with_norm} == {
        "none": 3037, "group": 3061, "layer": 3061}


def test_norm_options_change_params_not_shapes():
    results = {norm: _init_shapes(disc.PatchGANDiscriminator(channels=8, n_layers=2, norm=norm, norm_groups=4),
                                  (2, 32, 32, 3))
               for norm in disc.NORMS}
    assert {logits.shape for logits, _ in results.values()} == {(2, 6, 6, 1)}
    none_params = results["none"][1]
    assert sorted(none_params) == ["conv_0", "conv_1", "conv_2", "conv_3"]
    assert all("bias" in layer for layer in none_params.values())
    for norm in ("group", "layer"):
        params = results[norm][1]
        assert {params[f"norm_{i}"]["scale"].shape for i in (1, 2)} == {(16,), (32,)}
        assert "bias" not in params["conv_1"] and "bias" not in params["conv_2"]


def test_stylegan_parameter_count_by_hand():
    # channels 4, max 8, 8×8 grey → one block to 4×4. from_rgb 1→4; block conv_0 4→4, conv_1 4→8,
    # skip 4→8 (no bias); conv_out 3×3 (8 + stddev)→8; dense 4·4·8→8; logits 8→1.
    base = (1 * 4 + 4) + (9 * 4 * 4 + 4) + (9 * 4 * 8 + 8) + 4 * 8 + (128 * 8 + 8) + (8 + 1)
    for group_size, conv_out_inputs in [(4, 9), (0, 8)]:
        module = disc.StyleGANDiscriminator(channels=4, max_channels=8, mbstd_group_size=group_size)
        _, params = _init_shapes(module, (4, 8, 8, 1))
        assert _num_params(params) == base + 9 * conv_out_inputs * 8 + 8
    assert base + 9 * 9 * 8 + 8 == 2181


@pytest.mark.parametrize("size,num_blocks,final", [(32, 3, 4), (256, 6, 4), (28, 2, 7), (30, 1, 15)])
def test_stylegan_blocks_follow_image_size(size, num_blocks, final):
    module = disc.StyleGANDiscriminator(channels=2, max_channels=4)
    logits, params = _init_shapes(module, (1, size, size, 3))
    assert logits.shape == (1,)
    assert sorted(k for k in params if k.startswith("block_")) == [f"block_{i}" for i in range(num_blocks)]
    assert params["dense"]["kernel"].shape[0] == final * final * 4
    assert [params[f"block_{i}"]["conv_1"]["kernel"].shape[-1] for i in range(num_blocks)] == \
        [min(2 * 2 ** (i + 1), 4) for i in range(num_blocks)]


def test_stylegan_num_blocks_from_config():
    module = disc.build_discriminator({"kind": "stylegan", "channels": 2, "num_blocks": 2})
    _, params = _init_shapes(module, (1, 32, 32, 3))
    assert "block_1" in params and "block_2" not in params
    assert params["dense"]["kernel"].shape[0] == 8 * 8 * 8
    with pytest.raises(ValueError, match="28×28 cannot be halved num_blocks=3"):
        _init_shapes(disc.StyleGANDiscriminator(channels=2, num_blocks=3), (1, 28, 28, 3))


def test_residual_block_skip_is_pooled_projection_over_sqrt2():
    # With the residual convs zeroed the branch is LeakyReLU(0) = 0, leaving the skip alone.
    x = _normal(2, 2, 4, 6, 3)
    block = disc.ResidualBlock(features=5)
    params = _random_params(block, x.shape)["params"]
    params = jax.tree.map(jnp.zeros_like, {k: v for k, v in params.items() if k != "skip"}) | {
        "skip": params["skip"]}
    out = jax.jit(block.apply)({"params": params}, x)
    pooled = x.reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))
    expected = pooled @ np.asarray(params["skip"]["kernel"])[0, 0] / np.sqrt(2.0)
    assert out.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_matches_numpy():
    # B = 6, group_size 4 → groups of 3 (the largest divisor of 6 up to 4): {0, 2, 4} and {1, 3, 5}.
    x = _normal(3, 6, 2, 3, 4)
    out = np.asarray(jax.jit(disc.minibatch_stddev, static_argnums=1)(x, 4))
    assert out.shape == (6, 2, 3, 5)
    np.testing.assert_array_equal(out[..., :4], x)
    for members in ([0, 2, 4], [1, 3, 5]):
        x64 = x[members].astype(np.float64)
        expected = np.sqrt(x64.var(axis=0) + 1e-8).mean()
        np.testing.assert_allclose(out[members, :, :, 4], expected, rtol=1e-5)


@pytest.mark.parametrize("config,independent", [
    ({"kind": "patchgan", "channels": 4, "n_layers": 2, "norm": "group", "norm_groups": 2}, True),
    ({"kind": "patchgan", "channels": 4, "n_layers": 2, "norm": "layer"}, True),
    ({"kind": "stylegan", "channels": 4, "max_channels": 8, "mbstd_group_size": 0}, True),
    ({"kind": "stylegan", "channels": 4, "max_channels": 8, "mbstd_group_size": 2}, False),
])
def test_logits_depend_on_other_examples_only_through_minibatch_stddev(config, independent):
    module = disc.build_discriminator(config)
    images = jnp.asarray(_normal(4, 2, 16, 16, 3))
    params = _random_params(module, images.shape)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(module.apply(params, x)[0])))(images)
    assert np.abs(np.asarray(grad[0])).max() > 0
    # Per-example norms make the second image's gradient exactly zero; the stddev channel does not.
    assert (np.abs(np.asarray(grad[1])).max() == 0) == independent


def test_build_discriminator_reads_fields_and_rejects_bad_values():
    config = ml_collections.ConfigDict({"kind": "patchgan", "channels": 8, "n_layers": 2, "norm": "layer",
                                        "dtype": "bfloat16", "learning_rate": 1e-4})
    module = disc.build_discriminator(config)
    assert isinstance(module, disc.PatchGANDiscriminator)
    assert (module.channels, module.n_layers, module.norm, module.dtype) == (8, 2, "layer", jnp.bfloat16)
    logits, _ = _init_shapes(module, (1, 32, 32, 3))
    assert logits.dtype == jnp.float32
    assert isinstance(disc.build_discriminator({"kind": "stylegan"}), disc.StyleGANDiscriminator)
    with pytest.raises(ValueError, match="kind='resnet'.*patchgan, stylegan"):
        disc.build_discriminator({"kind": "resnet"})
    with pytest.raises(ValueError, match="kind=None"):
        disc.build_discriminator({"channels": 8})
    with pytest.raises(ValueError, match="norm='batch'.*group, layer, none"):
        disc.build_discriminator({"kind": "patchgan", "norm": "batch"})
