"""Input side of nlnoise: sources, preprocessing, label-noise injection and the grain pipeline.

Modules: :mod:`~nlnoise.data.schema` (this config), :mod:`~nlnoise.data.sources` (one module per
source, behind a registry), :mod:`~nlnoise.data.cache`, :mod:`~nlnoise.data.labels` (label
files, clean labels, flip matrices), :mod:`~nlnoise.data.noisy` (:func:`load`, a pipeline of
stages), :mod:`~nlnoise.data.splits` (folds, the held-out split and left-out examples),
:mod:`~nlnoise.data.examples` (what it returns), :mod:`~nlnoise.data.preprocess`,
:mod:`~nlnoise.data.pipeline`.

Usage::

    ds = nlnoise.data.load(cfg.dataset, noise_kind=cfg.corruption.kind,
                           noise_level=cfg.corruption.level,
                           noise_seed=cfg.corruption.seed, noise_kwargs={"m": cfg.corruption.m})
    it = nlnoise.data.train_iterator(ds, cfg.dataset, global_batch_size=128, seed=0,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
    batch = nlnoise.data.make_global_batch(next(it), NamedSharding(mesh, P("data")))

``dataset`` config keys (:func:`default_dataset_config`; ``None`` means "automatic"):

- ``name``: ``fashion_mnist`` | ``cifar10`` (local or TFDS) | ``digits`` | ``folder`` |
  ``arrays`` (local only) | ``svhn_cropped`` | ``cifar100`` | ``imagenet2012`` or any TFDS image
  dataset (TFDS). Default ``fashion_mnist``.
- ``source``: ``local`` (files on this machine) or ``tfds`` (``tfds.data_source``, ArrayRecord,
  never downloads). Default ``local``.
- ``data_dir``: local: the Fashion-MNIST IDX directory (default
  ``/usr/share/datasets/fashion-mnist``); the CIFAR-10 ``cifar10_jpeg.npz`` file or its
  directory (default ``<repo>/../shared/data/cifar10_jpeg.npz``); for ``folder`` the directory
  holding ``train/<class>/`` and ``test/<class>/``; for ``arrays`` the ``.npz`` file
  (``train_image``, ``train_label``, ``test_image``, ``test_label``, optional ``class_names``;
  docs/data.md). tfds: the TFDS data dir (default ``~/tensorflow_datasets``; a ``gs://`` bucket
  on TPU VMs).
- ``cache_dir``: decoded images (CIFAR-10, ``folder``, encoded ``arrays``), mean images and TFDS
  label columns (default ``$NLNOISE_CACHE`` or ``~/.cache/nlnoise``). Written atomically (temp
  file + rename), and only from input that is accepted.
- ``train_split``, ``test_split``: TFDS split names (default ``train`` and ``test``;
  ``validation`` for imagenet2012's test); ``a+b`` concatenates splits (SVHN's
  ``train+extra``).
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
- ``train_labels_path``: a ``.npy`` (integer vector) or one-column ``.csv`` (optional header)
  of training labels, one per image of the source's training split in its order; they replace
  the source's labels (any source). None = the source's labels. An entry of -1 (the only
  negative value allowed) leaves that image out of training: it is dropped after the training
  subset, the folds and the held-out split are drawn (it counts towards ``train_size`` and may
  fall in ``val``, which then loses it too), so a relabelled or pruned label file of a run
  (``nlnoise-audit``) keeps that run's subset and held-out split.
- ``clean_labels``: which training labels are clean. None = the source's, unless
  ``train_labels_path`` replaces them (then none are known); ``"source"`` = the source's labels
  even with a label file (Q* is then the realized file-vs-source transition); ``"none"`` = no
  clean label is known (``NoisyDataset.has_clean_labels`` is False, ``train_clean_labels`` all
  -1, and clean-label metrics are left out). Test labels are always taken as correct.
- ``val_size``: hold this many examples out of the (noisy) training set, chosen at random
  with ``subset_seed`` after labels are flipped and outliers added, as a validation split with
  noisy labels (``NoisyDataset.val``). Training uses the rest. It needs no clean label: the
  training loop logs the combined model's loss on it and reports the evaluation where that
  loss was lowest (label-free model selection). Default 0 (no split).
- ``num_folds``, ``fold``: cross-fitting. With ``num_folds = K >= 2`` the training split
  (inliers and outliers, labels flipped) is dealt into K seeded folds (``subset_seed``; sizes
  differ by at most one) and fold ``fold`` (``0..K-1``) is left out of training as
  ``NoisyDataset.fold_out`` (noisy labels), to be predicted by the model trained on the rest
  (``nlnoise-audit --folds=K``). ``val_size`` is then held out of the remaining folds. Default
  0 and 0 (no folds).
- ``image_size``: model input height/width; smaller than the stored size means random crops
  in training and a centre crop in evaluation. None = stored size (227 for imagenet2012). For
  ``folder`` it is instead the size every image is resized to (shorter side, then the centre
  square), and it is required when the images differ in size.
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

Label-flip settings come from the training config's ``corruption`` section, passed to
:func:`load` as arguments (``noise_kind="given"``: use the labels as they are). Errors are
:class:`DataError` (a ``ValueError``) naming the field or file and the fix.
"""

from nlnoise.data.examples import ExampleSource, NoisyDataset
from nlnoise.data.labels import flip_matrix
from nlnoise.data.noisy import load
from nlnoise.data.pipeline import eval_batches, make_global_batch, steps_per_epoch, train_iterator
from nlnoise.data.preprocess import Preprocessor
from nlnoise.data.schema import DataError, default_dataset_config

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
