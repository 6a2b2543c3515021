"""Images and paired restoration data, one concept a module:

- :mod:`.samples`: the bundled natural images (the offline default) and their splits;
- :mod:`.images`: image files → float tensors in [0, 1], with the checks that come first;
- :mod:`.paired`: paired folder datasets and the layouts of the real datasets;
- :mod:`.haze`: the haze model (atmospheric scattering) and the bundled images' depth;
- :mod:`.lowlight`, :mod:`.rain`: the low-light (exposure + sensor noise + 8 bits) and rain
  (streak layer + veil) models;
- :mod:`.synthetic`: synthetic degraded/clean pairs on the bundled images, one interface for
  the three tasks, with their splits.

Every public name is importable from ``diffloss.data`` itself.
"""

from .haze import add_haze, depth_from_disparity, depth_map, depth_proxy, transmission
from .images import IMAGE_EXTENSIONS, ImageFileError, load_image
from .paired import LAYOUT_HELP, PairedImageDataset, RandomRot90, paired_transform
from .samples import (
    ID_TEST_BAND,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_REGION,
    SampleImage,
    id_test_columns,
    sample_image,
    sample_images,
    train_columns,
)
from .synthetic import (
    ID_TEST_DRAWS,
    SPLITS,
    SYNTHETIC,
    HazeParams,
    ItemParams,
    SyntheticHaze,
    SyntheticLowLight,
    SyntheticPairs,
    SyntheticRain,
    synthetic_dataset,
)

__all__ = [
    "ID_TEST_BAND", "ID_TEST_DRAWS", "IMAGE_EXTENSIONS", "LAYOUT_HELP", "SPLITS", "SYNTHETIC",
    "TEST_IMAGES", "TRAIN_IMAGES", "TRAIN_REGION", "HazeParams", "ImageFileError", "ItemParams",
    "PairedImageDataset", "RandomRot90", "SampleImage", "SyntheticHaze", "SyntheticLowLight",
    "SyntheticPairs", "SyntheticRain", "add_haze", "synthetic_dataset", "depth_from_disparity",
    "depth_map", "depth_proxy", "id_test_columns", "load_image", "paired_transform",
    "sample_image", "sample_images", "train_columns", "transmission",
]
