"""VSSCheckpointer: atomic saves, and MODEL.WEIGHTS that fit the model or fail loudly."""
import logging
import os
import pickle

import pytest
import torch
from detectron2.modeling import build_model

from vss.engine import VSSCheckpointer, setup_cfg
from vss.engine.checkpoint import atomic_write, declared

from conftest import REPO


def _cfg(config, *opts):
    return setup_cfg(str(REPO / "configs" / "synthetic" / config), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])


@pytest.fixture(scope="module")
def per_frame():
    torch.manual_seed(0)
    return build_model(_cfg("mask2former_tiny.yaml"))


@pytest.fixture(scope="module")
def mpvss():
    torch.manual_seed(1)
    return build_model(_cfg("mpvss_query_flow.yaml"))


def save(model, folder, name="model"):
    VSSCheckpointer(model, str(folder)).save(name)
    return str(folder / f"{name}.pth")


def same_weights(model, state, prefix=""):
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if k.startswith(prefix))


# --- atomic saves -------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(str(path), lambda f: f.write(b"old"))

    def half_then_ctrl_c(f):
        f.write(b"new, half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), half_then_ctrl_c)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temporary left behind
    atomic_write(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


def test_checkpoint_interrupted_while_saving_leaves_the_last_one_whole(per_frame, tmp_path, monkeypatch):
    checkpointer = VSSCheckpointer(per_frame, str(tmp_path))
    checkpointer.save("model_0000003")
    before = (tmp_path / "model_0000003.pth").read_bytes()
    real_save = torch.save

    def interrupted(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # half the bytes are on disk when Ctrl-C arrives
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000007")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000003.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert (tmp_path / "model_0000003.pth").read_bytes() == before
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000003.pth")
    state = torch.load(tmp_path / "model_0000003.pth")["model"]
    assert same_weights(per_frame, state) and len(state) == len(per_frame.state_dict())


# --- strict loading -----------------------------------------------------------------------

def test_declarations():
    with torch.device("meta"):
        video = build_model(_cfg("mpvss_query_flow.yaml", "MODEL.DEVICE", "meta"))
        segformer = build_model(_cfg("segformer_tiny.yaml", "MODEL.DEVICE", "meta"))
    assert declared(video, "weights_may_miss") == (
        "sem_seg_head.", "temporal.", "backbone.norm0.", "backbone.norm1.", "backbone.norm2.", "backbone.norm3.")
    assert declared(video, "weights_ignored") == ("criterion.",)
    assert declared(segformer, "weights_may_miss") == ("sem_seg_head.",)  # detectron2's SemanticSegmentor
    assert declared(torch.nn.Linear(1, 1), "weights_may_miss") == ()


def test_own_checkpoint_loads_quietly(per_frame, tmp_path, caplog):
    path = save(per_frame, tmp_path)
    torch.manual_seed(5)
    other = build_model(_cfg("mask2former_tiny.yaml"))
    with caplog.at_level(logging.INFO):
        VSSCheckpointer(other).load(path)
    assert same_weights(other, per_frame.state_dict())
    assert "does not fit" not in caplog.text and "holds no weights" not in caplog.text


def test_per_frame_checkpoint_starts_mpvss_training_but_cannot_evaluate_it(per_frame, mpvss, tmp_path, caplog):
    path = save(per_frame, tmp_path)
    with caplog.at_level(logging.INFO, logger="fvcore.common.checkpoint"):
        VSSCheckpointer(mpvss, for_training=True).load(path)
    assert same_weights(mpvss, per_frame.state_dict(), "backbone.")
    assert same_weights(mpvss, per_frame.state_dict(), "sem_seg_head.")
    assert "holds no weights for temporal.*" in caplog.text
    assert "ignoring its keys ['criterion.empty_weight']" in caplog.text
    # evaluation with the flow module left random is an error, naming what is missing
    with pytest.raises(ValueError, match=r"does not fit the model \(VideoSegmentor\):\n"
                                         r"  in the model but not in the checkpoint .*\n"
                                         r"    temporal\.criterion\.\*: 1 tensor .*\n"
                                         r"    temporal\.flow\.\*: \d+ tensors \(e\.g\. temporal\.flow\."):
        VSSCheckpointer(mpvss).load(path)


def test_per_frame_checkpoint_with_pretrained_motion_encoder(per_frame, mpvss, tmp_path):
    state = dict(per_frame.state_dict())
    torch.manual_seed(3)
    encoder = {k: torch.randn_like(v) for k, v in mpvss.state_dict().items()
               if k.startswith("temporal.flow.encoder.")}
    assert len(encoder) > 4
    state.update(encoder)
    path = tmp_path / "start.pth"
    torch.save({"model": state}, path)
    VSSCheckpointer(mpvss, for_training=True).load(str(path))
    assert same_weights(mpvss, encoder)


def test_checkpoint_of_another_model_fails_with_a_short_grouped_list(mpvss, tmp_path):
    torch.manual_seed(2)
    tv3s = build_model(_cfg("tv3s_tiny.yaml"))
    path = save(tv3s, tmp_path)
    with pytest.raises(ValueError) as error:
        VSSCheckpointer(mpvss, for_training=True).load(path)
    message = str(error.value)
    assert message.startswith(f"checkpoint {path} does not fit the model (VideoSegmentor):")
    assert "backbone.layers.*" in message and "backbone.patch_embed1.*" in message
    assert "MODEL.WEIGHTS_ALLOW_PARTIAL" in message
    assert len(message.splitlines()) < 50 < len(tv3s.state_dict())  # grouped, not one line per key


def test_shape_mismatch_fails_unless_partial_loads_are_allowed(per_frame, tmp_path, caplog):
    path = save(per_frame, tmp_path)
    torch.manual_seed(4)
    nine = build_model(_cfg("mask2former_tiny.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9"))
    with pytest.raises(ValueError, match=r"(?s)of another shape.*sem_seg_head\.predictor\.\*: 2 tensors.*"
                                         r"class_embed\.weight: \(9, 64\) in the checkpoint, \(10, 64\) in the model"):
        VSSCheckpointer(nine, for_training=True).load(path)
    with caplog.at_level(logging.WARNING, logger="fvcore.common.checkpoint"):
        VSSCheckpointer(nine, for_training=True, allow_partial=True).load(path)
    assert "Loading what fits (MODEL.WEIGHTS_ALLOW_PARTIAL)" in caplog.text
    assert "class_embed.bias" in caplog.text and "criterion.empty_weight" in caplog.text
    assert same_weights(nine, per_frame.state_dict(), "backbone.")
    assert same_weights(nine, {k: v for k, v in per_frame.state_dict().items() if "class_embed" not in k},
                        "sem_seg_head.")


def test_imagenet_backbone_pkl_with_its_classifier_keys(per_frame, tmp_path, caplog):
    # as upstream's converted Swin .pkl: no "backbone." prefix, no output norms (norm0..3),
    # a classifier and a final norm
    backbone = {k[len("backbone."):]: v.numpy() for k, v in per_frame.state_dict().items()
                if k.startswith("backbone.") and not k.startswith("backbone.norm")}
    extras = {"head.weight": torch.zeros(1000, 256).numpy(), "head.bias": torch.zeros(1000).numpy(),
              "norm.weight": torch.ones(256).numpy(), "norm.bias": torch.zeros(256).numpy()}
    path = tmp_path / "swin_imagenet.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {**backbone, **extras}, "__author__": "third_party", "matching_heuristics": True}, f)
    torch.manual_seed(6)
    model = build_model(_cfg("mask2former_tiny.yaml"))
    with caplog.at_level(logging.INFO, logger="fvcore.common.checkpoint"):
        VSSCheckpointer(model, for_training=True).load(str(path))
    assert same_weights(model, {k: v for k, v in per_frame.state_dict().items() if not k.startswith("backbone.norm")},
                        "backbone.")
    assert "holds no weights for backbone.*: 8 tensors" in caplog.text
    assert "criterion.*: 1 tensor" in caplog.text and "sem_seg_head.*" in caplog.text
    assert "ignoring its keys ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']" in caplog.text
    # the same file cannot serve an evaluation
    with pytest.raises(ValueError, match="sem_seg_head.pixel_decoder"):
        VSSCheckpointer(model).load(str(path))
