"""tools/convert_flownets.py on checkpoints built here in FlowNetPytorch's format.

A FlowNetS forward written below from the port's definition (FLOWNETS_FACTS.md) is the
reference: the converted encoder must give its features, and the converted decoder its
flows in our units (grid pixels = FlowNetS output x div_flow / 4).
"""
import pytest
import torch
from torch.nn import functional as F

from vss.conversion.flownets import convert, read_checkpoint
from vss.modeling.mpvss import FlowEstimator
from vss.modeling.mpvss.motion_weights import load_motion_weights
from conftest import REPO, load_script

cli = load_script(REPO / "tools" / "convert_flownets.py")

# FlowNetS's decoder widths (deconv5..2) are fixed; the encoder may be narrow for a fast test.
DECONV = (512, 256, 128, 64)
TINY = (8, 16, 32, 32, 32, 64)
FULL = (64, 128, 256, 512, 512, 1024)


def flownets_state_dict(channels, device="cpu", seed=0):
    """FlowNetPytorch 'flownets' keys and shapes (batchNorm=False), random values."""
    g = torch.Generator().manual_seed(seed) if device == "cpu" else None

    def rand(*shape, scale=None):
        if device == "meta":
            return torch.empty(shape, device="meta")
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
        return torch.randn(shape, generator=g) * (scale or (2.0 / fan_in) ** 0.5)

    c1, c2, c3, c4, c5, c6 = channels
    sd = {}
    for name, cin, cout, k in [("conv1", 6, c1, 7), ("conv2", c1, c2, 5), ("conv3", c2, c3, 5), ("conv3_1", c3, c3, 3),
                               ("conv4", c3, c4, 3), ("conv4_1", c4, c4, 3), ("conv5", c4, c5, 3),
                               ("conv5_1", c5, c5, 3), ("conv6", c5, c6, 3), ("conv6_1", c6, c6, 3)]:
        sd[f"{name}.0.weight"] = rand(cout, cin, k, k)
        sd[f"{name}.0.bias"] = rand(cout, scale=0.1)
    skips = {5: c5, 4: c4, 3: c3, 2: c2}
    x = c6
    for level, out in zip((5, 4, 3, 2), DECONV):
        sd[f"deconv{level}.0.weight"] = rand(x, out, 4, 4, scale=(1.0 / (x * 4)) ** 0.5)
        sd[f"predict_flow{level + 1}.weight"] = rand(2, x, 3, 3, scale=(0.5 / (x * 9)) ** 0.5)
        sd[f"upsampled_flow{level + 1}_to_{level}.weight"] = rand(2, 2, 4, 4, scale=0.25)
        x = skips[level] + out + 2
    sd["predict_flow2.weight"] = rand(2, x, 3, 3, scale=(0.5 / (x * 9)) ** 0.5)
    return sd


def flownets_forward(sd, x):
    """FlowNetS (FlowNetPytorch) on a (B, 6, H, W) normalised pair -> [flow2, ..., flow6] / div_flow."""
    def conv(name, x, stride):
        w = sd[f"{name}.0.weight"]
        return F.leaky_relu(F.conv2d(x, w, sd[f"{name}.0.bias"], stride, (w.shape[-1] - 1) // 2), 0.1)

    def crop(a, like):
        return a[..., : like.shape[-2], : like.shape[-1]]

    out1 = conv("conv1", x, 2)
    out2 = conv("conv2", out1, 2)
    out3 = conv("conv3_1", conv("conv3", out2, 2), 1)
    out4 = conv("conv4_1", conv("conv4", out3, 2), 1)
    out5 = conv("conv5_1", conv("conv5", out4, 2), 1)
    out6 = conv("conv6_1", conv("conv6", out5, 2), 1)
    flows, feats, x = [], {5: out5, 4: out4, 3: out3, 2: out2}, out6
    for level in (5, 4, 3, 2):
        flow = F.conv2d(x, sd[f"predict_flow{level + 1}.weight"], padding=1)
        flows.append(flow)
        up_flow = crop(F.conv_transpose2d(flow, sd[f"upsampled_flow{level + 1}_to_{level}.weight"], stride=2,
                                          padding=1), feats[level])
        deconv = crop(F.leaky_relu(F.conv_transpose2d(x, sd[f"deconv{level}.0.weight"], stride=2, padding=1), 0.1),
                      feats[level])
        x = torch.cat([feats[level], deconv, up_flow], 1)
    flows.append(F.conv2d(x, sd["predict_flow2.weight"], padding=1))
    return [out2, out3, out4, out5, out6], flows[::-1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(FlowNetPytorch state dict, our FlowEstimator loaded from the converted file via the tool's CLI)."""
    sd = flownets_state_dict(TINY)
    folder = tmp_path_factory.mktemp("flownets")
    source, out = folder / "flownets_EPE1.951.pth.tar", folder / "converted.pth"
    torch.save({"epoch": 300, "arch": "flownets", "state_dict": sd, "best_EPE": 1.951, "div_flow": 20}, source)
    cli.main([str(source), str(out)])
    torch.manual_seed(0)
    model = FlowEstimator(flow_type="pixel", num_queries=3, encoder_channels=TINY).eval()
    report = load_motion_weights(model, str(out))
    assert not report["kept"] and not report["unused"]
    return sd, model


def test_converted_encoder_gives_flownets_features(converted):
    sd, model = converted
    x = torch.randn(2, 6, 48, 80, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model.encoder(x)
        reference, _ = flownets_forward(sd, x)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_converted_decoder_predicts_flownets_flow_in_grid_pixels(converted):
    sd, model = converted
    x = torch.randn(2, 6, 48, 80, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model.decoder.pixel_flow(model.encoder(x), all_levels=True)
        _, reference = flownets_forward(sd, x)
    assert reference[0].abs().mean() > 1e-2  # a flow worth comparing
    for level, (a, b) in enumerate(zip(ours, reference), 2):
        # every level: FlowNetS's flow / 20 in input pixels -> pixels of the finest grid (4 input pixels)
        torch.testing.assert_close(a, b * 20 / 4, rtol=1e-4, atol=1e-5, msg=f"flow{level}")


def test_converted_module_flow_in_frame_pixels(converted):
    """Through MPVSS's input preparation: our grid flow x 8 = FlowNetS's flow2 x 20 x 2 (its input is half the frame)."""
    sd, model = converted
    g = torch.Generator().manual_seed(5)
    image, key = torch.rand(2, 1, 3, 64, 96, generator=g) * 255
    with torch.no_grad():
        ours = model(image, key, None, [(64, 96)])[0, 0]
        x = model.prepare_inputs(image, key, [(64, 96)])
        flow2 = flownets_forward(sd, x)[1][0][0]
    torch.testing.assert_close(ours * 8, flow2 * 20 * 2, rtol=1e-4, atol=1e-4)


def test_full_size_conversion_fits_the_default_pixel_variant_and_the_query_decoder_where_shapes_agree():
    converted = convert(flownets_state_dict(FULL, device="meta"))
    assert all(k.startswith("temporal.flow.") for k in converted)
    ours = {k[len("temporal.flow."):]: tuple(v.shape) for k, v in converted.items()}
    with torch.device("meta"):
        pixel = FlowEstimator(flow_type="pixel")
        query = FlowEstimator(flow_type="query")
    assert ours == {k: tuple(v.shape) for k, v in pixel.state_dict().items()}
    agree = {k for k, v in query.state_dict().items() if ours.get(k) == tuple(v.shape)}
    decoder = {k.split(".")[1] for k in agree if k.startswith("decoder.")}
    assert {k for k in agree if k.startswith("encoder.")} == {k for k in ours if k.startswith("encoder.")}
    assert decoder == {"deconv2", "predict_flow3", "predict_flow", "upsample_flow5", "upsample_flow4",
                       "upsample_flow3", "upsample_flow2"}


def test_converter_rejects_other_checkpoints(tmp_path):
    sd = flownets_state_dict(TINY)
    with pytest.raises(ValueError, match="unexpected FlowNetS key 'conv7.0.weight'"):
        convert({**sd, "conv7.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="batch-normalised FlowNetS"):
        convert({**sd, "conv1.1.running_mean": torch.zeros(8)})
    path = tmp_path / "flownetc.pth.tar"
    torch.save({"arch": "flownetc", "state_dict": sd, "div_flow": 20}, path)
    with pytest.raises(ValueError, match="only 'flownets'"):
        cli.main([str(path), str(tmp_path / "out.pth")])
    torch.save(sd, path)
    with pytest.raises(ValueError, match=f"{path} is not a FlowNetPytorch checkpoint"):
        read_checkpoint(path)
