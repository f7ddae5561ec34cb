"""One process of a multi-process test run, and the same training in one process for reference.

    python multiprocess_worker.py --model=mlp|tokenizer --out=DIR \
        --coordinator_address=localhost:PORT --num_processes=2 --process_id=I

joins the run (vqdiff.train.distributed), trains NUM_STEPS steps on its rows of fixed global batches with
the batch split over ('data', 'fsdp') and the large parameters FSDP-split over the processes, saves the
state with the (collective) Checkpointer, restores it, and writes both, gathered, to DIR/state_I.npz.
`train(model, devices, workdir)` does the same in one process over `devices`.
"""
import argparse
import os
import sys

import numpy as np

NUM_STEPS = 3
GLOBAL_BATCH = 16
MESH_SHAPE = (1, 2, 1)   # data × fsdp × model: the batch and the large parameters split over 2 devices


def mlp_pieces(devices):
    """(initial state, update, abstract state with shardings, batch sharding) of a 2-layer MLP whose two
    1024-element kernels are FSDP-split, trained with Adam on a regression target."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from ml_collections import ConfigDict

    from vqdiff.train import checkpoint, sharding

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(16)(nn.gelu(nn.Dense(64)(x)))

    model, tx = MLP(), optax.adam(1e-2)
    mesh_config = ConfigDict(dict(shape=MESH_SHAPE, axes=("data", "fsdp", "model"), batch_axes=("data", "fsdp"),
                                  param_rules=(), fsdp_min_size=512))
    mesh = sharding.create_mesh(mesh_config, devices)

    def init():
        params = model.init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    def update(state, batch):
        def loss_fn(params):
            return jnp.mean(jnp.square(model.apply({"params": params}, batch["x"]) - batch["y"]))
        grads = jax.grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                "opt_state": opt_state}

    abstract = jax.eval_shape(init)
    shardings = sharding.state_shardings(abstract, mesh, mesh_config)
    batch_sharding = sharding.batch_sharding(mesh, mesh_config.batch_axes)
    state = jax.jit(init, out_shardings=shardings)()
    update = jax.jit(update, in_shardings=(shardings, batch_sharding), out_shardings=shardings,
                     donate_argnums=(0,))
    return state, update, checkpoint.abstract_with_shardings(abstract, shardings), batch_sharding


def tokenizer_pieces(devices):
    """The same four pieces from the tiny VQ-VAE tokenizer's Trainer (conv kernels FSDP-split)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from support import load_experiment

    from vqdiff.train.tokenizer_trainer import Trainer

    config = load_experiment("vqvae_fashion_mnist", "tiny")
    config.mesh.update(shape=MESH_SHAPE, fsdp_min_size=1024)
    trainer = Trainer(config, devices=devices)
    step = trainer.compiled_train_step()
    update = lambda state, batch: step(state, batch)[0]
    return trainer.initial_state(), update, trainer.abstract_state, trainer.batch_sharding


PIECES = {"mlp": mlp_pieces, "tokenizer": tokenizer_pieces}


def global_batches(model: str) -> list[dict]:
    """NUM_STEPS fixed global batches of GLOBAL_BATCH rows."""
    rng = np.random.default_rng(0)
    if model == "mlp":
        return [dict(x=rng.normal(size=(GLOBAL_BATCH, 16)).astype(np.float32),
                     y=rng.normal(size=(GLOBAL_BATCH, 16)).astype(np.float32)) for _ in range(NUM_STEPS)]
    return [dict(image=rng.uniform(-1, 1, size=(GLOBAL_BATCH, 32, 32, 1)).astype(np.float32),
                 label=np.zeros(GLOBAL_BATCH, np.int32), mask=np.ones(GLOBAL_BATCH, np.float32))
            for _ in range(NUM_STEPS)]


def train(model: str, devices, workdir: str) -> dict:
    """{'trained/<path>': array, 'restored/<path>': array} after NUM_STEPS steps and a save + restore."""
    import jax

    from vqdiff.train import checkpoint, sharding

    state, update, abstract, batch_sharding = PIECES[model](devices)
    rows = GLOBAL_BATCH // jax.process_count()
    first = jax.process_index() * rows   # the mesh lists process 0's devices first
    for batch in global_batches(model):
        local = {k: v[first:first + rows] for k, v in batch.items()}
        state = update(state, sharding.global_batch(local, batch_sharding))
    state = state.as_dict() if hasattr(state, "as_dict") else state
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(NUM_STEPS, state, force=True)
    ckpt.wait()
    restored = ckpt.restore(abstract, NUM_STEPS)
    ckpt.close()
    out = {}
    for name, tree in (("trained", state), ("restored", restored)):
        for path, value in jax.tree_util.tree_leaves_with_path(sharding.to_host(tree)):
            out[f"{name}/{sharding.path_to_string(path)}"] = value
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(PIECES), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator_address", required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    args = parser.parse_args()

    import jax

    from vqdiff.train import distributed

    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU collectives across processes
    assert distributed.initialize(args.coordinator_address, args.num_processes, args.process_id, timeout_s=60)
    arrays = train(args.model, None, os.path.join(args.out, "workdir"))
    arrays["process_count"] = np.asarray(jax.process_count())
    arrays["local_device_count"] = np.asarray(jax.local_device_count())
    np.savez(os.path.join(args.out, f"state_{jax.process_index()}.npz"), **arrays)


if __name__ == "__main__":
    main()
