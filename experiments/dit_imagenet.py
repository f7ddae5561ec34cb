"""Class-conditional DiT-XL/2 on ImageNet 256×256, in the 32×32×4 latent space of the f8 tokenizer of
vqvae_imagenet.py (or a VQGAN, via --config.tokenizer.workdir) — the DiT paper's recipe.

    # on every worker of the pod (data and workdirs on GCS):
    python run.py --config=experiments/dit_imagenet.py --workdir=gs://BUCKET/dit_imagenet \
        --config.tokenizer.workdir=gs://BUCKET/vqvae_imagenet --config.data.data_dir=gs://BUCKET/tensorflow_datasets
    python run.py --config=experiments/dit_imagenet.py --workdir=gs://BUCKET/dit_imagenet --mode=sample \
        --config.sample.labels='(207, 360, 387, 974, 88, 979, 417, 279)'
    python run.py --config=experiments/dit_imagenet.py --workdir=gs://BUCKET/dit_imagenet --mode=eval

Recipe (Peebles & Xie 2023): DiT-XL/2 (28 blocks, width 1152, 16 heads, patch 2 → 256 tokens),
learned σ with the hybrid loss, ε-prediction, linear schedule of 1000 steps, AdamW at a constant 1e-4,
no weight decay, global batch 256, EMA 0.9999, label dropout 0.1; sampling: 250 DDPM steps, guidance 1.5.
Published: FID-50K 2.27 with guidance 1.5 (9.62 without) after 7M steps, 119 GFLOPs per forward pass,
on the latents of the SD-ft-EMA KL-f8 autoencoder. With a VQ tokenizer expect a worse FID (its rFID bounds
it). Latents are encoded each step (the dataset is too large to cache usefully on the host).
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
    config = ml_collections.ConfigDict()
    config.trainer = "dit"
    config.seed = 0

    # latent_scale 'global': one scale factor over all channels, as LDM and DiT.
    config.tokenizer = dict(workdir="gs://BUCKET/vqvae_imagenet", latents="continuous", use_ema_params=False,
                            latent_cache=False, cache_flips=False, latent_scale="global")

    config.data = dict(
        dataset="imagenet2012", data_dir=placeholder(str), manual_dir=placeholder(str),
        train_split="train", eval_split="validation",
        image_size=256, pad_to=0, channels=3, random_flip=True,
        shuffle_buffer=50_000, tf_threads=0)

    config.model = dict(variant="XL/2", depth=28, hidden_size=1152, patch_size=2, num_heads=16,
                        mlp_ratio=4.0, num_classes=1000, class_dropout_prob=0.1, learn_sigma=True,
                        dtype="bfloat16", remat=True)

    config.diffusion = dict(schedule="linear", num_timesteps=1000, prediction="eps")

    config.train = dict(
        num_steps=7_000_000, batch_size=256, learning_rate=1e-4, end_learning_rate=1e-4, warmup_steps=0,
        grad_accum_steps=1,  # micro-batches per update (same result as one big batch, less memory)
        weight_decay=0.0, adam_b1=0.9, adam_b2=0.999, grad_clip_norm=1e9, ema_decay=0.9999,
        skip_nonfinite=False, log_every=100, grid_every=50_000, checkpoint_every=50_000, keep_checkpoints=3,
        keep_every=500_000)

    config.sample = dict(labels=(), num_samples=64, sampler="ddpm", num_steps=250, eta=0.0,
                         guidance_scale=1.5, batch_size=64, seed=0, use_ema_params=True)
    config.train_grid = dict(per_class=1, sampler="ddim", num_steps=50, eta=0.0, guidance_scale=4.0,
                             batch_size=64, use_ema_params=True)

    config.eval = dict(num_samples=50_000, fid_reference_images=50_000, seed=1)
    config.classifier = dict(num_classes=1000, channels=128, num_steps=100_000, batch_size=256,
                             learning_rate=1e-3)

    # Devices as a (data, fsdp, model) grid, e.g. --config.mesh.shape="(-1,8,1)" on a pod. The batch splits
    # over data × fsdp; arrays of at least fsdp_min_size elements (parameters, EMA and Adam moments) split
    # over fsdp along their largest divisible dimension; param_rules (regex on paths like
    # 'params/encoder/conv_in/kernel' → PartitionSpec) place arrays first. Default: all devices on data.
    config.mesh = dict(shape=(-1, 1, 1), axes=("data", "fsdp", "model"), batch_axes=("data", "fsdp"),
                       param_rules=(), fsdp_min_size=2**20)
    return config
