"""Training state: one pytree holding everything a resumed run needs."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params and ema_params: model parameters; opt_state: optax state;
    model_state: non-parameter collections (e.g. 'quantizer_stats' of an EMA codebook);
    skipped_steps: int32 count of updates skipped for non-finite values (config.train.skip_nonfinite)."""
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    model_state: Any
    skipped_steps: jax.Array

    def as_dict(self) -> dict:
        return dict(step=self.step, params=self.params, opt_state=self.opt_state,
                    ema_params=self.ema_params, model_state=self.model_state,
                    skipped_steps=self.skipped_steps)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)


def ema_update(ema_params, params, decay: float):
    """ema ← decay · ema + (1 − decay) · params, leaf-wise."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def skip_if_nonfinite(old: TrainState, new: TrainState, finite) -> TrainState:
    """`new` when `finite`, else `old` with the step advanced and the skip counted."""
    kept = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    return kept.replace(step=new.step, skipped_steps=old.skipped_steps + (1 - finite.astype(jnp.int32)))


def step_rng(seed: int, step, purpose: int = 0):
    """The RNG of one step, derived from (seed, step): a resumed run draws the same numbers."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), purpose), jnp.asarray(step, jnp.int32))
