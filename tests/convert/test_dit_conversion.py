"""Tests for vqdiff/convert/dit.py: output parity with diffusers' DiTTransformer2DModel (the PyTorch peer)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff import weights
from vqdiff.convert import dit as convert_dit
from vqdiff.models.dit import DiT, dit_hyperparameters

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TINY_CONFIG = dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                   sample_size=8, patch_size=2, num_embeds_ada_norm=10)


def _tie_embedders(model):
    """Copies block 0's timestep/label embedder into every block, as in converted official checkpoints."""
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())


@pytest.fixture(scope="module")
def diffusers_dit():
    """Tiny diffusers DiT, every tensor random (adaLN and output layers included), embedders tied."""
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(**TINY_CONFIG).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3 if param.ndim == 1 else param[0].numel() ** -0.5)
    _tie_embedders(model)
    return model


def test_output_matches_diffusers(diffusers_dit):
    kwargs = convert_dit.dit_kwargs_from_diffusers_config(diffusers_dit.config)
    assert kwargs == dict(input_size=8, in_channels=4, patch_size=2, hidden_size=64, depth=2, num_heads=4,
                          num_classes=10, learn_sigma=True, timestep_freq_shift=1.0)
    params = convert_dit.params_from_diffusers(diffusers_dit.state_dict())
    model = DiT(**kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
    t, y = np.array([0, 17, 500, 999]), np.array([3, 0, 9, 10])  # 10 = the null label
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y))["params"]
    weights.check_shapes(params, shapes, "DiT")

    with torch.no_grad():
        expected = diffusers_dit(torch.from_numpy(x).permute(0, 3, 1, 2), timestep=torch.from_numpy(t),
                                 class_labels=torch.from_numpy(y)).sample.permute(0, 2, 3, 1).numpy()
    got = np.asarray(jax.jit(model.apply)({"params": params}, x, t, y))
    scale = np.abs(expected).max()
    assert scale > 0.1
    assert np.abs(got - expected).max() / scale <= 1e-4


def test_differing_embedder_copies_raise(diffusers_dit):
    state = dict(diffusers_dit.state_dict())
    name = "transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"
    state[name] = state[name] + 1e-3
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        convert_dit.params_from_diffusers(state)
    params = convert_dit.params_from_diffusers(state, atol=2e-3)
    np.testing.assert_array_equal(params["y_embedder"]["embedding_table"]["embedding"],
                                  diffusers_dit.state_dict()[name.replace(".1.", ".0.")].numpy())


def test_missing_and_unexpected_tensors_raise(diffusers_dit):
    state = dict(diffusers_dit.state_dict())
    del state["proj_out_2.bias"]
    with pytest.raises(ValueError, match="lacks tensor proj_out_2.bias"):
        convert_dit.params_from_diffusers(state)
    state = {**diffusers_dit.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="extra.weight"):
        convert_dit.params_from_diffusers(state)


def test_command_converts_saved_pipeline_folder(diffusers_dit, tmp_path, capsys):
    diffusers_dit.save_pretrained(tmp_path / "pipeline" / "transformer")
    out = tmp_path / "dit.npz"
    convert_dit.main([str(tmp_path / "pipeline"), str(out)])
    kwargs = json.loads(capsys.readouterr().out)
    assert kwargs == convert_dit.dit_kwargs_from_diffusers_config(diffusers_dit.config)
    expected = weights.flatten(convert_dit.params_from_diffusers(diffusers_dit.state_dict()))
    got = weights.load_npz(out)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_config_outside_dit_raises():
    with pytest.raises(ValueError, match="out_channels=12"):
        convert_dit.dit_kwargs_from_diffusers_config({**TINY_CONFIG, "out_channels": 12})
    with pytest.raises(ValueError, match="norm_type"):
        convert_dit.dit_kwargs_from_diffusers_config({**TINY_CONFIG, "norm_type": "ada_norm"})
    no_sigma = convert_dit.dit_kwargs_from_diffusers_config({**TINY_CONFIG, "out_channels": None})
    assert not no_sigma["learn_sigma"]


def test_diffusers_s2_count_is_ours_plus_embedder_copies():
    with torch.device("meta"):
        peer = diffusers.DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, num_layers=12,
                                               in_channels=4, out_channels=8, sample_size=32, patch_size=2)
    peer_count = sum(p.numel() for p in peer.parameters())
    embedder_count = sum(p.numel() for p in peer.transformer_blocks[0].norm1.emb.parameters())
    model = DiT(input_size=32, in_channels=4, **dit_hyperparameters("S/2"))
    x, t, y = jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y))
    ours = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    assert round(peer_count / 1e6, 1) == 39.8
    assert peer_count - 11 * embedder_count == ours
