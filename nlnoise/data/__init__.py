"""Input side of nlnoise: sources, preprocessing, label-noise injection and the grain pipeline.

Usage::

    ds = nlnoise.data.load(cfg.dataset, noise_kind=cfg.corruption.kind,
                           noise_level=cfg.corruption.level,
                           noise_seed=cfg.corruption.seed, noise_kwargs={"m": cfg.corruption.m})
    it = nlnoise.data.train_iterator(ds, cfg.dataset, global_batch_size=128, seed=0,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
    batch = nlnoise.data.make_global_batch(next(it), NamedSharding(mesh, P("data")))

``dataset`` config keys (:func:`default_dataset_config`; ``None`` means "automatic"):

- ``name``: ``fashion_mnist`` | ``cifar10`` | ``digits`` (local or TFDS except digits, which is
  local only) | ``svhn_cropped`` | ``cifar100`` | ``imagenet2012`` (TFDS). Default
  ``fashion_mnist``.
- ``source``: ``local`` (files on this machine; fashion_mnist, cifar10, digits) or ``tfds``
  (``tfds.data_source``, ArrayRecord, never downloads). Default ``local``.
- ``data_dir``: local: the Fashion-MNIST IDX directory (default
  ``/usr/share/datasets/fashion-mnist``) or the CIFAR-10 ``cifar10_jpeg.npz`` file or its
  directory (default ``<repo>/../shared/data/cifar10_jpeg.npz``); tfds: the TFDS data dir
  (default ``~/tensorflow_datasets``; a ``gs://`` bucket on TPU VMs).
- ``cache_dir``: decoded CIFAR-10 arrays, mean images and TFDS label columns (default
  ``$NLNOISE_CACHE`` or ``~/.cache/nlnoise``). Written atomically (temp file + rename).
- ``train_split``, ``test_split``: TFDS split names (default ``train`` and ``test``;
  ``validation`` for imagenet2012's test).
- ``train_size``: number of inlier training examples, a random subset drawn with
  ``subset_seed`` (nested: smaller sizes are subsets of larger ones). None = the whole split;
  larger than the split is an error.
- ``subset_seed``: seeds the training subset and the choice of outlier images. None: 0 here,
  and the run's ``seed`` in ``nlnoise-train``.
- ``inlier_classes``: None = all classes; a tuple of original class ids, remapped to
  ``0..K-1`` in the given order (e.g. ``(0, 1, 2, 3, 4)``). The other classes then form the
  outlier pool (open-set protocol) unless ``outlier_source`` is set.
- ``num_outliers``: N_out, outlier images added to training, each labelled uniformly at
  random among the K classes (the label depends only on the noise seed and the image).
- ``num_known_outliers``: N_known, further outlier images labelled K (the outlier class).
  Must not exceed N_out. ``alpha = N_known / (N_known + N_out)`` (Eqn 9).
- ``outlier_source``: None = the dataset's non-inlier classes; ``"NAME"`` or ``"tfds:NAME"``
  = a TFDS dataset (train split for training outliers, test split for test outliers);
  ``"local:NAME"`` = a local source. Its images must have the dataset's shape.
- ``outlier_data_dir``: data dir of ``outlier_source`` (default: ``data_dir`` when
  ``source='tfds'``, else each source's default).
- ``num_test_outliers``: test outliers in ``test_noisy`` (None = the whole pool's test split).
- ``num_test_examples``: evaluate on a random subset (``subset_seed``) of this many inlier test
  images, for quick runs. None = the whole test split.
- ``val_size``: hold this many examples out of the (noisy) training set, chosen at random
  with ``subset_seed`` after labels are flipped and outliers added, as a validation split with
  noisy labels (``NoisyDataset.val``). Training uses the rest. It needs no clean label: the
  training loop logs the combined model's loss on it and reports the evaluation where that
  loss was lowest (label-free model selection). Default 0 (no split).
- ``image_size``: model input height/width; smaller than the stored size means random crops
  in training and a centre crop in evaluation. None = stored size (227 for imagenet2012).
- ``resize_size``: imagenet2012 images are resized (shorter side) and centre-cropped to this
  square before cropping. Default 256.
- ``random_flip``: horizontal flips with p=0.5 in training. None = True for imagenet2012 only.
- ``mean_subtraction``: subtract the per-pixel mean image of the dataset's whole training
  split (all classes, before ``train_size``; so it does not change across a size sweep).
  Default True.
- ``mean_max_examples``: mean over at most this many evenly spaced training images.
  Default 100000 (all of every dataset here except ImageNet).
- ``contrast_normalization``: per-image global contrast normalization before the mean
  subtraction. None = True for svhn_cropped only.
- ``pixel_scale``: multiplies pixels after mean subtraction (not with contrast
  normalization). Default 1/255; cuda-convnet (the paper) used 1.0, i.e. raw 0..255 units.
- ``eval_batch_size``: global batch size for evaluation (read by the training code). 1000.
- ``num_threads``, ``prefetch_buffer_size``: grain ``ReadOptions`` (batches are produced by
  ``num_threads`` threads, ``prefetch_buffer_size`` batches ahead). Defaults 2 and 4.

Label-flip settings come from the training config's ``noise`` section, passed to
:func:`load` as arguments. Errors are :class:`DataError` (a ``ValueError``) naming the field.
"""

from nlnoise.data.noisy import ExampleSource, NoisyDataset, flip_matrix, load
from nlnoise.data.pipeline import eval_batches, make_global_batch, steps_per_epoch, train_iterator
from nlnoise.data.preprocess import Preprocessor
from nlnoise.data.sources import DataError, default_dataset_config

__all__ = [
    "DataError",
    "ExampleSource",
    "NoisyDataset",
    "Preprocessor",
    "default_dataset_config",
    "eval_batches",
    "flip_matrix",
    "load",
    "make_global_batch",
    "steps_per_epoch",
    "train_iterator",
]
