"""Frame pairs with ground-truth flow, from the synthetic videos (FlowNetS pretraining).

A record is one (frame, key frame) pair of a video: "file_name" / "frame_idx" the frame
the flow is defined on, "key_file_name" / "key_frame_idx" the frame it points into,
"gap" = frame_idx - key_frame_idx, "flow_root" the dataset folder that
`vss.data.synthetic.ground_truth_flow` reads the motion from. The flow is backward, as
MPVSS uses it: pixel p of the frame was at p + flow(p) in the key frame.

Registered: `synthetic_vss_flow_train` (gaps 1..10 in both directions: the key frame
earlier or later) and `synthetic_vss_flow_val` (the key frame 1..10 frames earlier, as at
MPVSS inference), over the frames of `synthetic_vss_{train,val}`; the same for the set with
video effects, `synthetic_vss_fx_flow_{train,val}`.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .synthetic import SYNTHETIC_SETS
from .vspw import load_vspw_layout

MAX_GAP = 10


def flow_pair_records(frames, root, max_gap, both_directions):
    """Pair records over frame records.

    Every frame t gets the key frames t - g for g = 1..max_gap that the video has (a missing
    frame is a gap, never a key frame), and t + g too with `both_directions`.
    """
    if max_gap < 1:
        raise ValueError(f"flow pairs: max_gap must be >= 1, got {max_gap}")
    videos = {}
    for rec in frames:
        videos.setdefault(rec["video_id"], {})[rec["frame_idx"]] = rec
    gaps = [g for g in range(1, max_gap + 1)] + ([-g for g in range(1, max_gap + 1)] if both_directions else [])
    pairs = []
    for video, by_idx in videos.items():
        for t, rec in by_idx.items():
            for gap in gaps:
                key = by_idx.get(t - gap)
                if key is not None:
                    pairs.append({
                        "file_name": rec["file_name"],
                        "key_file_name": key["file_name"],
                        "height": rec["height"],
                        "width": rec["width"],
                        "video_id": video,
                        "frame_idx": t,
                        "key_frame_idx": key["frame_idx"],
                        "gap": gap,
                        "image_id": f"{video}/{t}-{key['frame_idx']}",
                        "flow_root": root,
                    })
    return pairs


def register_flow_pairs(name, root, split, max_gap, both_directions):
    """Register the flow pairs of the VSPW-layout synthetic set at `root`, split `split`."""
    DatasetCatalog.register(
        name, lambda: flow_pair_records(load_vspw_layout(root, split), root, max_gap, both_directions))
    MetadataCatalog.get(name).set(evaluator_type="flow", dataset_root=root, split=split, max_gap=max_gap,
                                  both_directions=both_directions)


def register_all_synthetic_flow(datasets_root):
    for prefix in SYNTHETIC_SETS:
        root = os.path.join(datasets_root, prefix)
        register_flow_pairs(f"{prefix}_flow_train", root, "train", MAX_GAP, both_directions=True)
        register_flow_pairs(f"{prefix}_flow_val", root, "val", MAX_GAP, both_directions=False)
