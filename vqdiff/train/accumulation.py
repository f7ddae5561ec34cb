"""Gradient accumulation: one update's gradients summed over micro-batches with a `lax.scan`, so that
only one micro-batch's activations are alive at a time.

The losses here are example-weighted means (Σ mask · loss / Σ mask), so the big-batch loss is the
mask-weighted mean of the micro-batch losses: weighting each micro-batch's loss, gradients and metrics by
its Σ mask reproduces the big-batch step up to float summation order.
"""
import jax
import jax.numpy as jnp


def split_micro_batches(batch, num_micro_batches: int):
    """Leaves [B, ...] → [k, B / k, ...] for k = num_micro_batches; micro-batch i holds examples i, i + k, …

    Strided rather than consecutive: a batch sharded in contiguous blocks over devices keeps every
    micro-batch spread over all of them (when B / k is a multiple of the device count).
    """
    def split(x):
        if x.shape[0] % num_micro_batches:
            raise ValueError(f"batch of {x.shape[0]} is not divisible into {num_micro_batches} micro-batches")
        x = x.reshape(x.shape[0] // num_micro_batches, num_micro_batches, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree_util.tree_map(split, batch)


def accumulated_value_and_grad(loss_fn, params, batch, num_micro_batches: int, carry=None):
    """((loss, metrics, carry), grads) of `loss_fn` over the batch, accumulated over micro-batches.

    loss_fn(params, micro_batch, carry, index) → (loss, (metrics, carry)): loss a scalar mean weighted by
    micro_batch['mask'] [b], metrics a dict of scalars of the same kind, carry any state threaded through
    the micro-batches in order (e.g. a mutable collection), index the micro-batch's int32 position.
    Loss, metrics and gradients are Σ_i w_i · value_i / Σ_i w_i with w_i = Σ mask of micro-batch i.
    With one micro-batch this is jax.value_and_grad of loss_fn on the whole batch.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro_batches == 1:
        (loss, (metrics, carry)), grads = grad_fn(params, batch, carry, jnp.zeros((), jnp.int32))
        return (loss, metrics, carry), grads

    def body(accumulated, xs):
        micro_batch, index = xs
        weighted_sum, weight_total, carry = accumulated
        (loss, (metrics, carry)), grads = grad_fn(params, micro_batch, carry, index)
        weight = jnp.sum(micro_batch["mask"].astype(jnp.float32))
        values = (loss, metrics, grads)
        weighted_sum = jax.tree_util.tree_map(lambda s, v: s + weight * v.astype(jnp.float32), weighted_sum, values)
        return (weighted_sum, weight_total + weight, carry), None

    micro_batches = split_micro_batches(batch, num_micro_batches)
    first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
    shapes = jax.eval_shape(lambda: grad_fn(params, first, carry, jnp.zeros((), jnp.int32)))
    (loss_shape, (metrics_shape, _)), grads_shape = shapes
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), (loss_shape, metrics_shape, grads_shape))
    init = (zeros, jnp.zeros((), jnp.float32), carry)
    (weighted_sum, weight_total, carry), _ = jax.lax.scan(
        body, init, (micro_batches, jnp.arange(num_micro_batches, dtype=jnp.int32)))
    # All-masked batches give zeros, as the big-batch mean does.
    loss, metrics, grads = jax.tree_util.tree_map(
        lambda s: s / jnp.maximum(weight_total, jnp.finfo(jnp.float32).tiny), weighted_sum)
    grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
    return (loss, metrics, carry), grads
