from . import datasets  # registers the built-in datasets
from .augment import PhotometricDistortion, PhotometricTransform, augment_frames, build_augmentations
from .build import build_mapper, build_video_train_loader
from .mappers import ClipMapper, FrameMapper, PairMapper
from .video import VideoInferenceSampler, build_video_test_loader, group_by_video
