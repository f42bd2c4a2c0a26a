"""The data room: MiniPlaces reader, course transforms, synthetic stand-in set, download. Spec: spec/data/.

from impl.data import MiniPlaces, train_transform, val_transform
train = MiniPlaces(root, "train", transform=train_transform())   # (float32 (3, 128, 128), int label)
"""

from impl.data.download import DownloadError, download, fetch
from impl.data.miniplaces import DataError, MiniPlaces, class_name, decode_image_file
from impl.data.synthetic import is_synthetic, make_synthetic, render
from impl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomColorScale,
    denormalize,
    train_transform,
    val_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "DownloadError",
    "MiniPlaces",
    "RandomColorScale",
    "class_name",
    "decode_image_file",
    "denormalize",
    "download",
    "fetch",
    "is_synthetic",
    "make_synthetic",
    "render",
    "train_transform",
    "val_transform",
]
