"""Reading frames and label maps, with errors that name the file."""
import logging

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255


def read_frame(path, fmt="RGB"):
    """Read a frame as an HxWx3 uint8 array in `fmt` ("RGB" or "BGR").

    Grayscale frames are replicated to three channels and RGBA/palette frames are
    converted to RGB (alpha dropped); both are logged once per file at debug level.
    """
    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                logger.debug("frame %s has mode %s: converting to RGB", path, img.mode)
                img = img.convert("RGB")
            arr = np.asarray(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"frame file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"frame file {path} is not a readable image: {e}") from None
    if fmt == "BGR":
        arr = arr[:, :, ::-1]
    elif fmt != "RGB":
        raise ValueError(f"unsupported image format {fmt!r}; expected 'RGB' or 'BGR'")
    return np.ascontiguousarray(arr)


def read_label(path, num_classes, label_offset=0):
    """Read a label PNG and map raw values to train ids in [0, num_classes) or 255.

    Raw encoding: train id = raw - `label_offset`; raw 255, and raw 0 when the offset
    is 1 (VSPW's "others"), are ignored. Any other value outside the class range is an
    error naming the file and the values, since it means the dataset and the class list
    disagree.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"label file {path} has mode {img.mode}; expected a single-channel PNG")
            raw = np.asarray(img).astype(np.int64)
    except FileNotFoundError:
        raise FileNotFoundError(f"label file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"label file {path} is not a readable image: {e}") from None
    ignore = raw == IGNORE_LABEL
    if label_offset:
        ignore |= raw < label_offset
    label = raw - label_offset
    bad = ~ignore & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = sorted(set(raw[bad].tolist()))[:10]
        raise ValueError(
            f"label file {path} has values {values} outside the class range: expected raw values "
            f"{label_offset}..{num_classes - 1 + label_offset} or ignore ({IGNORE_LABEL})"
        )
    label[ignore] = IGNORE_LABEL
    return label.astype(np.uint8)


def image_size(path):
    """(height, width) of an image file, reading only its header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise FileNotFoundError(f"frame file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"frame file {path} is not a readable image: {e}") from None
    return h, w
