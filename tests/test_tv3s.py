"""TV3S: the Mamba layer, the window partitions, the temporal head and exact streaming."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from vss.engine import setup_cfg
from vss.modeling import VideoSegmentor
from vss.modeling.backbone.mit import MiT
from vss.modeling.segformer_head import FuseConv, LevelEmbed, SegFormerHead
from vss.modeling.tv3s import (
    Mamba, MambaBlock, MambaState, RMSNorm, ShiftedWindowMamba, StateSpaceSharing, StreamState, mamba_map_size,
    merge, partition, window_groups,
)

from conftest import REPO, read_key_list


MAMBA_PARAMS = {"in_proj.weight": 262_144, "conv1d.weight": 2_048, "conv1d.bias": 512, "x_proj.weight": 24_576,
                "dt_proj.weight": 8_192, "dt_proj.bias": 512, "A_log": 8_192, "D": 512, "out_proj.weight": 131_072}




# ---- Mamba layer ----------------------------------------------------------------------

def test_mamba_full_size_names_counts_and_init():
    torch.manual_seed(0)
    m = Mamba(256)
    assert {n: p.numel() for n, p in m.named_parameters()} == MAMBA_PARAMS
    assert (m.d_inner, m.dt_rank, m.d_state, m.d_conv) == (512, 16, 16, 4)
    assert m.conv1d.weight.shape == (512, 1, 4) and m.conv1d.groups == 512
    assert torch.allclose(m.A_log.exp(), torch.arange(1.0, 17).expand(512, 16))
    assert torch.equal(m.D, torch.ones(512))
    steps = F.softplus(m.dt_proj.bias)  # initial step sizes: log-uniform in [1e-3, 0.1]
    assert steps.min() >= 1e-3 - 1e-6 and steps.max() <= 0.1 + 1e-6 and steps.min() < 2e-3 and steps.max() > 0.08
    assert m.dt_proj.weight.abs().max() <= 0.25 and m.dt_proj.weight.abs().max() > 0.24
    assert m.in_proj.bias is None and m.x_proj.bias is None and m.out_proj.bias is None


def mamba_by_definition(m, u):
    """Mamba's forward written out token by token (one sequence, zero initial state)."""
    x, z = m.in_proj(u).chunk(2, dim=-1)  # (L, d_inner)
    w = m.conv1d.weight[:, 0]  # (d_inner, k)
    k = w.shape[1]
    padded = torch.cat([x.new_zeros(k - 1, x.shape[1]), x])
    x = F.silu(torch.stack([(padded[t:t + k] * w.t()).sum(0) for t in range(len(x))]) + m.conv1d.bias)
    dt, B, C = m.x_proj(x).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    delta = F.softplus(m.dt_proj(dt))  # (L, d_inner)
    A = -m.A_log.exp()
    h = torch.zeros(m.d_inner, m.d_state)
    ys = []
    for t in range(len(x)):
        h = torch.exp(delta[t, :, None] * A) * h + delta[t, :, None] * B[t] * x[t, :, None]
        ys.append(h @ C[t] + m.D * x[t])
    return m.out_proj(torch.stack(ys) * F.silu(z))


def test_mamba_forward_matches_its_definition():
    torch.manual_seed(0)
    m = Mamba(8, d_state=4)
    u = torch.randn(1, 9, 8)
    with torch.no_grad():
        out, _ = m(u)
        expected = mamba_by_definition(m, u[0])
    assert torch.allclose(out[0], expected, atol=1e-5)


def test_mamba_state_carries_a_sequence_across_calls():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4)
    u = torch.randn(2, 11, 16)
    with torch.no_grad():
        full, final = m(u)
        pieces, state = [], None
        for piece in (u[:, :3], u[:, 3:4], u[:, 4:]):
            out, state = m(piece, state)
            assert isinstance(state, MambaState)
            pieces.append(out)
        fresh, _ = m(u[:, 4:])
    assert state.conv_state.shape == (2, 32, 3) and state.ssm_state.shape == (2, 32, 4)
    assert state.ssm_state.dtype == torch.float32
    assert (torch.cat(pieces, 1) - full).abs().max() <= 1e-5
    assert torch.allclose(state.ssm_state, final.ssm_state, atol=1e-6)
    assert torch.allclose(state.conv_state, final.conv_state, atol=1e-6)
    last_inputs = m.in_proj(u[:, -3:]).chunk(2, -1)[0].transpose(1, 2)
    assert torch.allclose(state.conv_state, last_inputs, atol=1e-6)  # the last 3 conv inputs
    assert (fresh - full[:, 4:]).abs().max() > 1e-3  # without the state the continuation differs


def test_rms_norm_and_block_residual_stream():
    norm = RMSNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.tensor([[3.0, -3.0, 3.0, -3.0]])
    assert torch.allclose(norm(x), x / math.sqrt(9 + 1e-5) * norm.weight)
    torch.manual_seed(0)
    block = MambaBlock(8, d_state=4).eval()
    h, r = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    with torch.no_grad():
        hidden, residual, _ = block(h, r)
        first_hidden, first_residual, _ = block(h)
        expected, _ = block.mixer(block.norm(r + h))
    assert torch.allclose(residual, r + h) and residual.dtype == torch.float32
    assert torch.allclose(hidden, expected)
    assert torch.equal(first_residual, h)  # the first block starts the residual stream


# ---- windows --------------------------------------------------------------------------

def index_map(t, h, w):
    """(1, t, h, w, 1) whose values are the flat (t, y, x) positions."""
    return torch.arange(t * h * w).view(1, t, h, w, 1)


def sequences(x, groups):
    return {tuple(s[:, 0].tolist()) for seqs in partition(x, groups) for s in seqs}


def official_shifted(t, h, w, size=20, shift=10):
    """The release's shifted layer: roll by -shift, cut the main windows and 8 edge groups."""
    rolled = torch.roll(torch.arange(h * w).view(h, w), (-shift, -shift), (0, 1))
    mh, mw, half = h - size, w - size, size // 2
    pieces = [
        (rolled[:mh, :mw], size, size),  # main
        (rolled[-half:, -half:], half, half),  # a1
        (rolled[-size:-half, -half:], half, half),  # b3
        (rolled[-half:, -size:-half], half, half),  # c3
        (rolled[-size:-half, -size:-half], half, half),  # d
        (rolled[:mh, -half:], size, half),  # b1
        (rolled[:mh, -size:-half], size, half),  # b2
        (rolled[-half:, :mw], half, size),  # c1
        (rolled[-size:-half, :mw], half, size),  # c2
    ]
    out = set()
    for region, wh, ww in pieces:
        for i in range(0, region.shape[0], wh):
            for j in range(0, region.shape[1], ww):
                window = region[i:i + wh, j:j + ww].flatten().tolist()
                out.add(tuple(p + f * h * w for f in range(t) for p in window))
    return out


def test_unshifted_windows_token_order_t_y_x():
    groups = window_groups(40, 40, 20)
    assert [(g.rows, g.cols, g.height, g.width) for g in groups] == [((0, 20), (0, 20), 20, 20)]
    seqs = partition(index_map(4, 40, 40), groups)[0][:, :, 0]
    assert seqs.shape == (4, 1600)
    # window 1 (row 0, col 1): frame by frame, rows, then columns
    expected = [f * 1600 + y * 40 + x for f in range(4) for y in range(20) for x in range(20, 40)]
    assert seqs[1].tolist() == expected


def test_shifted_partition_equals_official_grouping_on_fixture():
    groups = window_groups(40, 40, 20, 10)
    by_length = sorted((g.num_windows, 4 * g.height * g.width) for g in groups)
    assert by_length == [(1, 1600), (2, 800), (2, 800), (4, 400)]  # 1 main, 4 edges, 4 corners
    rects = sorted(r for g in groups for r in g.rectangles())
    assert rects == sorted([(10, 10, 20, 20)] + [(y, x, 10, 10) for y in (0, 30) for x in (0, 30)]
                           + [(10, x, 20, 10) for x in (0, 30)] + [(y, 10, 10, 20) for y in (0, 30)])
    assert sequences(index_map(4, 40, 40), groups) == official_shifted(4, 40, 40)


def test_shifted_partition_equals_official_grouping_on_a_vspw_map():
    # 60x120: the Mamba map of a 480x853 VSPW frame.
    assert sequences(index_map(2, 60, 120), window_groups(60, 120, 20, 10)) == official_shifted(2, 60, 120)


@pytest.mark.parametrize("size,shift", [(20, 0), (20, 10), (4, 2), (6, 2)])
def test_merge_inverts_partition(size, shift):
    x = torch.randn(2, 3, 12 if size < 20 else 40, 24 if size < 20 else 60, 5)
    groups = window_groups(x.shape[2], x.shape[3], size, shift)
    assert sum(g.num_windows * g.height * g.width for g in groups) == x.shape[2] * x.shape[3]
    assert torch.equal(merge(partition(x, groups), groups, x.shape[2], x.shape[3]), x)


def test_window_arguments_are_checked():
    with pytest.raises(ValueError, match="not a multiple of the window size 20"):
        window_groups(30, 40, 20)
    with pytest.raises(ValueError, match="0 <= shift < size"):
        window_groups(40, 40, 20, 20)


def test_mamba_map_size_follows_the_release():
    assert mamba_map_size(120, 120, 20) == (60, 60)  # 480x480 training crop
    assert mamba_map_size(120, 216, 20) == (60, 120)  # 480x864 VSPW test frame
    assert mamba_map_size(60, 60, 20) == (40, 40)  # 240x240: rounded up
    assert mamba_map_size(32, 40, 4) == (16, 20)


# ---- the Mamba stack (`vs`) -------------------------------------------------------------

def tiny_stack(**kwargs):
    torch.manual_seed(0)
    return ShiftedWindowMamba(16, num_layers=4, window_size=4, shift=2, d_state=4, **kwargs).eval()


def test_stack_streams_exactly_one_frame_at_a_time():
    vs = tiny_stack()
    x = torch.randn(2, 5, 16, 8, 12)
    with torch.no_grad():
        clip, clip_states = vs(x)
        states, frames, sizes = None, [], set()
        for t in range(5):
            y, states = vs(x[:, t:t + 1], states)
            frames.append(y)
            sizes.add(sum(s.conv_state.numel() + s.ssm_state.numel() for layer in states for s in layer))
        alone, _ = vs(x[:, 4:])
    assert (torch.cat(frames, 1) - clip).abs().max() <= 1e-4
    assert all(torch.allclose(a.ssm_state, b.ssm_state, atol=1e-5)
               for la, lb in zip(states, clip_states) for a, b in zip(la, lb))
    assert (alone[:, 0] - clip[:, 4]).abs().max() > 1e-2  # the carried states matter
    assert len(sizes) == 1  # the state does not grow with the video
    # four window groups per shifted layer (corners, top/bottom, left/right, interior)
    assert [len(s) for s in states] == [1, 4, 1, 4]


def test_stack_runs_in_the_dtype_it_is_cast_to():
    vs = tiny_stack()
    x = torch.randn(1, 3, 16, 4, 8)
    with torch.no_grad():
        y32, _ = vs(x)
        y64, states = vs.double()(x.double())
    assert y64.dtype == torch.float64 and states[0][0].ssm_state.dtype == torch.float64
    assert (y64 - y32.double()).abs().max() <= 1e-4


def test_stack_output_is_the_normalised_residual_stream():
    # With silent mixers every block adds nothing: the output is norm_f(x), no outer skip.
    vs = tiny_stack()
    with torch.no_grad():
        for layer in vs.layers:
            layer.mixer.out_proj.weight.zero_()
        vs.norm_f.weight.fill_(2.0)
        x = torch.randn(1, 2, 16, 4, 8)
        y, _ = vs(x)
    assert torch.allclose(y, 2.0 * x * torch.rsqrt(x.square().mean(2, keepdim=True) + 1e-5), atol=1e-5)


def test_stack_drop_path_rates_follow_the_release():
    vs = ShiftedWindowMamba(16, num_layers=8, window_size=4, shift=2, drop_path=0.1)
    assert [layer.drop_path for layer in vs.layers] == pytest.approx([0, 0] + [0.1 * k / 7 for k in range(1, 7)])
    assert vs.drop_path == pytest.approx(0.1)


def test_temporal_head_names_and_counts_equal_the_release(reference_dir):
    official = read_key_list(reference_dir / "tv3s_keys_b1.txt", "decode_head.")
    with torch.device("meta"):
        head = StateSpaceSharing(num_classes=124)
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    expected = {k: v for k, v in official.items() if k.startswith(("vs.", "linear_pred2."))}
    assert list(ours) == [k for k in official if k in expected]  # same names, same order
    assert ours == expected
    assert sum(p.numel() for p in head.vs.layers[0].parameters()) == 438_016
    assert sum(p.numel() for p in head.parameters()) == 8 * 438_016 + 256 + 31_868


@pytest.mark.parametrize("config,params,head_params", [
    # The release's MiT-B1 model: 17,261,364 with a decode head of 4,109,940, both including
    # the unused conv_seg (15,996) that is left out here.
    ("configs/vspw/tv3s/MiT-B1.yaml", 17_245_368, 4_109_940 - 15_996),
    ("configs/vspw/tv3s/MiT-B2.yaml", 28_290_232, 4_109_940 - 15_996),
    ("configs/vspw/tv3s/Swin-T.yaml", 31_721_138, 4_200_440),  # published 31.7M
])
def test_full_size_models(config, params, head_params):
    cfg = setup_cfg(str(REPO / config), ["MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model.temporal, StateSpaceSharing)
    assert sum(p.numel() for p in model.parameters()) == params
    head = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    assert sum(p.numel() for p in head) == head_params


# ---- the head in VideoSegmentor -----------------------------------------------------------

def tiny_model(inference="stream", clip_offsets=(-9, -6, -3, 0), drop_path=0.0, max_open=2,
               temporal_loss_frames="last", aux_loss_frames="all", loss_average="valid"):
    torch.manual_seed(0)
    backbone = MiT(embed_dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), drop_path_rate=0.0)
    head = SegFormerHead(backbone.output_shape(), num_classes=3, embed_dim=16, norm="BN", loss_average=loss_average)
    temporal = StateSpaceSharing(num_classes=3, embed_dim=16, window_size=4, shift=2, num_blocks=1, d_state=4,
                                 drop_path=drop_path, inference=inference, clip_offsets=clip_offsets,
                                 temporal_loss_frames=temporal_loss_frames, aux_loss_frames=aux_loss_frames,
                                 loss_average=loss_average)
    model = VideoSegmentor(backbone=backbone, sem_seg_head=head, temporal=temporal, pixel_mean=[128.0] * 3,
                           pixel_std=[64.0] * 3, size_divisibility=32, max_open_videos=max_open)
    # BN with non-trivial running statistics, as after training
    with torch.no_grad():
        head.linear_fuse.bn.running_mean.uniform_(-0.5, 0.5)
        head.linear_fuse.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def video(name, n, seed, size=(60, 90)):
    """Frames of a video: 60x90 images (padded to 64x96: a 8x12 Mamba map) resized to 80x120."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, *size, generator=g) * 255
    return [{"image": (base + 40 * torch.rand(3, *size, generator=g)).clamp(0, 255).to(torch.uint8),
             "height": 80, "width": 120, "video_id": name, "frame_idx": i} for i in range(n)]


def stream(model, frames):
    with torch.no_grad():
        return [model([f])[0]["sem_seg"] for f in frames]


def test_streaming_equals_clip_forward_of_every_prefix():
    model = tiny_model()
    frames = video("a", 4, 0)
    streamed = stream(model, frames)
    with torch.no_grad():
        whole = [o["sem_seg"] for o in model.temporal.infer_clip(model, frames)]
        prefixes = [model.temporal.infer_clip(model, frames[:k])[-1]["sem_seg"] for k in range(1, 5)]
        alone = model.temporal.infer_clip(model, frames[3:])[0]["sem_seg"]
    assert streamed[0].shape == (3, 80, 120)
    for s, p, w in zip(streamed, prefixes, whole):
        assert (s - p).abs().max() <= 1e-4 and (s - w).abs().max() <= 1e-4
    assert (streamed[3] - alone).abs().max() > 1e-3  # frame 3 used the earlier frames
    state = model.states.get("a", 4)
    assert isinstance(state, StreamState) and len(state.layers) == 2


def test_state_resets_at_a_new_video_and_interleaving_changes_nothing():
    a, b = video("a", 3, 0), video("b", 3, 1)
    separate_b = stream(tiny_model(), b)
    model = tiny_model()
    separate_a = stream(model, a)
    after_a = stream(model, b)  # b starts from fresh states, not a's
    assert all(torch.equal(x, y) for x, y in zip(after_a, separate_b))
    interleaved = stream(tiny_model(max_open=2), [f for pair in zip(a, b) for f in pair])
    assert all((x - y).abs().max() <= 1e-6 for x, y in zip(interleaved[0::2], separate_a))
    assert all((x - y).abs().max() <= 1e-6 for x, y in zip(interleaved[1::2], separate_b))


def test_clip_mode_predicts_each_frame_from_a_fresh_clip():
    offsets = (-4, -2, -1, 0)
    model = tiny_model(inference="clip", clip_offsets=offsets)
    frames = video("a", 7, 0)
    streamed = stream(model, frames)
    with torch.no_grad():
        for k in (4, 6):  # frames 0..3, before the offsets fit: the per-frame head (tests/test_tv3s_clip_test.py)
            clip = [frames[k + o] for o in offsets]
            expected = model.temporal.infer_clip(model, clip)[-1]["sem_seg"]
            assert (streamed[k] - expected).abs().max() <= 1e-4
    kept = [i for i, _ in model.states.get("a", 7).frames]
    assert kept == [2, 3, 4, 5, 6]  # bounded: what the next frames' clips can still use


def test_frame_mode_predicts_each_frame_as_a_video_of_its_own():
    frames = video("a", 4, 0)
    streamed = stream(tiny_model(), frames)
    model = tiny_model(inference="frame")
    reset = stream(model, frames)
    alone = [stream(tiny_model(), [dict(f, video_id=f"alone {t}", frame_idx=0)])[0] for t, f in enumerate(frames)]
    for t in range(4):
        assert (reset[t] - alone[t]).abs().max() <= 1e-6, t
    assert torch.equal(reset[0], streamed[0])  # a video's first frame starts from a fresh state anyway
    assert all((reset[t] - streamed[t]).abs().max() > 1e-3 for t in (1, 2, 3))  # the states carried something
    assert model.states.get("a", 4) is None  # nothing carried to the next frame


def test_frames_of_a_video_must_keep_one_size():
    model = tiny_model()
    frames = video("a", 1, 0) + [dict(video("a", 2, 0, size=(64, 64))[1])]
    with pytest.raises(ValueError, match=r"video 'a' frame 1: image size \(64, 64\) differs"):
        stream(model, frames)


# ---- training -------------------------------------------------------------------------------

def clip_batch(n_clips=2, frames=3, size=(64, 96), seed=0):
    """Clips of blocky label maps whose classes have their own colours (learnable)."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[40.0, 40, 200], [40, 200, 40], [200, 40, 40]])
    batch = []
    for c in range(n_clips):
        labels = [F.interpolate(torch.randint(0, 3, (1, 1, size[0] // 16, size[1] // 16), generator=g).float(),
                                size=size)[0, 0].long() for _ in range(frames)]
        images = [(palette[lab].permute(2, 0, 1) + 30 * torch.randn(3, *size, generator=g)).clamp(0, 255)
                  .to(torch.uint8) for lab in labels]
        labels[0][:, : size[1] // 2] = 255
        batch.append({"images": images, "sem_segs": labels, "image": images[-1], "sem_seg": labels[-1],
                      "file_name": f"clip{c}"})
    batch[0]["sem_segs"][1] = torch.full(size, 255)  # an unlabelled context frame
    return batch


@pytest.mark.parametrize("temporal_loss_frames,aux_loss_frames,loss_average", [
    ("last", "all", "valid"), ("all", "all", "valid"), ("last", "last", "valid"),
    ("last", "all", "all"),  # the VSPW release
    ("last", "last", "all"),  # the Cityscapes release
])
def test_loss_weights_and_frames_by_value(temporal_loss_frames, aux_loss_frames, loss_average):
    model = tiny_model(temporal_loss_frames=temporal_loss_frames, aux_loss_frames=aux_loss_frames,
                       loss_average=loss_average).train()
    aux_bias, temporal_bias = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 3.0])
    with torch.no_grad():
        model.sem_seg_head.linear_pred.weight.zero_()
        model.sem_seg_head.linear_pred.bias.copy_(aux_bias)
        model.temporal.linear_pred2.weight.zero_()
        model.temporal.linear_pred2.bias.copy_(temporal_bias)
    batch = clip_batch()
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg_aux", "loss_sem_seg"}

    def mean_ce(bias, labels):
        """Sum of the CE over the labelled pixels / the labelled pixels, or / all pixels
        (mmseg 0.11: one mean over every pixel of every supervised frame)."""
        labels = torch.cat([x.flatten() for x in labels])
        valid = labels[labels != 255]
        total = (torch.logsumexp(bias, 0) - bias[valid]).sum().item()
        return total / (len(labels) if loss_average == "all" else len(valid))

    every_frame = [label for x in batch for label in x["sem_segs"]]
    last_frames = [x["sem_segs"][-1] for x in batch]
    supervised = every_frame if temporal_loss_frames == "all" else last_frames
    aux_supervised = every_frame if aux_loss_frames == "all" else last_frames
    assert losses["loss_sem_seg_aux"].item() == pytest.approx(0.5 * mean_ce(aux_bias, aux_supervised), rel=1e-5)
    assert losses["loss_sem_seg"].item() == pytest.approx(1.0 * mean_ce(temporal_bias, supervised), rel=1e-5)


def test_all_frames_loss_supervises_each_frame_with_its_own_prediction():
    """With TEMPORAL_LOSS_FRAMES "all", the loss is the CE of frame i's own temporal logits
    against frame i's labels, over every frame of every clip (b-major order kept)."""
    model = tiny_model(temporal_loss_frames="all").train()
    model.temporal.dropout.p = 0.0
    batch = clip_batch(n_clips=2, frames=3)
    per_frame = {}

    def capture(module, inputs, output):
        per_frame["logits"] = output

    handle = model.temporal.linear_pred2.register_forward_hook(capture)
    losses = model(batch)
    handle.remove()
    logits = per_frame["logits"]  # (B * T, K, h, w), b-major
    assert logits.shape[0] == 6
    temporal = model.temporal
    targets = [label for x in batch for label in x["sem_segs"]]
    total, count = 0.0, 0
    for i, target in enumerate(targets):
        up = F.interpolate(F.interpolate(logits[i : i + 1], size=(16, 24), mode="bilinear", align_corners=False),
                           size=target.shape, mode="bilinear", align_corners=False)
        valid = target != 255
        total += F.cross_entropy(up, target[None], ignore_index=255, reduction="sum").item()
        count += valid.sum().item()
    assert losses["loss_sem_seg"].item() == pytest.approx(temporal.temporal_weight * total / count, rel=1e-4)


@pytest.mark.parametrize("option,key", [
    ({"temporal_loss_frames": "first"}, "MODEL.TV3S.TEMPORAL_LOSS_FRAMES"),
    ({"aux_loss_frames": "first"}, "MODEL.TV3S.AUX_LOSS_FRAMES"),
    ({"loss_average": "mean"}, "MODEL.SEM_SEG_HEAD.LOSS_AVERAGE"),
    ({"predictor_init": "zeros"}, "MODEL.SEM_SEG_HEAD.PREDICTOR_INIT"),
])
def test_loss_and_init_options_are_checked(option, key):
    with pytest.raises(ValueError, match=key):
        StateSpaceSharing(num_classes=3, embed_dim=16, window_size=4, shift=2, **option)


def test_segformer_head_loss_average_by_value():
    torch.manual_seed(0)
    backbone = MiT(embed_dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), drop_path_rate=0.0)
    features = backbone(torch.randn(2, 3, 32, 48))
    targets = torch.randint(0, 3, (2, 32, 48))
    targets[0, :, :20] = 255
    bias = torch.tensor([1.0, -1.0, 0.5])
    losses = {}
    for average in ("valid", "all"):
        head = SegFormerHead(backbone.output_shape(), num_classes=3, embed_dim=16, norm="BN", loss_weight=2.0,
                             loss_average=average).train()
        with torch.no_grad():
            head.linear_pred.weight.zero_()
            head.linear_pred.bias.copy_(bias)
        losses[average] = head(features, targets)[1]["loss_sem_seg"].item()
    valid = targets[targets != 255]
    total = (torch.logsumexp(bias, 0) - bias[valid]).sum().item()
    assert losses["valid"] == pytest.approx(2.0 * total / valid.numel(), rel=1e-5)
    assert losses["all"] == pytest.approx(2.0 * total / targets.numel(), rel=1e-5)  # mmseg 0.11: ignored pixels count


def test_release_init_keeps_the_pytorch_defaults():
    kwargs = dict(num_classes=5, embed_dim=16, window_size=4, shift=2, num_blocks=2, d_state=4)
    torch.manual_seed(3)
    release = StateSpaceSharing(predictor_init="pytorch", rescale_out_proj=False, **kwargs)
    torch.manual_seed(3)
    ours = StateSpaceSharing(**kwargs)
    torch.manual_seed(3)
    plain_vs = ShiftedWindowMamba(16, 4, window_size=4, shift=2, d_state=4, rescale_out_proj=False)
    plain_conv = torch.nn.Conv2d(16, 5, 1)
    assert all(torch.equal(a, b) for a, b in zip(release.vs.state_dict().values(), plain_vs.state_dict().values()))
    # nn.Conv2d's init: weights and bias uniform in +-1/sqrt(16)
    assert torch.equal(release.linear_pred2.weight, plain_conv.weight)
    assert torch.equal(release.linear_pred2.bias, plain_conv.bias) and release.linear_pred2.bias.abs().max() > 0.1
    # ours: out_proj / sqrt(4 layers), N(0, 0.01) classifier with zero bias
    for a, b in zip(release.vs.layers, ours.vs.layers):
        assert torch.allclose(a.mixer.out_proj.weight, 2.0 * b.mixer.out_proj.weight)
        assert torch.equal(a.mixer.in_proj.weight, b.mixer.in_proj.weight)
    assert ours.linear_pred2.weight.abs().max() < 0.05 and not ours.linear_pred2.bias.any()

    torch.manual_seed(4)
    shapes = {"res2": ShapeSpec(channels=8, stride=4)}
    head = SegFormerHead(shapes, num_classes=5, embed_dim=16, predictor_init="pytorch")
    torch.manual_seed(4)
    LevelEmbed(8, 16), FuseConv(16, 16, "BN")
    assert torch.equal(head.linear_pred.weight, torch.nn.Conv2d(16, 5, 1).weight)


@pytest.mark.parametrize("config,lr,wd,iters,batch,aux_frames", [
    # the releases' configs (projects/TV3S/README.md, recipe table)
    ("configs/vspw/tv3s/MiT-B1.yaml", 6e-5, 0.01, 160_000, 4, "all"),
    ("configs/vspw/tv3s/MiT-B2.yaml", 6e-5, 0.01, 160_000, 4, "all"),
    ("configs/vspw/tv3s/MiT-B5.yaml", 3e-5, 0.01, 240_000, 4, "all"),
    ("configs/vspw/tv3s/Swin-T.yaml", 1e-5, 0.05, 160_000, 4, "all"),
    ("configs/vspw/tv3s/Swin-S.yaml", 1e-5, 0.05, 160_000, 4, "all"),
    ("configs/cityscapes/tv3s/MiT-B1.yaml", 6e-5, 0.01, 160_000, 2, "last"),
])
def test_configs_carry_the_release_model_loss_and_optimizer(config, lr, wd, iters, batch, aux_frames):
    cfg = setup_cfg(str(REPO / config), ["MODEL.DEVICE", "meta"])
    s, head, tv3s = cfg.SOLVER, cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.TV3S
    assert (s.BASE_LR, s.WEIGHT_DECAY, s.MAX_ITER, s.IMS_PER_BATCH) == (lr, wd, iters, batch)
    assert (head.LOSS_AVERAGE, head.PREDICTOR_INIT, tv3s.RESCALE_OUT_PROJ) == ("all", "pytorch", False)
    assert (tv3s.AUX_WEIGHT, tv3s.TEMPORAL_WEIGHT, tv3s.AUX_LOSS_FRAMES, tv3s.TEMPORAL_LOSS_FRAMES) == (
        0.5, 1.0, aux_frames, "last")
    with torch.device("meta"):
        temporal = build_model(cfg).temporal
    assert (temporal.loss_average, temporal.aux_loss_frames) == ("all", aux_frames)


def test_synthetic_configs_keep_this_projects_loss_and_init():
    cfg = setup_cfg(str(REPO / "configs/synthetic/tv3s_tiny.yaml"), [])
    assert (cfg.MODEL.SEM_SEG_HEAD.LOSS_AVERAGE, cfg.MODEL.SEM_SEG_HEAD.PREDICTOR_INIT) == ("valid", "normal")
    assert cfg.MODEL.TV3S.RESCALE_OUT_PROJ and cfg.MODEL.TV3S.AUX_LOSS_FRAMES == "all" and cfg.SOLVER.CUSTOM_KEYS == []


def test_gradients_reach_every_parameter():
    model = tiny_model().train()
    losses = model(clip_batch())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_loss_decreases_on_a_fixed_batch():
    model = tiny_model(drop_path=0.1).train()
    batch = clip_batch(n_clips=2, frames=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(12):
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0]


def test_training_needs_clips():
    model = tiny_model().train()
    with pytest.raises(ValueError, match="set INPUT.VIDEO.SAMPLER to 'clip'"):
        model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "file_name": "f.jpg"}])


def test_per_frame_at_scan_resolution_is_tv3s_with_a_temporal_module_that_changes_nothing():
    from vss.evaluation.scan_resolution import at_scan_resolution

    model = tiny_model()
    coarse = at_scan_resolution(model, window_size=4)
    image = torch.rand(1, 3, 64, 96) * 255
    features = model.backbone((image - 128.0) / 64.0)
    fused = model.sem_seg_head.forward_features(features)
    fine = model.sem_seg_head.predict(fused)
    low = coarse.sem_seg_head.predict(fused)
    assert low.shape == fine.shape == (1, 3, 16, 24)
    # the temporal classifier given the per-frame one's weights, on the unchanged scan map (8x12)
    temporal = model.temporal
    with torch.no_grad():
        temporal.linear_pred2.weight.copy_(model.sem_seg_head.linear_pred.weight)
        temporal.linear_pred2.bias.copy_(model.sem_seg_head.linear_pred.bias)
    x = temporal.mamba_input(fused, 1)
    assert x.shape[-2:] == (8, 12)
    assert torch.allclose(low, temporal.classify(x[:, 0], fused.shape[-2:]), atol=1e-5)
    # linear classifier, linear resize: the same as resizing the per-frame logits
    resized = F.interpolate(F.interpolate(fine, size=(8, 12), mode="bilinear", align_corners=False),
                            size=(16, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(low, resized, atol=1e-5)
    assert (low - fine).abs().max() > 1e-2  # coarser, not the same prediction
    # the per-frame head's forward uses it; the original model is untouched
    logits, _ = coarse.sem_seg_head(features)
    assert torch.allclose(logits, F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False))
    assert torch.equal(model.sem_seg_head.predict(fused), fine)
