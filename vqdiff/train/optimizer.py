"""AdamW with linear warmup, cosine decay and global-norm gradient clipping (optax)."""
import jax
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine decay to `end_learning_rate` at `num_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train_config.learning_rate,
        warmup_steps=train_config.warmup_steps,
        decay_steps=max(train_config.num_steps, train_config.warmup_steps + 1),
        end_value=train_config.end_learning_rate)


def decay_mask(params):
    """Weight decay on kernels (rank ≥ 2) only: not on biases, norm scales or codebooks."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p.ndim >= 2 and "codebook" not in jax.tree_util.keystr(path), params)


def create_optimizer(train_config) -> optax.GradientTransformation:
    """The optimizer of `config.train`: clip → AdamW(schedule)."""
    return optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip_norm),
        optax.adamw(learning_rate_schedule(train_config), b1=train_config.adam_b1, b2=train_config.adam_b2,
                    weight_decay=train_config.weight_decay, mask=decay_mask))
