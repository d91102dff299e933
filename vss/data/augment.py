"""Training and test augmentation, drawn once per sample and shared by all its frames.

A pair or clip must see one geometry and one colour distortion: otherwise the
model would learn to undo random jitter between frames instead of real motion.
So the random draw happens once, on the labelled frame (the crop constraint looks
at its label), and the resulting deterministic transforms are replayed on the
other frames and their labels.
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
                 saturation_range=(0.5, 1.5), hue_delta=18, prob=0.5):
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


def build_augmentations(cfg, is_train):
    """Training: resize short side, crop, colour distortion, flip. Test: resize short side only."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                 cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE,
            cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, IGNORE_LABEL))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(PhotometricDistortion(img_format=cfg.INPUT.FORMAT))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs


def augment_frames(augmentations, images, labels, anchor):
    """Draw `augmentations` once on frame `anchor` and apply the result to every frame.

    `images` are HxWx3 uint8 arrays of one size; `labels` holds an HxW uint8 label
    or None per frame (None stays None). Returns (images, labels, transforms).
    """
    shapes = {img.shape[:2] for img in images}
    if len(shapes) != 1:
        raise ValueError(f"frames of one sample must share one size to share an augmentation, "
                         f"got {sorted(shapes)}")
    aug_input = T.AugInput(images[anchor], sem_seg=labels[anchor])
    tfms = T.AugmentationList(augmentations)(aug_input)
    out_images, out_labels = [], []
    for i, (img, label) in enumerate(zip(images, labels)):
        if i == anchor:
            out_images.append(aug_input.image)
            out_labels.append(aug_input.sem_seg)
        else:
            out_images.append(tfms.apply_image(img))
            out_labels.append(None if label is None else tfms.apply_segmentation(label))
    return out_images, out_labels, tfms
