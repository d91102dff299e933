"""DATALOADER.SAMPLE_BY: training draws per frame or per video (both releases' sampler)."""
import collections
import logging

import pytest

from vss.data.build import build_video_train_loader
from vss.data.train_loader import ResumableTrainLoader, SampleStream

from test_video_loader import make_cfg, take, write_dataset

LENGTHS = [1, 3, 40, 200]


def records(lengths=LENGTHS):
    return [{"video_id": f"v{i}", "frame_idx": k, "width": 8, "height": 6}
            for i, n in enumerate(lengths) for k in range(n)]


def draws(stream, n):
    recs = stream.records
    return [(recs[i]["video_id"], recs[i]["frame_idx"]) for i in map(stream.record_index, range(n))]


def test_videos_are_drawn_equally_often_whatever_their_length():
    epochs = 1000
    by_video = draws(SampleStream(records(), None, seed=5, sample_by="video"), epochs * len(LENGTHS))
    # every epoch is a permutation of the videos: each drawn once per epoch
    for e in range(epochs):
        assert sorted(v for v, _ in by_video[e * 4:(e + 1) * 4]) == ["v0", "v1", "v2", "v3"]
    # and within a video, every frame about equally often: 1000 draws of v1's 3 frames, of v2's 40
    frames = collections.Counter(by_video)
    assert all(280 <= frames["v1", k] <= 390 for k in range(3))  # expected 333, sd 15
    v2 = [frames["v2", k] for k in range(40)]
    assert min(v2) >= 5 and max(v2) <= 50 and sum(v2) == epochs  # expected 25, sd 4.9
    # per frame, the videos come in proportion to their length (the 1-frame video: 1 in 244)
    by_frame = collections.Counter(v for v, _ in draws(SampleStream(records(), None, seed=5), epochs * 4))
    assert by_frame["v0"] <= 30 and by_frame["v3"] >= 3000


def test_video_draws_follow_the_seed_and_split_over_ranks():
    one = draws(SampleStream(records(), None, seed=7, sample_by="video"), 400)
    assert one == draws(SampleStream(records(), None, seed=7, sample_by="video"), 400)
    assert one != draws(SampleStream(records(), None, seed=8, sample_by="video"), 400)
    # rank r of 2 reads positions 2k + r of the same stream: disjoint, together the whole stream
    ranks = [SampleStream(records(), lambda rec: (rec["video_id"], rec["frame_idx"]), seed=7, rank=r,
                          world_size=2, sample_by="video") for r in (0, 1)]
    assert [ranks[p % 2].sample(p // 2) for p in range(400)] == one


def test_video_draws_resume_exactly():
    def loader():
        return ResumableTrainLoader(records(), dict, 3, seed=2, aspect_ratio_grouping=False, sample_by="video")

    straight = [[(s["video_id"], s["frame_idx"]) for s in batch] for batch in take_batches(loader(), 10)]
    first = loader()
    take_batches(first, 4)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert [[(s["video_id"], s["frame_idx"]) for s in b] for b in take_batches(resumed, 6)] == straight[4:]


def test_resuming_with_another_sample_by_warns(caplog):
    first = ResumableTrainLoader(records(), dict, 3, seed=2, sample_by="frame")
    take_batches(first, 2)
    state = first.state_dict()
    assert state["sample_by"] == "frame"
    resumed = ResumableTrainLoader(records(), dict, 3, seed=2, sample_by="video")
    with caplog.at_level(logging.WARNING, logger="vss.data.train_loader"):
        resumed.load_state_dict(state)
    assert ("the checkpoint's training samples were drawn by frame, this run draws them by video "
            "(DATALOADER.SAMPLE_BY)") in caplog.text
    assert resumed.next_place == state["next_place"]


def take_batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_sample_by_errors():
    with pytest.raises(ValueError, match=r"DATALOADER.SAMPLE_BY is 'clip'; expected one of \('frame', 'video'\)"):
        SampleStream(records(), None, seed=0, sample_by="clip")
    with pytest.raises(ValueError, match="SAMPLE_BY 'video' needs a 'video_id' in every training record; record 0"):
        SampleStream([{"file_name": "a.png"}], None, seed=0, sample_by="video")


@pytest.mark.parametrize("sampler", ["frame", "pair"])
def test_train_loader_draws_by_video(tmp_path, caplog, sampler):
    # a 2-frame and a 12-frame video: by video, each is half of the samples (of their usable targets)
    name = write_dataset(tmp_path, {"short": 2, "long": 12})
    cfg = make_cfg([name], sampler)
    cfg.DATALOADER.SAMPLE_BY = "video"
    with caplog.at_level(logging.INFO, logger="vss.data.build"):
        loader = build_video_train_loader(cfg)
    assert f"with sampler {sampler!r}, drawn by video" in caplog.text
    samples = take(loader, 20)
    counts = collections.Counter(d["video_id"] for d in samples)
    assert counts == {"short": 20, "long": 20}
    # a pair target has an earlier frame: the short video's is frame 1 only
    short = {d["frame_idx"] for d in samples if d["video_id"] == "short"}
    assert short == ({1} if sampler == "pair" else {0, 1})
    assert len({d["frame_idx"] for d in samples if d["video_id"] == "long"}) >= 8
