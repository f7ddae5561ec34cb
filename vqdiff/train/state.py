"""Training state: one pytree holding everything a resumed run needs."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params and ema_params: model parameters; opt_state: optax state;
    model_state: non-parameter collections (e.g. 'quantizer_stats' of an EMA codebook)."""
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    model_state: Any

    def as_dict(self) -> dict:
        return dict(step=self.step, params=self.params, opt_state=self.opt_state,
                    ema_params=self.ema_params, model_state=self.model_state)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)


def ema_update(ema_params, params, decay: float):
    """ema ← decay · ema + (1 − decay) · params, leaf-wise."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def step_rng(seed: int, step, purpose: int = 0):
    """The RNG of one step, derived from (seed, step): a resumed run draws the same numbers."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), purpose), jnp.asarray(step, jnp.int32))
