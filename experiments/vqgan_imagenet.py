"""VQGAN tokenizer on ImageNet 256×256: taming-transformers' f16 recipe with 16384 codes (16×16 tokens).

    # on every worker of the pod (data and workdir on GCS):
    python run.py --config=experiments/vqgan_imagenet.py --workdir=gs://BUCKET/vqgan_imagenet \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
    python run.py --config=experiments/vqgan_imagenet.py --workdir=gs://BUCKET/vqgan_imagenet --mode=eval

The bar: taming-transformers' VQGAN ImageNet f16 with 16384 codes reports rFID 4.98 on the ImageNet
validation set (Esser et al. 2021, "Taming Transformers", and its model table).
Model as published: conv autoencoder with channels 128 × (1, 1, 2, 2, 4), two residual blocks per level,
attention at the 16×16 level and in the middle, 256-dimensional latents and codes, nearest + conv upsampling;
codebook trained by gradient (no EMA, no dead-code restart: taming's own choice, which leaves many codes
unused — set `quantizer.use_ema=True`, a small `quantizer.lookup_dim` or `gan.entropy_weight` > 0 for the
later fixes of codebook collapse). Losses: L1 reconstruction + LPIPS (VGG16, weight 1) + hinge GAN with a
3-layer PatchGAN of 64 channels, adaptive weight λ (clipped at 1e4) times 0.75, discriminator switched on at
step 250001 (taming waits until the autoencoder has converged), Adam (0.5, 0.9) at 4.5e-6 × batch size
for both players, as taming's base rate scaled by its batch.
Expected (not yet measured by us): several days on a v3-32 for the published schedule.
"""
from vqdiff.experiment_files import sibling_config


def get_config():
    config = sibling_config(__file__, "vqvae_imagenet")
    config.trainer = "vqgan"
    config.model.update(
        channels=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, latent_channels=256,
        attention_at_lowest=True, middle_attention=True, norm_groups=32, upsample="nearest", space_to_depth=1)
    config.quantizer.update(num_codes=16384, embedding_dim=256, beta=0.25, use_ema=False, dead_code_threshold=0.0)
    learning_rate = 4.5e-6 * config.train.batch_size
    config.train.update(
        num_steps=500_000, learning_rate=learning_rate, end_learning_rate=learning_rate, warmup_steps=0,
        weight_decay=0.0, adam_b1=0.5, adam_b2=0.9, reconstruction_loss="l1", ema_decay=0.999)
    config.gan = dict(
        disc=dict(kind="patchgan", channels=64, n_layers=3, norm="group", norm_groups=32, dtype="float32"),
        loss="hinge", start_step=250_001, adversarial_weight=0.75,
        learning_rate=learning_rate, adam_b1=0.5, adam_b2=0.9, weight_decay=0.0, grad_clip_norm=1e9,
        perceptual_weight=1.0, lpips_backbone="vgg16", adaptive_weight_max=1e4, adaptive_weight_eps=1e-4,
        r1_weight=0.0, lecam_weight=0.0, lecam_decay=0.99, entropy_weight=0.0, entropy_temperature=1.0)
    return config
