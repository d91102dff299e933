"""CPU against CUDA: the same weights and frames give the same outputs on both devices.

These run where a GPU is (`make test-gpu` runs every test marked `cuda`); elsewhere they skip,
saying why. TF32 is turned off so that the GPU computes in true float32, as the CPU does; on
CUDA the TV3S scan and conv use mamba-ssm's and causal-conv1d's kernels when installed.
"""
import pytest
import torch
from detectron2.modeling import build_model

from vss.engine import setup_cfg

from conftest import REPO

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

HEIGHT, WIDTH = 96, 128
CONFIGS = ["mask2former_tiny.yaml", "mpvss_query_flow.yaml", "mpvss_optical_flow.yaml", "tv3s_tiny.yaml"]


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model(config, device, state=None):
    cfg = setup_cfg(str(REPO / "configs" / "synthetic" / config), [
        "MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "MODEL.MPVSS.KEY_INTERVAL", 2,
    ])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def _video(frames=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (3, HEIGHT, WIDTH), generator=g, dtype=torch.uint8)
    # a panning image: propagation and the scan see real motion between frames
    return [{"image": torch.roll(base, shifts=3 * t, dims=2), "height": HEIGHT, "width": WIDTH,
             "video_id": "cuda_test", "frame_idx": t} for t in range(frames)]


def _run(model, video):
    with torch.no_grad():
        return [model([frame])[0]["sem_seg"].float().cpu() for frame in video]


@pytest.mark.parametrize("config", CONFIGS)
def test_model_outputs_equal_on_cpu_and_cuda(config):
    cpu = _model(config, "cpu")
    cuda = _model(config, "cuda", cpu.state_dict())
    video = _video()
    for t, (a, b) in enumerate(zip(_run(cpu, video), _run(cuda, video))):
        rel = ((a - b).norm() / a.norm()).item()
        assert rel <= 1e-3, f"{config}, frame {t}: relative difference {rel:.2e} between CPU and CUDA"
        assert (a.argmax(0) == b.argmax(0)).float().mean() >= 0.999


def test_amp_training_step_updates_weights_on_cuda():
    model = _model("tv3s_tiny.yaml", "cuda").train()
    g = torch.Generator().manual_seed(1)
    clip = [f["image"] for f in _video(frames=4)]
    labels = [torch.randint(0, 8, (HEIGHT, WIDTH), generator=g) for _ in clip]
    batch = [{"images": clip, "sem_segs": labels, "file_name": "clip"}]
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", torch.float16):
        losses = model(batch)
    loss = sum(losses.values())
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss)
    moved = [k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert any(k.startswith("temporal.") for k in moved), "the temporal head was not updated"
