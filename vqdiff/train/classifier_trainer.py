"""Trains (once, then cached) the classifier that scores conditional samples: `cond_accuracy` is the
fraction of samples it assigns to the class they were asked for. It sees images the way samples are
scored: native resolution (padding cropped), [-1, 1]."""
import functools
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqdiff import compiler_options, weights
from vqdiff.data import pipeline
from vqdiff.eval.image_metrics import crop_padding
from vqdiff.models.classifier import Classifier
from vqdiff.train.progress import Progress


def classifier_cache_path(config):
    """<cache>/classifiers/<dataset>-<hash of everything that changes the classifier>.npz."""
    d, c = config.data, config.classifier
    description = json.dumps(dict(data=dict(dataset=d.dataset, split=d.train_split, image_size=d.image_size,
                                            pad_to=d.pad_to, channels=d.channels),
                                  classifier=c.to_dict(), seed=config.seed), sort_keys=True)
    digest = hashlib.sha1(description.encode()).hexdigest()[:12]
    return weights.cache_dir() / "classifiers" / f"{d.dataset}-{digest}.npz"


def uint8_to_model(images) -> jax.Array:
    """uint8 [B, H, W, C] → float32 in [-1, 1]."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def _native(config, images):
    return crop_padding(images, config.data.image_size, config.data.pad_to)


def train_classifier(config) -> tuple[dict, float]:
    """Trains on `config.data.train_split` (flips as configured) → (params, accuracy on the eval split)."""
    c = config.classifier
    model = Classifier(c.num_classes, c.channels)
    side = config.data.image_size
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, side, side, config.data.channels)))["params"]
    tx = optax.adamw(optax.cosine_decay_schedule(c.learning_rate, c.num_steps), weight_decay=1e-4)
    opt_state = tx.init(params)

    @functools.partial(compiler_options.jit, kind="convolutional")
    def update(params, opt_state, images, labels, rng):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True, rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batches = iter(pipeline.create_dataset(config.data, split=config.data.train_split, train=True,
                                           global_batch_size=c.batch_size, seed=config.seed))
    report = Progress(0, c.num_steps, c.batch_size)
    for step in range(c.num_steps):
        batch = next(batches)
        params, opt_state, loss = update(params, opt_state, _native(config, batch["image"]),
                                         batch["label"], jax.random.fold_in(jax.random.key(config.seed), step))
        if (step + 1) % 500 == 0 or step + 1 == c.num_steps:
            print("classifier " + report.line(step + 1, {"loss": loss}), flush=True)

    predict = compiler_options.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1), "convolutional")
    correct = total = 0
    for batch in pipeline.create_dataset(config.data, split=config.data.eval_split, train=False,
                                         global_batch_size=500, seed=config.seed):
        keep = np.asarray(batch["mask"]) > 0
        predicted = np.asarray(predict(params, _native(config, batch["image"])))
        correct += int(np.sum((predicted == np.asarray(batch["label"]))[keep]))
        total += int(keep.sum())
    return params, correct / max(total, 1)


def load_or_train_classifier(config) -> tuple[Classifier, dict, float]:
    """(module, params, eval-split accuracy), trained on first use and cached by config."""
    path = classifier_cache_path(config)
    model = Classifier(config.classifier.num_classes, config.classifier.channels)
    if path.exists():
        stored = weights.load_npz(path)
        accuracy = float(stored.pop("eval_accuracy"))
        return model, jax.tree.map(jnp.asarray, weights.unflatten(stored)), accuracy
    print(f"training the sample classifier ({config.classifier.num_steps} steps); cached at {path}", flush=True)
    params, accuracy = train_classifier(config)
    weights.save_npz(path, dict(weights.flatten(jax.device_get(params)), eval_accuracy=np.asarray(accuracy)))
    return model, params, accuracy


def predict_labels(model, params, images_uint8: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """uint8 images [N, H, W, C] (native resolution) → predicted class [N]."""
    predict = compiler_options.jit(lambda x: jnp.argmax(model.apply({"params": params}, uint8_to_model(x)), -1),
                                   "convolutional")
    out = []
    for start in range(0, len(images_uint8), batch_size):
        chunk = images_uint8[start:start + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), np.uint8)])
        out.append(np.asarray(predict(padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.int64)
