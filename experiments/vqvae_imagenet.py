"""VQ-VAE tokenizer on ImageNet 256×256, f8 (32×32 codes), EMA codebook — sized for a TPU v3-32 pod.

    # on every worker of the pod (data and workdir on GCS):
    python run.py --config=experiments/vqvae_imagenet.py --workdir=gs://BUCKET/vqvae_imagenet \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
    python run.py --config=experiments/vqvae_imagenet.py --workdir=gs://BUCKET/vqvae_imagenet --mode=eval

Data: TFDS `imagenet2012` (prepare it once with the ILSVRC2012 tar files in `manual_dir`).
Model: taming/LDM-style conv autoencoder, channels 128 × (1, 1, 2, 4), two residual blocks per level,
attention at the lowest resolution, nearest + conv upsampling (the LDM layout); 16384 codes of dimension 4
(LDM's VQ-f8 code space), EMA codebook with dead-code restart; global batch 256, AdamW 2e-4 → cosine.
Expected (not yet measured by us): about a day on a v3-32 for 200k steps. As a bar, LDM's VQ-regularised
f8 first stage with 16384 codes reports PSNR ≈ 23.1 and rFID ≈ 1.14 on the ImageNet validation set
(Rombach et al. 2022, Table 8) — but it is a VQGAN (perceptual + adversarial losses); this plain VQ-VAE
should approach its PSNR with a much worse rFID (see experiments/vqgan_imagenet.py once it exists).
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
    config = ml_collections.ConfigDict()
    config.trainer = "tokenizer"
    config.seed = 0

    config.data = dict(
        dataset="imagenet2012", data_dir=placeholder(str), manual_dir=placeholder(str),
        train_split="train", eval_split="validation",
        image_size=256, pad_to=0, channels=3, random_flip=True,
        shuffle_buffer=50_000, tf_threads=0)

    config.model = dict(
        channels=128, channel_multipliers=(1, 1, 2, 4), num_res_blocks=2, latent_channels=256,
        attention_at_lowest=True, middle_attention=True, norm_groups=32, dropout=0.0, upsample="nearest",
        space_to_depth=1, dtype="float32")

    config.quantizer = dict(
        num_codes=16384, embedding_dim=4, lookup_dim=placeholder(int), beta=0.25, l2_normalize_codes=False,
        use_ema=True, ema_decay=0.99, ema_epsilon=1e-5, dead_code_threshold=0.01)

    config.train = dict(
        num_steps=200_000, batch_size=256, learning_rate=2e-4, end_learning_rate=1e-5, warmup_steps=5_000,
        grad_accum_steps=1,  # micro-batches per update (same result as one big batch, less memory)
        weight_decay=1e-4, adam_b1=0.9, adam_b2=0.99, grad_clip_norm=1.0, ema_decay=0.999,
        reconstruction_loss="mse", skip_nonfinite=False,
        log_every=100, grid_every=5_000, checkpoint_every=5_000, keep_checkpoints=3, keep_every=50_000)

    config.eval = dict(batch_size=256, use_ema_params=False, num_grid_images=32,
                       lpips_backbone="alexnet", rfid_num_images=50_000)

    # Devices as a (data, fsdp, model) grid, e.g. --config.mesh.shape="(-1,8,1)" on a pod. The batch splits
    # over data × fsdp; arrays of at least fsdp_min_size elements (parameters, EMA and Adam moments) split
    # over fsdp along their largest divisible dimension; param_rules (regex on paths like
    # 'params/encoder/conv_in/kernel' → PartitionSpec) place arrays first. Default: all devices on data.
    config.mesh = dict(shape=(-1, 1, 1), axes=("data", "fsdp", "model"), batch_axes=("data", "fsdp"),
                       param_rules=(), fsdp_min_size=2**20)
    return config
