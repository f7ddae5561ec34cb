"""Training-step throughput of vqdiff's DiT or VQ autoencoder, optionally beside the diffusers peer.

    nice -n 19 python benchmarks/throughput.py --model=dit --variant=S/2 --batch=16 --peer=diffusers
    nice -n 19 python benchmarks/throughput.py --model=autoencoder --batch=16 --peer=diffusers

Ours is the real jitted update of the trainer (`dit_trainer.train_step` on 32×32×4 latents, or
`tokenizer_trainer.train_step` on 64×64×3 images): forward, loss, gradients, clipped AdamW, EMA
params. The peer is diffusers' `DiTTransformer2DModel` (or `VQModel`) of the same configuration (mapped
as in vqdiff.convert), trained with the same loss terms, clipping, `torch.optim.AdamW` and an EMA copy,
on as many threads as XLA's CPU backend uses (all cores). The autoencoders match layer for layer (the same
function and parameters: nearest + conv upsampling on both sides, `config_from_diffusers`). On CPU ours
computes each upsampling convolution at the input resolution with 4/9 of the multiply-adds
(vqdiff.models.nearest_upsample_conv, so its step counts 11 % fewer FLOPs than the peer's), 1×1 convolutions as
dots (vqdiff.models.im2col) and GroupNorm from per-channel sums (vqdiff.models.group_norm);
benchmarks/autoencoder_layer_cost.py times each of these against the plain form. Our step is compiled with the
trainers' XLA:CPU options (vqdiff.compiler_options: no YNNPACK convolutions; --compiler_options=default for
XLA's own).
With --grad_accum_steps=k both compute the batch's update from k equal micro-batches (the VQModel peer
always takes the whole batch). Rounds alternate between the two after one untimed warm-up step each
(machine speed drifts, so only numbers from one run are compared).

Reported (one JSON line): images_per_sec and sec_per_step (mean over rounds), flops_per_sec (the
compiled step's FLOPs from XLA's cost analysis ÷ its time; with --grad_accum_steps, those of the same update
in one pass, since the analysis counts a loop body once), peak_fraction (that ÷ the float32 matmul
ceiling: a 2048³ matmul probe, best of 3, taken before every round; the median over rounds, so that the
ceiling sees the same machine load as the steps),
peak_memory_bytes (XLA's buffer assignment of the step: arguments + outputs + temporaries − donated
aliases), and with a peer peer_images_per_sec and ratio = ours / peer (> 1: ours is faster).
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vqdiff import compiler_options  # noqa: E402
from vqdiff.convert import vqmodel as convert_vqmodel  # noqa: E402
from vqdiff.diffusion.schedules import make_schedule  # noqa: E402
from vqdiff.train import dit_trainer, tokenizer_trainer  # noqa: E402
from vqdiff.train.optimizer import create_optimizer  # noqa: E402

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments")
LATENT_SHAPE = (32, 32, 4)
# diffusers VQModel of the issue: 64×64 RGB, three levels 64/128/256, attention in the middle block.
VQMODEL_CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(64, 128, 256),
                      down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                      layers_per_block=1, latent_channels=3, num_vq_embeddings=256, norm_num_groups=32)
IMAGE_SIZE = 64


def load_config(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def matmul_probe(size: int = 2048, repeats: int = 3):
    """() → the best float32 FLOP/s of `repeats` size³ matmuls on the default device (2·size³ FLOPs each)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    product = jax.jit(lambda a, b: a @ b)
    product(a, b).block_until_ready()

    def probe():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            product(a, b).block_until_ready()
            best = min(best, time.perf_counter() - start)
        return 2 * size ** 3 / best
    return probe


def compiled_step(step_fn, state, batch, kind=None):
    """(compiled step, FLOPs per call, peak bytes) of jit(step_fn) with the state donated, as the trainers
    compile a `kind` program (vqdiff.compiler_options.jit; None: plain jax.jit and XLA's default options)."""
    jitted = (compiler_options.jit(step_fn, kind, donate_argnums=(0,)) if kind
              else jax.jit(step_fn, donate_argnums=(0,)))
    compiled = jitted.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    peak = None
    if memory is not None:
        peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                - memory.alias_size_in_bytes)
    return compiled, float(cost.get("flops", 0.0)), peak


def dit_setup(args):
    config = load_config("dit_imagenet")
    config.model.update(variant=args.variant, dtype=args.dtype, remat=args.remat)
    config.train.update(batch_size=args.batch, grad_clip_norm=1.0)
    if "grad_accum_steps" in config.train:
        config.train.grad_accum_steps = args.grad_accum_steps
    model = dit_trainer.build_dit(config, LATENT_SHAPE)
    tx = create_optimizer(config.train)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
    state = dit_trainer.init_state(config, model, tx, LATENT_SHAPE)
    rng = np.random.default_rng(0)
    batch = dict(latent=jnp.asarray(rng.standard_normal((args.batch, *LATENT_SHAPE)), jnp.float32),
                 label=jnp.asarray(rng.integers(0, config.model.num_classes, args.batch), jnp.int32),
                 mask=jnp.ones((args.batch,), jnp.float32))

    def step(state, batch):
        return dit_trainer.train_step(state, batch, None, model=model, tx=tx, schedule=schedule, config=config,
                                      tokenizer_model=None)
    return config, step, state, batch


def autoencoder_setup(args):
    config = load_config("vqvae_imagenet")
    converted = convert_vqmodel.config_from_diffusers(VQMODEL_CONFIG)
    config.model.update(converted["model"], dtype=args.dtype)
    config.quantizer.update(converted["quantizer"])
    config.data.update(channels=3, image_size=IMAGE_SIZE, pad_to=0)
    config.train.update(batch_size=args.batch)
    if "grad_accum_steps" in config.train:
        config.train.grad_accum_steps = args.grad_accum_steps
    model = tokenizer_trainer.build_tokenizer(config)
    tx = create_optimizer(config.train)
    state = tokenizer_trainer.init_state(config, model, tx)
    rng = np.random.default_rng(0)
    batch = dict(image=jnp.asarray(rng.uniform(-1, 1, (args.batch, IMAGE_SIZE, IMAGE_SIZE, 3)), jnp.float32),
                 mask=jnp.ones((args.batch,), jnp.float32))

    def step(state, batch):
        return tokenizer_trainer.train_step(state, batch, model=model, tx=tx, config=config)
    return config, step, state, batch


def diffusers_dit_step(config, args):
    """() → one training step of diffusers' DiT-<variant> on the benchmark's batch."""
    import torch
    from diffusers import DiTTransformer2DModel

    arch = dit_trainer.dit_architecture(config.model)
    heads = arch["num_heads"]
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=arch["hidden_size"] // heads,
        in_channels=LATENT_SHAPE[2], out_channels=2 * LATENT_SHAPE[2], num_layers=arch["depth"],
        sample_size=LATENT_SHAPE[0], patch_size=arch["patch_size"], num_embeds_ada_norm=config.model.num_classes)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=config.train.weight_decay)
    ema = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.batch, LATENT_SHAPE[2], *LATENT_SHAPE[:2], generator=generator)
    labels = torch.randint(0, config.model.num_classes, (args.batch,), generator=generator)
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)

    def step():
        t = torch.randint(0, 1000, (args.batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        # --grad_accum_steps: the same update from equal micro-batches, as vqdiff's step does.
        for part in torch.arange(args.batch).chunk(args.grad_accum_steps):
            eps, sigma = model(x_t[part], timestep=t[part], class_labels=labels[part]).sample.chunk(2, dim=1)
            loss = (torch.mean((eps - noise[part]) ** 2) + torch.mean(sigma ** 2) * 1e-3) / args.grad_accum_steps
            loss.backward()
            total += float(loss.detach())
        torch_apply(model, optimizer, ema, config)
        return total
    return step


def torch_update(loss, model, optimizer, ema, config) -> float:
    """The peer's backward, clipped AdamW step and EMA update (as vqdiff's step does); returns the loss."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch_apply(model, optimizer, ema, config)
    return float(loss.detach())


def torch_apply(model, optimizer, ema, config):
    """The peer's clipped AdamW step on the accumulated gradients and its EMA update."""
    import torch

    torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip_norm)
    optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema, list(model.parameters()), 1 - config.train.ema_decay)


def diffusers_vqmodel_step(config, args):
    """() → one training step of diffusers' VQModel on the benchmark's batch."""
    import torch
    from diffusers import VQModel

    model = VQModel(**VQMODEL_CONFIG)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.learning_rate,
                                  betas=(config.train.adam_b1, config.train.adam_b2),
                                  weight_decay=config.train.weight_decay)
    ema = [p.detach().clone() for p in model.parameters()]
    images = torch.rand(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def step():
        output = model(images)
        loss = torch.mean((output.sample - images) ** 2) + output.commit_loss.mean()
        return torch_update(loss, model, optimizer, ema, config)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("dit", "autoencoder"), default="dit")
    parser.add_argument("--variant", default="S/2", help="DiT variant, e.g. S/2, B/2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32", help="compute dtype: float32 or bfloat16")
    parser.add_argument("--remat", action="store_true", help="recompute DiT block activations")
    parser.add_argument("--grad_accum_steps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer", choices=("", "diffusers"), default="")
    parser.add_argument("--compiler_options", choices=("vqdiff", "default"), default="vqdiff",
                        help="vqdiff: the trainers' XLA:CPU options (vqdiff.compiler_options); default: XLA's")
    args = parser.parse_args()

    threads = os.cpu_count()
    setup = dit_setup if args.model == "dit" else autoencoder_setup
    config, step_fn, state, batch = setup(args)
    state = jax.tree_util.tree_map(jnp.copy, state)  # params and ema_params start as one buffer
    kind = ("transformer" if args.model == "dit" else "convolutional") if args.compiler_options == "vqdiff" else None
    options = compiler_options.for_program(kind) if kind else None
    compiled, flops, peak_memory = compiled_step(step_fn, state, batch, kind)
    if args.grad_accum_steps > 1:
        # XLA's cost analysis counts a loop body once, so the accumulated step's FLOPs are those of the same
        # update computed in one pass (compiled here for its cost analysis only).
        _, one_pass_step, one_pass_state, _ = setup(argparse.Namespace(**{**vars(args), "grad_accum_steps": 1}))
        flops = compiled_step(one_pass_step, one_pass_state, batch, kind)[1]

    holder = {"state": state}

    def run_ours():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    runners = {"ours": run_ours}
    if args.peer:
        import torch
        torch.set_num_threads(threads)
        make_peer = diffusers_dit_step if args.model == "dit" else diffusers_vqmodel_step
        runners["peer"] = make_peer(config, args)

    probe = matmul_probe()
    for run in runners.values():
        run()
    seconds = {name: [] for name in runners}
    ceilings = []
    for _ in range(args.rounds):
        ceilings.append(probe())
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    # The ceiling under the same load as the steps: the median of the probes taken between them.
    ceiling = float(np.median(ceilings))

    sec_per_step = float(np.mean(seconds["ours"]))
    result = dict(
        model=args.model, variant=args.variant if args.model == "dit" else "64x64 64/128/256",
        batch=args.batch, dtype=args.dtype, remat=args.remat, grad_accum_steps=args.grad_accum_steps,
        compiler_options=options,
        device=str(jax.devices()[0].device_kind), threads=threads, rounds=args.rounds,
        images_per_sec=round(args.batch / sec_per_step, 3), sec_per_step=round(sec_per_step, 3),
        sec_per_step_range=[round(min(seconds["ours"]), 3), round(max(seconds["ours"]), 3)],
        step_flops=flops, flops_per_sec=round(flops / sec_per_step), matmul_ceiling_flops_per_sec=round(ceiling),
        matmul_probe_range=[round(min(ceilings)), round(max(ceilings))],
        peak_fraction=round(flops / sec_per_step / ceiling, 3), peak_memory_bytes=peak_memory)
    if args.peer:
        peer_sec = float(np.mean(seconds["peer"]))
        result.update(peer=args.peer, peer_images_per_sec=round(args.batch / peer_sec, 3),
                      peer_sec_per_step=round(peer_sec, 3),
                      peer_sec_per_step_range=[round(min(seconds["peer"]), 3), round(max(seconds["peer"]), 3)],
                      ratio=round(peer_sec / sec_per_step, 3))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
