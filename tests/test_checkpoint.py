"""VSSCheckpointer: atomic saves, and MODEL.WEIGHTS that fit the model or fail loudly."""
import copy
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


# --- official MPVSS checkpoints -----------------------------------------------------------

# configs/vspw/mpvss/R50.yaml with every width reduced: the parameter names are the R50 config's
SMALL_R50 = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
             "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
             "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
             "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "32", "MODEL.MOTION.HIDDEN_DIM", "32",
             "MODEL.MOTION.DIM_FEEDFORWARD", "16", "MODEL.MOTION.ENCODER_CHANNELS", "[8, 16, 16, 16, 16, 32]"]


def _release_names(reference_dir):
    """The release's whole-model state-dict names: its MPVSS module holds backbone, motion (the
    flow module), sem_seg_head and criterion (O: mask2former/mpvss.py:78-82); backbone, head and
    criterion named as the upstream Mask2Former R50 checkpoint, the flow module as the release's."""
    from conftest import read_key_list
    return (list(read_key_list(reference_dir / "mask2former_keys" / "keys_r50.txt"))
            + ["motion." + k for k in read_key_list(reference_dir / "mpvss_flow_keys.txt")])


def _ours(name):
    """Where a release tensor lives in this project's model: the flow module and the criterion
    belong to the temporal head."""
    if name.startswith("motion."):
        return "temporal.flow." + name[len("motion."):]
    return "temporal." + name if name.startswith("criterion.") else name


def test_official_mpvss_checkpoint_loads_strictly_with_every_tensor_equal(reference_dir, tmp_path, caplog):
    from vss.engine import VideoPredictor
    cfg = setup_cfg(str(REPO / "configs/vspw/mpvss/R50.yaml"), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *SMALL_R50])
    torch.manual_seed(0)
    own = build_model(cfg).state_dict()
    names = _release_names(reference_dir)
    assert len(names) == len(set(names)) == len(own) and {_ours(n) for n in names} == set(own)
    assert sum(n.startswith("motion.encoder.") for n in names) == 20
    assert sum(n.startswith("motion.decoder.") for n in names) == 145
    # distinct values for every tensor, none equal to a fresh model's (the criterion's class weights too)
    g = torch.Generator().manual_seed(1)
    release = {n: torch.randn(own[_ours(n)].shape, generator=g) if own[_ours(n)].is_floating_point()
               else own[_ours(n)] + 7 for n in names}
    path = tmp_path / "model_final.pth"
    torch.save({"model": release, "iteration": 89999}, path)  # as detectron2's trainer saves it
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(path)
    torch.manual_seed(2)
    with caplog.at_level(logging.INFO, logger="fvcore.common.checkpoint"):
        model = VideoPredictor(cfg).model  # the evaluation load: every weight must be in the file
    loaded = model.state_dict()
    assert max(float((loaded[_ours(n)].double() - v.double()).abs().max()) for n, v in release.items()) == 0.0
    assert "names its weights motion.*, criterion.*: loading them as temporal.flow.*, temporal.criterion.*" \
        in caplog.text
    assert "does not fit" not in caplog.text and "ignoring" not in caplog.text

    # the same file with a tensor missing, or an extra one, is an error naming the file and the keys
    del release["motion.decoder.fuse_layer.conv.bias"]
    release["motion.decoder.extra"] = torch.zeros(1)
    torch.save({"model": release}, path)
    with pytest.raises(ValueError, match=r"(?s)checkpoint .*model_final\.pth does not fit.*"
                                         r"temporal\.flow\.decoder\.fuse_layer\.conv\.bias.*"
                                         r"temporal\.flow\.decoder\.extra.*reads checkpoints naming its weights "
                                         r"motion\.\* \(as temporal\.flow\.\*\)"):
        VSSCheckpointer(model).load(str(path))


def test_unknown_layout_names_the_file_and_its_keys(mpvss, tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"model": {f"module.net.{k}": v for k, v in mpvss.state_dict().items()}}, path)
    with pytest.raises(ValueError, match=r"(?s)checkpoint .*foreign\.pth does not fit the model \(VideoSegmentor\).*"
                                         r"in the checkpoint but not in the model:\n    net\.backbone\.\*"):
        VSSCheckpointer(mpvss).load(str(path))


def test_motion_weights_read_the_release_prefix(mpvss, tmp_path):
    from vss.modeling.mpvss.motion_weights import load_motion_weights
    torch.manual_seed(8)
    flow = {k[len("temporal.flow."):]: torch.randn_like(v) for k, v in mpvss.state_dict().items()
            if k.startswith("temporal.flow.")}
    path = tmp_path / "official.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1), **{f"motion.{k}": v for k, v in flow.items()}}},
               path)
    model = copy.deepcopy(mpvss)
    result = load_motion_weights(model, str(path))
    assert result["kept"] == [] and result["unused"] == []
    assert same_weights(model, {f"temporal.flow.{k}": v for k, v in flow.items()})
    torch.save({"model": {"decode_head.conv_seg.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"official\.pth has no flow-module tensors: expected keys starting with "
                                         r"one of \('temporal\.flow\.', 'flow\.', 'motion\.'\)"):
        load_motion_weights(model, str(path))
