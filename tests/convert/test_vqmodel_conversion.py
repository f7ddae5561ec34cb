"""Tests for vqdiff/convert/vqmodel.py: parity with diffusers' VQModel (the PyTorch peer) on random weights."""
import json

import jax
import numpy as np
import pytest

from vqdiff import weights
from vqdiff.convert import vqmodel as convert_vqmodel
from vqdiff.models.autoencoder import VQAutoencoder

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

BASE_CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                   latent_channels=4, num_vq_embeddings=64)
# The LDM VQ-f4 layout (attention only in the middle block), and attention at the lowest level too.
CASES = {
    "middle_attention": dict(BASE_CONFIG, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8),
    "lowest_level_attention": dict(BASE_CONFIG, down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                                   up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=16,
                                   vq_embed_dim=3),
}
EXPECTED_QUANTIZER = dict(num_codes=64, lookup_dim=None, beta=0.25, l2_normalize_codes=False, use_ema=False,
                          ema_decay=0.99, ema_epsilon=1e-5, dead_code_threshold=0.0)
EXPECTED_MODEL = dict(channels=32, channel_multipliers=(1, 2), num_res_blocks=1, latent_channels=4, dropout=0.0,
                      upsample="nearest", space_to_depth=1, dtype="float32")
EXPECTED = {
    "middle_attention": dict(
        model=dict(EXPECTED_MODEL, attention_at_lowest=False, middle_attention=True, norm_groups=8),
        quantizer=dict(EXPECTED_QUANTIZER, embedding_dim=4), data=dict(channels=3)),
    "lowest_level_attention": dict(
        model=dict(EXPECTED_MODEL, attention_at_lowest=True, middle_attention=True, norm_groups=16),
        quantizer=dict(EXPECTED_QUANTIZER, embedding_dim=3), data=dict(channels=3)),
}


def _random_vqmodel(config: dict, seed: int):
    """Tiny diffusers VQModel with every tensor random: norms, biases, zero-initialised layers, codebook."""
    torch.manual_seed(seed)
    model = diffusers.VQModel(**config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.normal_(1.0 if "norm" in name else 0.0, 0.3)
            else:
                param.normal_(0, param[0].numel() ** -0.5)
    return model


def _codes_near_latents(model, x):
    """Replaces the codebook with perturbed encoder outputs, so that the lookup picks many distinct codes."""
    with torch.no_grad():
        z = model.encode(x).latents.permute(0, 2, 3, 1).reshape(-1, model.quantize.vq_embed_dim)
        rows = torch.randperm(z.shape[0])[:model.quantize.n_e]
        codebook = model.quantize.embedding.weight
        codebook.copy_(z[rows] + 0.3 * z.std() * torch.randn_like(codebook))


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """(name, diffusers model, NCHW input tensor) for each layout in CASES."""
    model = _random_vqmodel(CASES[request.param], seed=len(request.param))
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32))
    _codes_near_latents(model, x)
    return request.param, model, x


def _encode_quantize_decode(model: VQAutoencoder, x):
    """x: [B, H, W, C] → (latent [B, h, w, D], decode(quantize(encode(x))) [B, H, W, C], indices [B, h, w])."""
    z = model.encode(x)
    z_q, aux = model.quantize(z)
    return z, model.decode(z_q), aux["indices"]


def _relative_error(got, expected) -> float:
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


def test_reconstruction_and_codes_match_diffusers(case):
    name, peer, x = case
    config = convert_vqmodel.config_from_diffusers(peer.config)
    assert config == EXPECTED[name]
    params = convert_vqmodel.params_from_diffusers(peer.state_dict(), peer.config)
    weights.check_shapes(params, convert_vqmodel.param_shapes(config), "VQAutoencoder")
    model = VQAutoencoder(model_config=config["model"], quantizer_config=config["quantizer"],
                          image_channels=config["data"]["channels"])

    with torch.no_grad():
        latents = peer.encode(x).latents
        _, _, (_, _, indices) = peer.quantize(latents)
        expected_reconstruction = peer(x).sample
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
    apply = jax.jit(lambda params, x: model.apply({"params": params}, x, method=_encode_quantize_decode))
    z, reconstruction, got_indices = apply(params, nhwc(x))

    assert _relative_error(z, nhwc(latents)) <= 1e-5
    expected_indices = indices.reshape(got_indices.shape).numpy()
    assert len(np.unique(expected_indices)) >= 16
    np.testing.assert_array_equal(np.asarray(got_indices), expected_indices)
    expected_reconstruction = nhwc(expected_reconstruction)
    assert np.abs(expected_reconstruction).max() > 0.1
    assert _relative_error(reconstruction, expected_reconstruction) <= 1e-4


def test_missing_and_unexpected_tensors_raise(case):
    _, peer, _ = case
    state = dict(peer.state_dict())
    del state["decoder.up_blocks.1.resnets.0.conv_shortcut.bias"]
    with pytest.raises(ValueError, match=r"lacks tensor decoder\.up_blocks\.1\.resnets\.0\.conv_shortcut\.bias"):
        convert_vqmodel.params_from_diffusers(state, peer.config)
    state = {**peer.state_dict(), "encoder.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"encoder\.extra\.weight"):
        convert_vqmodel.params_from_diffusers(state, peer.config)
    no_middle_attention = {**peer.config, "mid_block_add_attention": False}
    with pytest.raises(ValueError, match=r"encoder\.mid_block\.attentions\.0\.to_q\.weight"):
        convert_vqmodel.params_from_diffusers(peer.state_dict(), no_middle_attention)


def test_command_converts_saved_pipeline_folder(case, tmp_path, capsys):
    name, peer, _ = case
    peer.save_pretrained(tmp_path / "pipeline" / "vqvae")
    out = tmp_path / "vqmodel.npz"
    convert_vqmodel.main([str(tmp_path / "pipeline"), str(out)])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(EXPECTED[name]))
    expected = weights.flatten(convert_vqmodel.params_from_diffusers(peer.state_dict(), peer.config))
    got = weights.load_npz(out)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.parametrize("change,message", [
    (dict(norm_type="spatial"), "norm_type='spatial'"),
    (dict(act_fn="gelu"), "act_fn='gelu'"),
    (dict(out_channels=1), "out_channels=1"),
    (dict(block_out_channels=(32, 48)), r"block_out_channels=\[32, 48\]"),
    (dict(down_block_types=("AttnDownEncoderBlock2D", "DownEncoderBlock2D")), r"down_block_types\[0\]"),
    (dict(down_block_types=("DownEncoderBlock2D", "SimpleCrossAttnDownBlock2D")), r"down_block_types\[1\]"),
    (dict(up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D")), r"up_block_types\[0\]"),
    (dict(up_block_types=("UpDecoderBlock2D",)), "1 up_block_types"),
])
def test_config_outside_vqdiff_raises(change, message):
    with pytest.raises(ValueError, match=message):
        convert_vqmodel.config_from_diffusers({**CASES["middle_attention"], **change})
