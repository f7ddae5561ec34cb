"""VQGAN tokenizer on Fashion-MNIST: the VQ-VAE default plus LPIPS and a small PatchGAN, same wall clock.

    python run.py --config=experiments/vqgan_fashion_mnist.py --workdir=workdirs/vqgan_fmnist
    python run.py --config=experiments/vqgan_fashion_mnist.py --workdir=workdirs/vqgan_fmnist --mode=eval

Data, autoencoder, quantizer, optimizer and eval: those of experiments/vqvae_fashion_mnist.py.
Added: AlexNet LPIPS (perceptual weight 1) on the 32×32 padded images; a PatchGAN of 16 channels and
2 layers with group norm (each logit sees a 34-pixel patch; 32 channels made the whole step 1.7× slower),
hinge loss, Adam (0.5, 0.9) as taming's, switched on at half of the steps with adversarial weight 0.1
(times the adaptive λ on the decoder's last kernel). Taming's 0.8 from a quarter of the steps wrecked the
young decoder here: at step 400 of 1400, 50 steps after the start, test-batch PSNR fell from 19.3 to 13.0
and perplexity from 648 to 254 (λ ≈ 1.1); short schedules (MaskGIT, MAGVIT) likewise use ≈ 0.1.
from vqdiff.experiment_files import sibling_config

NUM_STEPS: a VQGAN step costs more than a VQ-VAE step (LPIPS and the discriminator), so the step count is
scaled to the VQ-VAE's wall clock: `python benchmarks/vqgan_step_cost.py` measured the VQGAN step at 1.62×
the VQ-VAE step (290 vs 179 ms, batch 32, interleaved on a 2-core CPU) → 2300 / 1.62 ≈ 1420 steps.
Expected: lower LPIPS and rFID than the VQ-VAE, PSNR within 2 dB of it, codebook usage ≥ 90 %.
"""
from vqdiff.experiment_files import sibling_config

NUM_STEPS = 1400


def get_config(variant: str = ""):
    """`variant`: '' (the default run) or 'tiny' (a seconds-long model and schedule, for tests)."""
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown variant {variant!r} of vqgan_fashion_mnist: use '' or 'tiny'")
    config = sibling_config(__file__, "vqvae_fashion_mnist", variant)
    config.trainer = "vqgan"
    config.gan = dict(
        disc=dict(kind="patchgan", channels=16, n_layers=2, norm="group", norm_groups=8, dtype="float32"),
        loss="hinge", start_step=NUM_STEPS // 2, adversarial_weight=0.1,
        learning_rate=2e-4, adam_b1=0.5, adam_b2=0.9, weight_decay=0.0, grad_clip_norm=1.0,
        perceptual_weight=1.0, lpips_backbone="alexnet", adaptive_weight_max=1e4, adaptive_weight_eps=1e-4,
        r1_weight=0.0, lecam_weight=0.0, lecam_decay=0.99, entropy_weight=0.0, entropy_temperature=1.0)
    if variant == "tiny":
        config.gan.disc.update(channels=8, norm_groups=4)
        config.gan.start_step = 1
    else:
        config.train.num_steps = NUM_STEPS
    return config
