"""NaN model outputs stop with an error naming the video, the frame and the likely cause,
in evaluation and in training, instead of a crash far downstream (the warp's gather)."""
import math

import pytest
import torch
from detectron2.data import DatasetCatalog

from conftest import REPO
from vss.data.datasets import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, register_vspw_layout
from vss.data.mappers import FrameMapper, PairMapper
from vss.data.synthetic import generate
from vss.data.video import group_by_video
from vss.engine import Trainer, setup_cfg
from vss.modeling.finite import NonFiniteError, check_finite

FLOW_CAUSE = "motion encoder pretrained with other MODEL.MOTION.ENCODER_"
LOGITS_CAUSE = "diverged training"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One 3-frame 64x64 video per split."""
    root = str(tmp_path_factory.mktemp("nonfinite") / "synthetic")
    generate(root, train_videos=1, val_videos=1, frames=3, height=64, width=64)
    names = {}
    for split in ("train", "val"):
        names[split] = f"test_nonfinite_{split}"
        if names[split] not in DatasetCatalog.list():
            register_vspw_layout(names[split], root, split, SYNTHETIC_CLASSES, SYNTHETIC_COLORS)
    return names


def build(config, dataset, *opts):
    cfg = setup_cfg(str(REPO / "configs/synthetic" / config),
                    ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{dataset['train']}',)",
                     "DATASETS.TEST", f"('{dataset['val']}',)", *opts])
    torch.manual_seed(0)
    return cfg, Trainer.build_model(cfg)


def poison(parameter):
    with torch.no_grad():
        parameter.fill_(math.nan)


def evaluate(cfg, model, dataset):
    """Every frame of the test videos through the model, as the evaluator feeds them."""
    mapper = FrameMapper(cfg, is_train=False)
    model.eval()
    with torch.no_grad():
        for records in group_by_video(DatasetCatalog.get(dataset["val"])).values():
            for record in records:
                model([mapper(record)])


def video_of(dataset, split):
    (video,) = {r["video_id"] for r in DatasetCatalog.get(dataset[split])}
    return video


def test_nan_flow_in_evaluation_names_the_video_and_the_frame(dataset):
    cfg, model = build("mpvss_query_flow.yaml", dataset)
    poison(model.temporal.flow.decoder.fuse_layer.conv.weight)
    # frame 0 is a key frame (no flow); frame 1 is the first whose flow is computed
    with pytest.raises(NonFiniteError, match=rf"flow to the key frame of video '{video_of(dataset, 'val')}' "
                                             rf"frame 1 holds NaN.*{FLOW_CAUSE}"):
        evaluate(cfg, model, dataset)


def test_nan_flow_in_a_training_step_names_the_video_and_the_frame(dataset):
    cfg, model = build("mpvss_query_flow.yaml", dataset)
    poison(model.temporal.flow.decoder.fuse_layer.conv.weight)
    records = DatasetCatalog.get(dataset["train"])
    mapper = PairMapper(cfg, videos=group_by_video(records))
    model.train()
    with pytest.raises(NonFiniteError, match=rf"flow to the key frame of video '{video_of(dataset, 'train')}' "
                                             rf"frame 2 holds NaN.*{FLOW_CAUSE}"):
        model([mapper(records[2])])


def test_nan_key_frame_logits_in_a_training_step_name_the_key_frame(dataset):
    cfg, model = build("mpvss_query_flow.yaml", dataset)
    poison(model.sem_seg_head.predictor.class_embed.bias)
    records = DatasetCatalog.get(dataset["train"])
    mapper = PairMapper(cfg, videos=group_by_video(records))
    sample = mapper(records[2])
    model.train()
    with pytest.raises(NonFiniteError, match=rf"class logits of video '{video_of(dataset, 'train')}' "
                                             rf"frame {sample['key_frame_idx']} holds NaN.*{LOGITS_CAUSE}"):
        model([sample])


@pytest.mark.parametrize("config, parameter", [
    ("mask2former_tiny.yaml", lambda m: m.sem_seg_head.predictor.class_embed.weight),
    ("tv3s_tiny.yaml", lambda m: m.temporal.linear_pred2.bias),
])
def test_nan_logits_in_evaluation_name_the_video_and_the_first_frame(dataset, config, parameter):
    cfg, model = build(config, dataset)
    poison(parameter(model))
    with pytest.raises(NonFiniteError, match=rf"class logits of video '{video_of(dataset, 'val')}' frame 0 holds "
                                             rf"NaN.*{LOGITS_CAUSE}"):
        evaluate(cfg, model, dataset)


def test_the_per_frame_segformer_names_the_batch_row(dataset):
    """detectron2's SemanticSegmentor hands its head no inputs: the row of the batch is named."""
    cfg, model = build("segformer_tiny.yaml", dataset)
    poison(model.sem_seg_head.linear_pred.bias)
    with pytest.raises(NonFiniteError, match=rf"class logits of image 0 of the batch holds NaN.*{LOGITS_CAUSE}"):
        evaluate(cfg, model, dataset)


def test_only_the_non_finite_rows_are_named():
    values = torch.zeros(3, 2, 2)
    frames = [{"video_id": "a", "frame_idx": i} for i in range(3)]
    check_finite(values, "the flow", frames, "a cause")  # finite: no error
    values[1, 0, 1] = math.inf
    # a ValueError too: the entry points end with its one line, as for other errors a user can fix
    with pytest.raises(ValueError, match=r"^the flow of video 'a' frame 1 holds NaN or infinite values; "
                                             r"likely cause: a cause$"):
        check_finite(values, "the flow", frames, "a cause")
