"""An endless training loader whose position is saved in checkpoints and restored exactly.

detectron2's training loader cannot be resumed: its sampler starts again from its first index,
and each worker's augmentation RNG depends on when the workers were started. Here every sample
is a pure function of (seed, its place in the stream): the record comes from a per-epoch
permutation drawn from the seed (of the records, or of the videos with a frame of the video
drawn from (seed, place)), and the augmentation RNGs (python, numpy, torch) are seeded from
(seed, place) while the mapper runs. A run resumed at place p therefore sees exactly the samples
an uninterrupted run sees from p, with any number of workers and however far they had read ahead.
"""
import contextlib
import logging
import random

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList

logger = logging.getLogger(__name__)

SAMPLE, EPOCH, FRAME = 0, 1, 2
SAMPLE_BY = ("frame", "video")


def derived_seed(seed, kind, number):
    """A 32-bit seed for draw `number` of `kind` (SAMPLE or EPOCH) of the stream of `seed`."""
    return int(np.random.SeedSequence([seed, kind, number]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rngs(seed):
    """Seed python's, numpy's and torch's global RNGs, restoring their states afterwards.

    Restoring matters when samples are mapped in the training process (no workers): the model's
    own random draws (dropout, point sampling) must not depend on how many samples were mapped.
    """
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # not torch.manual_seed: CUDA RNGs stay untouched
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _as_is(sample):
    return sample


def video_groups(records):
    """Indices of `records` by "video_id", videos in order of first appearance."""
    groups = {}
    for i, rec in enumerate(records):
        if "video_id" not in rec:
            raise ValueError(f"DATALOADER.SAMPLE_BY 'video' needs a 'video_id' in every training record; "
                             f"record {i} has keys {sorted(rec)}")
        groups.setdefault(rec["video_id"], []).append(i)
    return list(groups.values())


class SampleStream(torchdata.IterableDataset):
    """The mapped samples of one rank at places `start`, `start + 1`, ..., as (place, sample).

    Place k of rank r is position k * world_size + r of the shared stream, so ranks see disjoint
    samples; DataLoader workers take every num_workers-th place, which the DataLoader's
    round-robin puts back in order. `sample_by` "frame": an epoch is a permutation of the records;
    "video": a permutation of the videos, each position then drawing one record of its video.
    """

    def __init__(self, records, mapper, seed, rank=0, world_size=1, sample_by="frame"):
        if sample_by not in SAMPLE_BY:
            raise ValueError(f"DATALOADER.SAMPLE_BY is {sample_by!r}; expected one of {SAMPLE_BY}")
        self.records = DatasetFromList(records, copy=False)
        self.sample_by = sample_by
        self.groups = video_groups(records) if sample_by == "video" else [[i] for i in range(len(records))]
        self.mapper = mapper
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = 0
        self._epoch, self._order = None, None

    def record_index(self, position):
        epoch, offset = divmod(position, len(self.groups))
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, EPOCH, epoch))
            self._epoch, self._order = epoch, torch.randperm(len(self.groups), generator=generator)
        group = self.groups[int(self._order[offset])]
        if len(group) == 1:
            return group[0]
        generator = torch.Generator().manual_seed(derived_seed(self.seed, FRAME, position))
        return group[int(torch.randint(len(group), (), generator=generator))]

    def sample(self, place):
        position = place * self.world_size + self.rank
        with seeded_rngs(derived_seed(self.seed, SAMPLE, position)):
            return self.mapper(self.records[self.record_index(position)])

    def __iter__(self):
        worker = torchdata.get_worker_info()
        place, step = self.start, 1
        if worker is not None:
            place, step = place + worker.id, worker.num_workers
        while True:
            yield place, self.sample(place)
            place += step


class ResumableTrainLoader:
    """Batches of mapped training samples, endless, with `state_dict` / `load_state_dict`.

    With `aspect_ratio_grouping` (as detectron2's), a batch holds samples whose original frames
    are all landscape or all portrait; samples read but not yet batched are part of the state.
    The state describes what the consumer has received so far, so it is exact whenever it is
    taken between two batches.
    """

    def __init__(self, records, mapper, batch_size, *, seed, num_workers=0,
                 aspect_ratio_grouping=True, rank=0, world_size=1, sample_by="frame"):
        if not records:
            raise ValueError("the training loader needs at least one record")
        if batch_size < 1:
            raise ValueError(f"batch size per process must be >= 1, got {batch_size}")
        self.stream = SampleStream(records, mapper, seed, rank, world_size, sample_by)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.next_place = 0  # the first place not yet read
        self.buckets = ([], [])  # (place, sample) read but not yet batched, by orientation
        self.started = False

    def state_dict(self):
        return {
            "seed": self.stream.seed,
            "world_size": self.stream.world_size,
            "sample_by": self.stream.sample_by,
            "next_place": self.next_place,
            "pending": [[place for place, _ in bucket] for bucket in self.buckets],
        }

    def load_state_dict(self, state):
        if self.started:
            raise RuntimeError("the training loader's state can only be restored before its first batch")
        self.stream.seed = state["seed"]
        self.buckets = ([], [])
        sample_by = state.get("sample_by", "frame")  # checkpoints from before DATALOADER.SAMPLE_BY drew frames
        if sample_by != self.stream.sample_by:
            logger.warning("the checkpoint's training samples were drawn by %s, this run draws them by %s "
                           "(DATALOADER.SAMPLE_BY): continuing after the same number of samples, but not with "
                           "the samples an uninterrupted run would see", sample_by, self.stream.sample_by)
        if state["world_size"] != self.stream.world_size:
            logger.warning("the checkpoint's data position is for %d processes, this run has %d: continuing "
                           "after the same number of samples, but not with the samples an uninterrupted "
                           "run would see", state["world_size"], self.stream.world_size)
            self.next_place = -(-state["next_place"] * state["world_size"] // self.stream.world_size)
            return
        self.next_place = state["next_place"]
        for place in sorted(p for places in state["pending"] for p in places):
            sample = self.stream.sample(place)
            self._bucket(sample).append((place, sample))

    def _bucket(self, sample):
        if not self.aspect_ratio_grouping:
            return self.buckets[0]
        return self.buckets[0 if sample["width"] > sample["height"] else 1]

    def _take(self, bucket):
        batch = [sample for _, sample in bucket[:self.batch_size]]
        del bucket[:self.batch_size]
        return batch

    def __iter__(self):
        self.started = True
        for bucket in self.buckets:  # restored samples enough for a batch (the batch size changed)
            while len(bucket) >= self.batch_size:
                yield self._take(bucket)
        self.stream.start = self.next_place
        loader = torchdata.DataLoader(
            self.stream, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
            # a private generator: starting the workers must not draw from the global torch RNG
            generator=torch.Generator().manual_seed(self.stream.seed),
        )
        for place, sample in loader:
            if place != self.next_place:
                raise RuntimeError(f"the training loader received sample {place}, expected {self.next_place}")
            self.next_place += 1
            bucket = self._bucket(sample)
            bucket.append((place, sample))
            if len(bucket) == self.batch_size:
                yield self._take(bucket)
