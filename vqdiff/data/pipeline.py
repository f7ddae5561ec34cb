"""Input pipeline: any TFDS image dataset → this process's share of each global batch, as numpy.

    it = create_dataset(config.data, split='train', train=True, global_batch_size=256, seed=0)
    batch = next(it)  # image [b, H, W, C] float32 in [-1, 1], label [b] int32, mask [b] float32

with b = global_batch_size // jax.process_count() and H = W = pad_to or image_size.

Training streams are a function of (seed, process index) alone: each epoch of a process's slice
is shuffled with a seed derived from (seed, process, epoch), and each example is augmented with
stateless random ops seeded by its position in the stream. So the stream that starts at
`start_step` is the tail of the uninterrupted one, and reaching it reads (without decoding) at
most one epoch of records.

`data_config` (a ConfigDict, usually `config.data`) has:
  dataset         TFDS name: 'imagenet2012', 'cifar10', 'mnist', 'fashion_mnist',
                  'fashion_mnist_local' (built offline from Debian's files, see fashion_mnist_local.py)
  data_dir        TFDS data folder; None for TFDS's default
  manual_dir      folder of manually downloaded archives (imagenet2012); None for TFDS's default
  train_split     e.g. 'train'          (read by trainers, which pass split names explicitly)
  eval_split      e.g. 'test', 'validation'
  image_size      side of the square crop
  pad_to          side after padding with -1 around the crop; 0 for no padding
  channels        1 or 3
  random_flip     random left-right flips in training
  shuffle_buffer  examples in the shuffle buffer, per process
  tf_threads      threads TF may use for the pipeline (0 leaves TF's defaults)
"""
from collections.abc import Iterator
import math

import jax
import numpy as np

# How many batches tf.data prepares ahead of the training step.
_PREFETCH_BATCHES = 2
# Ends the training stream: effectively never.
_MAX_EPOCHS = 2**62

_tf_configured = False


def _configure_tensorflow(num_threads: int) -> None:
    """Keeps TF off accelerators and caps its thread pools, once, before TF runs any op.

    On a 2-core machine a busy tf.data pipeline with TF's default pools halves JAX's throughput.
    """
    global _tf_configured
    if _tf_configured:
        return
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
        if num_threads > 0:
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
            tf.config.threading.set_inter_op_parallelism_threads(num_threads)
    except RuntimeError:
        # TF already ran something in this process (its pools and devices are fixed by then);
        # tf.data's own pool is still capped through `_options`.
        pass
    _tf_configured = True


def _options(num_threads: int):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    if num_threads > 0:
        options.threading.private_threadpool_size = num_threads
        options.autotune.cpu_budget = num_threads
    return options


def _builder(data_config):
    """The TFDS builder of `data_config.dataset`, prepared (downloaded, built) when it is not yet."""
    import tensorflow_datasets as tfds

    from vqdiff.data import fashion_mnist_local  # noqa: F401  Registers 'fashion_mnist_local'.

    name = data_config.dataset
    try:
        builder = tfds.builder(name, data_dir=data_config.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"No TFDS dataset named {name!r}: set config.data.dataset to a name from "
            "tfds.list_builders() or to 'fashion_mnist_local'."
        ) from None
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=data_config.manual_dir)
        )
    return builder


def _read_records(builder, split, *, in_order: bool):
    """Examples of `split` with the image still encoded: decoding waits until after shuffle/skip."""
    import tensorflow_datasets as tfds

    # Sequential reading of the files gives the split's own order; interleaving is faster. No auto-cache:
    # reads that stop early (FID references, a classifier trained for less than an epoch) made TFDS's
    # cache of small splits warn "did not fully read the dataset being cached" each time.
    read_config = (tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False) if in_order
                   else tfds.ReadConfig(try_autocache=False))
    try:
        return builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
    except (KeyError, ValueError) as e:
        name = getattr(split, "split", split)  # Per-process sub-splits wrap the requested one.
        raise ValueError(
            f"TFDS dataset {builder.name!r} has no split {name!r} (it has "
            f"{', '.join(builder.info.splits) or 'none'}): set config.data.train_split/eval_split "
            f"to one of them. ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def _size(records) -> int:
    size = int(records.cardinality())
    if size < 0:
        raise ValueError("TFDS did not report the number of examples of the split.")
    return size


def num_examples(data_config, split: str) -> int:
    """Number of examples in `split` of `data_config.dataset` (all processes together)."""
    _configure_tensorflow(data_config.tf_threads)
    return _size(_read_records(_builder(data_config), split, in_order=True))


def preprocess_image(image, *, image_size: int, channels: int, pad_to: int = 0,
                     crop_seed=None, flip_seed=None):
    """A decoded image `[h, w, c]` uint8 → `[S, S, channels]` float32 in [-1, 1], S = pad_to or image_size.

    Resizes the shorter side to `image_size` (antialiased bicubic, only when it differs), crops
    `image_size` × `image_size` (random when `crop_seed` is given, centred otherwise), flips
    left-right at random when `flip_seed` is given, converts channels (gray → RGB by tiling,
    RGB → gray by luminance), scales to [-1, 1], then pads with -1 to `pad_to` × `pad_to`
    (`(pad_to - image_size) // 2` rows and columns before). Seeds are stateless `[2]` int tensors.
    """
    import tensorflow as tf

    native_channels = image.shape[-1]
    if native_channels not in (1, 3) or channels not in (1, 3):
        raise ValueError(
            f"Channel conversion {native_channels} → {channels} is not supported (1 or 3)."
        )
    image = tf.cast(image, tf.float32)
    height, width = image.shape[0], image.shape[1]
    if height is None or width is None:
        image = tf.cond(
            tf.reduce_min(tf.shape(image)[:2]) == image_size,
            lambda: image,
            lambda: _resize_shorter_side(image, image_size),
        )
    elif min(height, width) != image_size:
        image = _resize_shorter_side(image, image_size)

    crop_shape = [image_size, image_size, native_channels]
    if crop_seed is not None:
        image = tf.image.stateless_random_crop(image, crop_shape, seed=crop_seed)
    else:
        shape = tf.shape(image)
        top, left = (shape[0] - image_size) // 2, (shape[1] - image_size) // 2
        image = image[top:top + image_size, left:left + image_size]
    image = tf.ensure_shape(image, crop_shape)
    if flip_seed is not None:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)

    if native_channels == 1 and channels == 3:
        image = tf.tile(image, [1, 1, 3])
    elif native_channels == 3 and channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    image = image / 127.5 - 1.0

    if pad_to and pad_to != image_size:
        if pad_to < image_size:
            raise ValueError(f"pad_to={pad_to} is smaller than image_size={image_size}.")
        before = (pad_to - image_size) // 2
        after = pad_to - image_size - before
        image = tf.pad(image, [[before, after], [before, after], [0, 0]], constant_values=-1.0)
    return image


def _resize_shorter_side(image, size: int):
    import tensorflow as tf

    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new_shape = tf.cast(tf.round(shape * (size / tf.reduce_min(shape))), tf.int32)
    new_shape = tf.maximum(new_shape, size)  # Rounding must not leave a side short of the crop.
    image = tf.image.resize(image, new_shape, method="bicubic", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)  # Bicubic overshoots at edges.


def create_dataset(data_config, *, split: str, train: bool, global_batch_size: int, seed: int,
                   start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of each global batch of `split`, as numpy.

    Yields dicts of `image` `[b, H, W, C]` float32 in [-1, 1], `label` `[b]` int32 and `mask` `[b]`
    float32 (0 marks padding), b = global_batch_size // jax.process_count().

    train=True: endless; this process's slice of the split, shuffled, randomly cropped (and
      flipped if `data_config.random_flip`), whole batches only. A function of (seed, process):
      `start_step=k` yields what an uninterrupted run yields from its k-th batch on.
    train=False: one pass in order, centre crops; the last batch is padded with mask-0 examples
      so that every process yields the same number of full batches.
    """
    process_count, process_index = jax.process_count(), jax.process_index()
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by the number of processes "
            f"(jax.process_count()={process_count})."
        )
    batch_size = global_batch_size // process_count
    _configure_tensorflow(data_config.tf_threads)
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = _builder(data_config)
    image_feature = builder.info.features["image"]
    has_label = "label" in builder.info.features
    process_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count)
    records = _read_records(builder, process_split, in_order=not train)
    preprocess_kwargs = dict(
        image_size=data_config.image_size, channels=data_config.channels, pad_to=data_config.pad_to)

    def decode(record, crop_seed=None, flip_seed=None):
        image = preprocess_image(
            image_feature.decode_example(record["image"]),
            crop_seed=crop_seed, flip_seed=flip_seed, **preprocess_kwargs)
        label = tf.cast(record["label"], tf.int32) if has_label else tf.constant(0, tf.int32)
        return {"image": image, "label": label, "mask": tf.constant(1.0, tf.float32)}

    if train:
        shuffle_key, augment_key = (
            int(k) for k in np.random.SeedSequence([seed, process_index]).generate_state(2))
        ds = _train_records(records, shuffle_key=shuffle_key,
                            shuffle_buffer=data_config.shuffle_buffer,
                            start_record=start_step * batch_size)
        random_flip = data_config.random_flip

        def augment(record, stream_index):
            crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
                tf.stack([tf.constant(augment_key, tf.int64), stream_index]), num=2))
            return decode(record, crop_seed, flip_seed if random_flip else None)

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        if start_step:
            raise ValueError("start_step applies to training streams only.")
        ds = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        # Every process must run the same number of steps: pad up to the largest slice.
        largest_slice = -(-_size(_read_records(builder, split, in_order=True)) // process_count)
        num_padding = math.ceil(largest_slice / batch_size) * batch_size - _size(records)
        if num_padding < 0:
            raise ValueError(f"Process {process_index} got more than 1/{process_count} of {split!r}.")
        padding = tf.data.Dataset.from_tensors({
            "image": tf.zeros(ds.element_spec["image"].shape, tf.float32),
            "label": tf.constant(0, tf.int32),
            "mask": tf.constant(0.0, tf.float32),
        }).repeat(num_padding)
        ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(_PREFETCH_BATCHES).with_options(_options(data_config.tf_threads))
    return ds.as_numpy_iterator()


def _train_records(records, *, shuffle_key: int, shuffle_buffer: int, start_record: int):
    """Endless (record, stream index) pairs from stream index `start_record` on.

    Epoch e is `records` shuffled with a seed drawn from (shuffle_key, e), so resuming reads at
    most one epoch of still-encoded records (the ones before `start_record` in its epoch).
    """
    import tensorflow as tf

    epoch_size = _size(records)
    if epoch_size == 0:
        raise ValueError("This process's slice of the training split is empty.")
    start_epoch, start_offset = divmod(start_record, epoch_size)

    def epoch(e):
        epoch_seed = tf.random.stateless_uniform(
            [], seed=tf.stack([tf.constant(shuffle_key, tf.int64), e]),
            minval=None, maxval=None, dtype=tf.int64)
        shuffled = records.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        return shuffled.enumerate().map(lambda i, record: (record, e * epoch_size + i))

    return tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch).skip(start_offset)
