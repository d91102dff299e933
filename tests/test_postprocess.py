import pytest
import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess

from vss.modeling.postprocess import labels_only, output_labels, sem_seg_labels, sem_seg_output


def _full_argmax(scores, image_size, height, width):
    return sem_seg_postprocess(scores, image_size, height, width).argmax(dim=0)


# (K, padded H, padded W, image h, image w, output height, output width): odd sizes, upsampling,
# downsampling, one axis each way, same size, padding cropped or not.
CASES = [
    (7, 13, 17, 11, 16, 101, 77),
    (5, 31, 29, 31, 29, 31, 29),
    (3, 50, 40, 47, 33, 23, 19),
    (9, 24, 32, 21, 30, 97, 13),
    (1, 8, 8, 8, 8, 15, 9),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("classes_per_chunk", [1, 2, 3, 100])
def test_labels_equal_full_argmax_on_random_scores(case, classes_per_chunk):
    k, hp, wp, h, w, height, width = case
    scores = torch.randn(k, hp, wp, generator=torch.Generator().manual_seed(k * hp + wp))
    labels = sem_seg_labels(scores, (h, w), height, width, chunk_elements=classes_per_chunk * height * width)
    assert labels.shape == (height, width) and labels.dtype == torch.int64
    assert torch.equal(labels, _full_argmax(scores, (h, w), height, width))


@pytest.mark.parametrize("classes_per_chunk", [1, 2, 4])
def test_ties_go_to_the_first_class_as_argmax(classes_per_chunk):
    # Few distinct values: exact ties everywhere, before and after resizing; class 5 repeats
    # class 1 and class 6 repeats class 4, so any later duplicate must lose to its original.
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (5, 9, 11), generator=g).float()
    scores = torch.cat([scores, scores[1:2], scores[4:5]])
    full = _full_argmax(scores, (9, 11), 25, 31)
    labels = sem_seg_labels(scores, (9, 11), 25, 31, chunk_elements=classes_per_chunk * 25 * 31)
    assert torch.equal(labels, full)
    assert (labels != 5).all() and (labels != 6).all()
    constant = torch.zeros(4, 3, 3)
    assert (sem_seg_labels(constant, (3, 3), 7, 7, chunk_elements=1) == 0).all()


def test_nan_counts_as_the_maximum_as_in_argmax():
    scores = torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(1))
    scores[2, 3, 3] = float("nan")
    scores[3, 0, 0] = float("nan")
    full = _full_argmax(scores, (6, 6), 12, 12)
    assert torch.equal(sem_seg_labels(scores, (6, 6), 12, 12, chunk_elements=1), full)
    assert (full == 2).any() and (full == 3).any()


def test_chunks_bound_the_resized_planes(monkeypatch):
    import vss.modeling.postprocess as postprocess

    seen = []

    def spy(scores, image_size, height, width):
        seen.append(scores.shape[0])
        return sem_seg_postprocess(scores, image_size, height, width)

    monkeypatch.setattr(postprocess, "sem_seg_postprocess", spy)
    scores = torch.randn(10, 5, 6)
    sem_seg_labels(scores, (5, 6), 20, 30, chunk_elements=3 * 600 + 599)
    assert seen == [3, 3, 3, 1]
    seen.clear()
    sem_seg_labels(scores, (5, 6), 20, 30, chunk_elements=10)  # below one plane: one class at a time
    assert seen == [1] * 10


def test_output_dict_follows_labels_only():
    scores = torch.randn(4, 8, 10, generator=torch.Generator().manual_seed(2))
    full = sem_seg_output(scores, (7, 9), 15, 19)
    assert set(full) == {"sem_seg"} and full["sem_seg"].shape == (4, 15, 19)
    torch.testing.assert_close(full["sem_seg"], sem_seg_postprocess(scores, (7, 9), 15, 19), rtol=0, atol=0)
    with labels_only():
        labels = sem_seg_output(scores, (7, 9), 15, 19)
        with labels_only(False):
            assert set(sem_seg_output(scores, (7, 9), 15, 19)) == {"sem_seg"}
    assert set(labels) == {"sem_seg_labels"}
    assert torch.equal(labels["sem_seg_labels"], full["sem_seg"].argmax(0))
    assert torch.equal(output_labels(labels), output_labels(full))
    # No image size: the scores are at the output size already, returned as they are.
    same = torch.randn(4, 15, 19)
    assert sem_seg_output(same, None, 15, 19)["sem_seg"] is same
    with labels_only():
        assert torch.equal(sem_seg_output(same, None, 15, 19)["sem_seg_labels"], same.argmax(0))


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(3, 4), (3, 4), 5, 5), r"expected \(K, H, W\) class scores .* got shape \(3, 4\)"),
    ((torch.zeros(0, 3, 4), (3, 4), 5, 5), r"got shape \(0, 3, 4\)"),
    ((torch.zeros(2, 3, 4), (4, 4), 5, 5), r"image size \(4, 4\) does not fit in the 3x4 scores"),
    ((torch.zeros(2, 3, 4), (3, 4), 0, 5), r"output size must be positive, got 0x5"),
])
def test_bad_input_is_named(args, message):
    with pytest.raises(ValueError, match=message):
        sem_seg_labels(*args)
