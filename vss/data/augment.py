"""Training and test augmentation, drawn once per sample and shared by all its frames.

A pair or clip must see one geometry: otherwise the model would learn to undo random
jitter between frames instead of real motion. So the random draw happens once, on the
labelled frame (the crop constraint looks at its label), and the resulting deterministic
transforms are replayed on the other frames and their labels. The colour distortion is
replayed too, or drawn again for every frame (INPUT.VIDEO.COLOR_AUG_PER_FRAME, the TV3S
release's clips).

Resizes that follow mmseg 0.11 / mmcv (the TV3S release's pipelines) resize as mmcv does:
OpenCV bilinear for frames, nearest for labels, sizes rounded as mmcv's `rescale_size`.
"""
import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import Transform

from .io import IGNORE_LABEL

_HSV = {"RGB": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB), "BGR": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)}


class PhotometricTransform(Transform):
    """A fixed SSD-style colour distortion; labels and coordinates pass unchanged.

    Order: brightness, then contrast either first or last, with saturation and hue
    in between (OpenCV HSV, hue in 0..179). Values are clipped to 0..255 after each
    step so a later step never sees out-of-range colours.
    """

    def __init__(self, brightness=0.0, contrast=1.0, saturation=1.0, hue=0,
                 contrast_first=True, img_format="RGB"):
        super().__init__()
        if img_format not in _HSV:
            raise ValueError(f"colour distortion supports INPUT.FORMAT 'RGB' or 'BGR', got {img_format!r}")
        self._set_attributes(locals())

    def apply_image(self, img):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"colour distortion expects an HxWx3 uint8 image, got {img.dtype} {img.shape}")
        out = img.astype(np.float32)
        if self.brightness:
            out = np.clip(out + self.brightness, 0, 255)
        if self.contrast_first and self.contrast != 1.0:
            out = np.clip(out * self.contrast, 0, 255)
        if self.saturation != 1.0 or self.hue:
            to_hsv, from_hsv = _HSV[self.img_format]
            hsv = cv2.cvtColor(np.rint(out).astype(np.uint8), to_hsv).astype(np.float32)
            hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 255)
            hsv[..., 0] = np.mod(hsv[..., 0] + self.hue, 180)
            out = cv2.cvtColor(np.rint(hsv).astype(np.uint8), from_hsv).astype(np.float32)
        if not self.contrast_first and self.contrast != 1.0:
            out = np.clip(out * self.contrast, 0, 255)
        return np.rint(out).astype(np.uint8)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class PhotometricDistortion(T.Augmentation):
    """Draws the parameters of a :class:`PhotometricTransform` once per call.

    Each of brightness (+-`brightness_delta`), contrast (`contrast_range`),
    saturation (`saturation_range`) and hue (+-`hue_delta`) is applied with
    probability `prob`; contrast goes first or last with probability 1/2.
    """

    def __init__(self, img_format="RGB", brightness_delta=32, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta=18, prob=0.5, per_frame=False):
        """per_frame: `augment_frames` draws a new distortion for every frame of a sample."""
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        rng = np.random
        delta = self.brightness_delta
        brightness = float(rng.uniform(-delta, delta)) if rng.rand() < self.prob else 0.0
        contrast = float(rng.uniform(*self.contrast_range)) if rng.rand() < self.prob else 1.0
        saturation = float(rng.uniform(*self.saturation_range)) if rng.rand() < self.prob else 1.0
        hue = int(rng.randint(-self.hue_delta, self.hue_delta + 1)) if rng.rand() < self.prob else 0
        return PhotometricTransform(brightness, contrast, saturation, hue,
                                    contrast_first=bool(rng.rand() < 0.5), img_format=self.img_format)


class CV2ResizeTransform(Transform):
    """Resize (h, w) -> (new_h, new_w) as mmcv.imresize does: OpenCV bilinear for images,
    nearest for segmentations."""

    def __init__(self, h, w, new_h, new_w):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img, interp=cv2.INTER_LINEAR):
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"resize expects a {self.h}x{self.w} image, got {img.shape[0]}x{img.shape[1]}")
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=interp)

    def apply_segmentation(self, segmentation):
        return self.apply_image(segmentation, interp=cv2.INTER_NEAREST)

    def apply_coords(self, coords):
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def inverse(self):
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w)


def rescale_size(h, w, long_side, short_side):
    """(new_h, new_w) of mmcv's `rescale_size` with a (long, short) box: the largest scale at which
    the long side fits `long_side` and the short side `short_side`, sides rounded half up."""
    scale = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


class RatioRangeResize(T.Augmentation):
    """mmseg 0.11's `Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)`: a ratio r
    uniform in `ratio_range` scales the (long, short) box `scale` (sides truncated to ints), and the
    frame is rescaled, aspect kept, to the largest size inside that box. A frame wider than the box
    is therefore capped by its long side at long x r, not resized by its short side."""

    def __init__(self, scale, ratio_range):
        super().__init__()
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"INPUT.SCALE_TRAIN must be two positive sides (long, short), got {tuple(scale)}")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"INPUT.RATIO_RANGE_TRAIN must be (min, max) with 0 < min <= max, got {tuple(ratio_range)}")
        self._init(locals())

    def get_transform(self, image):
        low, high = self.ratio_range
        ratio = np.random.random_sample() * (high - low) + low
        box = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        h, w = image.shape[:2]
        return CV2ResizeTransform(h, w, *rescale_size(h, w, max(box), min(box)))


class AlignedResize(T.Augmentation):
    """The TV3S release's test resize (`AlignedResize_clips`, O: utils/datasets/transforms.py:235-472,
    with the scale `MultiScaleFlipAug` passes): rescale, aspect kept, to the largest size whose short
    side fits `short_side` and long side `long_side`, then stretch both sides up to a multiple of
    `size_divisor` (a second resize, no padding)."""

    def __init__(self, short_side, long_side, size_divisor):
        super().__init__()
        if short_side <= 0 or long_side <= 0 or size_divisor <= 0:
            raise ValueError(f"aligned test resize needs INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST and "
                             f"INPUT.ALIGN_SIZE_TEST > 0, got {short_side}, {long_side}, {size_divisor}")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        new_h, new_w = rescale_size(h, w, self.long_side, self.short_side)
        d = self.size_divisor
        return T.TransformList([CV2ResizeTransform(h, w, new_h, new_w),
                                CV2ResizeTransform(new_h, new_w, -(-new_h // d) * d, -(-new_w // d) * d)])


RESIZE_TRAIN = ("shortest_edge", "ratio_range")
RESIZE_TEST = ("shortest_edge", "aligned")


def build_resize(cfg, is_train):
    """The first augmentation: INPUT.RESIZE_TRAIN / INPUT.RESIZE_TEST."""
    key, choices = ("RESIZE_TRAIN", RESIZE_TRAIN) if is_train else ("RESIZE_TEST", RESIZE_TEST)
    mode = cfg.INPUT.get(key)
    if mode not in choices:
        raise ValueError(f"INPUT.{key} must be one of {choices}, got {mode!r}")
    if is_train and mode == "ratio_range":
        return RatioRangeResize(tuple(cfg.INPUT.SCALE_TRAIN), tuple(cfg.INPUT.RATIO_RANGE_TRAIN))
    if is_train:
        return T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    if mode == "aligned":
        return AlignedResize(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.ALIGN_SIZE_TEST)
    return T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")


def build_augmentations(cfg, is_train):
    """Training: resize, crop, colour distortion, flip. Test: resize only."""
    if not is_train:
        return [build_resize(cfg, is_train=False)]
    augs = [build_resize(cfg, is_train=True)]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE,
            cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, IGNORE_LABEL))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(PhotometricDistortion(img_format=cfg.INPUT.FORMAT,
                                          per_frame=cfg.INPUT.VIDEO.COLOR_AUG_PER_FRAME))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs


def augment_frames(augmentations, images, labels, anchor):
    """Draw `augmentations` once on frame `anchor` and apply the result to every frame; an
    augmentation with `per_frame` set is drawn again for each other frame.

    `images` are HxWx3 uint8 arrays of one size; `labels` holds an HxW uint8 label
    or None per frame (None stays None). Returns (images, labels, the anchor's transforms).
    """
    shapes = {img.shape[:2] for img in images}
    if len(shapes) != 1:
        raise ValueError(f"frames of one sample must share one size to share an augmentation, "
                         f"got {sorted(shapes)}")
    aug_input = T.AugInput(images[anchor], sem_seg=labels[anchor])
    steps = [(aug, aug(aug_input)) for aug in augmentations]
    out_images, out_labels = [], []
    for i, (img, label) in enumerate(zip(images, labels)):
        if i == anchor:
            img, label = aug_input.image, aug_input.sem_seg
        else:
            for aug, tfm in steps:
                if getattr(aug, "per_frame", False):
                    tfm = aug.get_transform(img)
                img = tfm.apply_image(img)
                label = None if label is None else tfm.apply_segmentation(label)
        out_images.append(img)
        out_labels.append(label)
    return out_images, out_labels, T.TransformList([tfm for _, tfm in steps])
