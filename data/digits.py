"""The offline default image data: scikit-learn's 1,797 real 8x8 handwritten digits,
materialised once as a class-folder tree of PNGs so the demo exercises the folder ingest path."""
import os
import shutil
import tempfile

import numpy as np
from PIL import Image


def materialize_digits(target_dir: str, shuffle_labels_seed=None) -> str:
    """Writes target_dir/<digit>/<index>.png unless it already exists; returns target_dir.

    shuffle_labels_seed permutes the labels: real images with meaningless labels, which is
    how tests build a candidate that must never be blessed.
    """
    if os.path.isdir(target_dir):
        return target_dir
    from sklearn.datasets import load_digits  # heavy import, only when materialising

    digits = load_digits()
    labels = digits.target
    if shuffle_labels_seed is not None:
        labels = np.random.RandomState(shuffle_labels_seed).permutation(labels)
    parent = os.path.dirname(os.path.abspath(target_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-", dir=parent)
    try:
        for i, (image, label) in enumerate(zip(digits.images, labels)):
            class_dir = os.path.join(tmp, str(label))
            os.makedirs(class_dir, exist_ok=True)
            pixels = (image * (255.0 / 16.0)).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(os.path.join(class_dir, f"{i:04d}.png"))
        os.replace(tmp, target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target_dir
