"""Selective scan and causal conv with carried state (vss/modeling/tv3s/scan.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from vss.modeling.tv3s.scan import (
    CHUNK_SIZE,
    add_initial_state,
    causal_conv1d,
    scan_with_zero_init_kernel,
    selective_scan,
    selective_scan_ref,
    selective_scan_torch,
)

OPTIONS = ("D", "z", "delta_bias", "initial_state")


def scan_inputs(batch=2, d_inner=6, d_state=4, length=37, dtype=torch.float64, seed=0):
    """Mamba-like values: softplus(delta) about 0.05-1.5, A about -(1..d_state), D about 1."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return dict(
        u=randn(batch, d_inner, length),
        delta=randn(batch, d_inner, length) - 1.0,  # softplus of this: about 0.05-1.5
        A=-torch.arange(1, d_state + 1, dtype=dtype).repeat(d_inner, 1) * (1 + 0.1 * randn(d_inner, d_state).abs()),
        B=randn(batch, d_state, length),
        C=randn(batch, d_state, length),
        D=1 + 0.1 * randn(d_inner),
        z=randn(batch, d_inner, length),
        delta_bias=0.5 * randn(d_inner),
        initial_state=randn(batch, d_inner, d_state),
    )


def pick(inputs, options, softplus=True):
    """The scan's positional inputs plus the chosen optional ones as keyword arguments."""
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    if not softplus:
        args[1] = args[1].abs() + 0.05
    kwargs = {k: inputs[k] for k in options}
    return args, dict(kwargs, delta_softplus=softplus)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_reference_on_hand_computed_values():
    # d_inner = d_state = 1: h_t = e^(-0.5) h_{t-1} + 0.5 * B_t * u_t, so h1 = 1, h2 = e^-0.5 + 3;
    # y_t = 0.5 * h_t + D * u_t, gated by silu(z_t) = z_t * sigmoid(z_t).
    u = torch.tensor([[[2.0, 3.0]]], dtype=torch.float64)
    delta = torch.full((1, 1, 2), 0.5, dtype=torch.float64)
    A = torch.tensor([[-1.0]], dtype=torch.float64)
    B = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    C = torch.full((1, 1, 2), 0.5, dtype=torch.float64)
    D = torch.tensor([0.25], dtype=torch.float64)
    z = torch.tensor([[[1.0, -2.0]]], dtype=torch.float64)
    h1 = 1.0
    h2 = math.exp(-0.5) * h1 + 3.0
    silu = [1.0 / (1 + math.exp(-1.0)), -2.0 / (1 + math.exp(2.0))]
    expected = torch.tensor([[[(0.5 * h1 + 0.5) * silu[0], (0.5 * h2 + 0.75) * silu[1]]]], dtype=torch.float64)
    for scan in (selective_scan_ref, selective_scan):
        y, final = scan(u, delta, A, B, C, D=D, z=z, return_final_state=True)
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(final, torch.tensor([[[h2]]], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "options,softplus",
    [
        ((), False),
        (("D",), False),
        (("z",), True),
        (("delta_bias",), True),
        (("initial_state",), False),
        (OPTIONS, True),
    ],
)
def test_chunked_scan_matches_reference(dtype, options, softplus):
    args, kwargs = pick(scan_inputs(dtype=dtype), options, softplus)
    y_ref, final_ref = selective_scan_ref(*args, **kwargs, return_final_state=True)
    y, final = selective_scan(*args, **kwargs, return_final_state=True)
    assert y.dtype == dtype and final.dtype == dtype
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(final, final_ref) <= 1e-5
    assert y_ref.abs().max() > 0.1  # the comparison is not between near-zero outputs


@pytest.mark.parametrize("length", [1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 3])
def test_chunk_boundaries(length):
    args, kwargs = pick(scan_inputs(length=length, seed=length), OPTIONS)
    y_ref, final_ref = selective_scan_ref(*args, **kwargs, return_final_state=True)
    y, final = selective_scan(*args, **kwargs, return_final_state=True)
    assert y.shape == (2, 6, length)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [CHUNK_SIZE - 1, 2 * CHUNK_SIZE + 3])
def test_inference_buffers_equal_the_autograd_path(length):
    # without autograd the scan writes states over reused chunk buffers; with it, fresh tensors
    args, kwargs = pick(scan_inputs(length=length, seed=3), OPTIONS)
    with torch.no_grad():
        y_buffered, final_buffered = selective_scan(*args, **kwargs, return_final_state=True)
    leaf = args[0].clone().requires_grad_()
    y, final = selective_scan(leaf, *args[1:], **kwargs, return_final_state=True)
    assert y.requires_grad
    torch.testing.assert_close(y_buffered, y.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final_buffered, final.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("split", [1, 5, CHUNK_SIZE, 23, 36])
def test_split_scan_with_carried_state_equals_one_shot(split):
    inputs = scan_inputs()
    args, kwargs = pick(inputs, OPTIONS)
    y_full, final_full = selective_scan(*args, **kwargs, return_final_state=True)

    def part(sl):
        a = [args[0][..., sl], args[1][..., sl], args[2], args[3][..., sl], args[4][..., sl]]
        return a, dict(kwargs, z=kwargs["z"][..., sl])

    a1, k1 = part(slice(0, split))
    y1, state = selective_scan(*a1, **k1, return_final_state=True)
    a2, k2 = part(slice(split, None))
    y2, final = selective_scan(*a2, **dict(k2, initial_state=state), return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, final_full, rtol=1e-12, atol=1e-12)


def test_initial_state_changes_the_output():
    # guards the split test against a scan that ignores its initial state
    args, kwargs = pick(scan_inputs(length=8), OPTIONS)
    y = selective_scan(*args, **kwargs)
    y0 = selective_scan(*args, **dict(kwargs, initial_state=None))
    assert (y - y0)[..., 0].abs().max() > 1e-2


def cpu_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Stands in for mamba-ssm's selective_scan_fn: same signature, always from a zero state."""
    return selective_scan_torch(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_final_state=return_last_state
    )


@pytest.mark.parametrize("options", [("initial_state",), OPTIONS, ("D", "z")])
def test_zero_init_kernel_plus_correction_equals_reference(options):
    args, kwargs = pick(scan_inputs(), options)
    y_ref, final_ref = selective_scan_ref(*args, **kwargs, return_final_state=True)
    y, final = scan_with_zero_init_kernel(cpu_kernel, *args, **kwargs, return_final_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


def test_add_initial_state_alone():
    inputs = scan_inputs()
    args, kwargs = pick(inputs, ("D",))
    h0 = inputs["initial_state"]
    y_zero, final_zero = selective_scan_ref(*args, **kwargs, return_final_state=True)
    y_ref, final_ref = selective_scan_ref(*args, **kwargs, initial_state=h0, return_final_state=True)
    steps = F.softplus(inputs["delta"])
    y, final = add_initial_state(y_zero, final_zero, steps, inputs["A"], inputs["C"], h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scan", [selective_scan, lambda *a, **k: scan_with_zero_init_kernel(cpu_kernel, *a, **k)])
def test_gradients_match_reference(scan):
    inputs = scan_inputs(batch=2, d_inner=3, d_state=2, length=2 * CHUNK_SIZE + 3)
    g = torch.Generator().manual_seed(1)
    w_y = torch.randn(2, 3, 2 * CHUNK_SIZE + 3, generator=g, dtype=torch.float64)
    w_state = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)

    def grads(fn):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        args, kwargs = pick(leaves, OPTIONS)
        y, final = fn(*args, **kwargs, return_final_state=True)
        ((y * w_y).sum() + (final * w_state).sum()).backward()
        return {k: v.grad for k, v in leaves.items()}

    expected = grads(selective_scan_ref)
    got = grads(scan)
    for name in inputs:
        assert got[name].abs().max() > 0, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_decays_stay_finite(dtype):
    inputs = scan_inputs(dtype=dtype)
    inputs["delta"] = inputs["delta"] + 1e4  # softplus(1e4) = 1e4: decays exp(-1e4 * k) = 0
    inputs["initial_state"] = inputs["initial_state"] * 1e3
    args, kwargs = pick(inputs, OPTIONS)
    for scan in (selective_scan, lambda *a, **k: scan_with_zero_init_kernel(cpu_kernel, *a, **k)):
        y, final = scan(*args, **kwargs, return_final_state=True)
        assert torch.isfinite(y).all() and torch.isfinite(final).all()
        # the state forgets everything but the last token: h_L = delta_L * B_L * u_L
        steps = F.softplus(inputs["delta"] + inputs["delta_bias"][:, None])
        last = (steps * inputs["u"])[..., -1, None] * inputs["B"][:, None, :, -1]
        torch.testing.assert_close(final, last, rtol=1e-5, atol=1e-5)


def test_large_decays_give_finite_gradients():
    inputs = {k: v.requires_grad_() for k, v in scan_inputs(dtype=torch.float32).items()}
    args, kwargs = pick(inputs, OPTIONS)
    y, final = selective_scan(args[0], args[1] + 1e4, *args[2:], **kwargs, return_final_state=True)
    (y.sum() + final.sum()).backward()
    for name, leaf in inputs.items():
        assert torch.isfinite(leaf.grad).all(), name


def test_zero_steps_keep_the_state():
    inputs = scan_inputs(length=CHUNK_SIZE + 2)
    h0 = inputs["initial_state"]
    zero = torch.zeros_like(inputs["u"])
    y, final = selective_scan(
        inputs["u"], zero, inputs["A"], inputs["B"], inputs["C"], initial_state=h0, return_final_state=True
    )
    torch.testing.assert_close(final, h0)
    torch.testing.assert_close(y, torch.einsum("bnl,bdn->bdl", inputs["C"], h0))


def test_low_precision_inputs_compute_in_float32():
    inputs = scan_inputs(dtype=torch.float32)
    args, kwargs = pick(inputs, OPTIONS)
    y_ref, final_ref = selective_scan_ref(*args, **kwargs, return_final_state=True)
    half = [a.to(torch.bfloat16) for a in args]
    y, final = selective_scan(*half, **kwargs, return_final_state=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert rel_err(y.float(), y_ref) < 0.05


def test_scan_rejects_bad_shapes():
    args, kwargs = pick(scan_inputs(), OPTIONS)
    grouped_B = args[3][:, None]
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(args[0], args[1], args[2], grouped_B, args[4])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        selective_scan(*args, initial_state=kwargs["initial_state"][:, :, :1])


def conv_loop(x, weight, bias, state, activation):
    """out[t] = bias + sum_k w[k] x_{t-width+1+k}, with x_{<0} taken from state."""
    width = weight.shape[1]
    seq = torch.cat([state, x], -1)
    out = torch.zeros_like(x)
    for t in range(x.shape[-1]):
        for k in range(width):
            out[:, :, t] += weight[:, k] * seq[:, :, t + k]
        if bias is not None:
            out[:, :, t] += bias
    return F.silu(out) if activation == "silu" else out


def conv_inputs(width=4, length=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 5, length, generator=g, dtype=dtype),
        torch.randn(5, width, generator=g, dtype=dtype),
        torch.randn(5, generator=g, dtype=dtype),
        torch.randn(2, 5, width - 1, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_state,with_bias", [(False, True), (True, True), (True, False)])
def test_causal_conv_matches_loop(width, activation, with_state, with_bias):
    x, weight, bias, state = conv_inputs(width)
    bias = bias if with_bias else None
    out, final = causal_conv1d(
        x, weight, bias, initial_state=state if with_state else None, return_final_state=True, activation=activation
    )
    expected = conv_loop(x, weight, bias, state if with_state else torch.zeros_like(state), activation)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(final, x[:, :, x.shape[-1] - (width - 1) :])


@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_causal_conv_split_with_carried_state_equals_one_shot(split):
    x, weight, bias, state = conv_inputs()
    full, final_full = causal_conv1d(x, weight, bias, initial_state=state, return_final_state=True, activation="silu")
    out1, carried = causal_conv1d(x[..., :split], weight, bias, state, return_final_state=True, activation="silu")
    out2, final = causal_conv1d(x[..., split:], weight, bias, carried, return_final_state=True, activation="silu")
    torch.testing.assert_close(torch.cat([out1, out2], -1), full)
    torch.testing.assert_close(final, final_full)


def test_causal_conv_short_input_keeps_older_state():
    x, weight, bias, state = conv_inputs(width=4, length=1)
    _, final = causal_conv1d(x, weight, bias, initial_state=state, return_final_state=True)
    torch.testing.assert_close(final, torch.cat([state[..., 1:], x], -1))


def test_causal_conv_rejects_bad_arguments():
    x, weight, bias, state = conv_inputs()
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, weight, activation="relu")
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d(x, weight, initial_state=state[..., :1])


def _require_cuda_kernel(module):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip(module)


@pytest.mark.cuda
@pytest.mark.parametrize("options", [(), ("D", "z"), OPTIONS])
def test_mamba_kernel_matches_reference(options):
    _require_cuda_kernel("mamba_ssm")
    inputs = scan_inputs(batch=3, d_inner=64, d_state=16, length=300, dtype=torch.float32)
    args, kwargs = pick(inputs, options)
    y_ref, final_ref = selective_scan_ref(*args, **kwargs, return_final_state=True)
    cuda_args = [a.cuda() for a in args]
    cuda_kwargs = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    y, final = selective_scan(*cuda_args, **cuda_kwargs, return_final_state=True)
    assert rel_err(y.cpu(), y_ref) <= 1e-4
    assert rel_err(final.cpu(), final_ref) <= 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv1d_kernel_matches_torch(with_state):
    _require_cuda_kernel("causal_conv1d")
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 64, 50, generator=g), torch.randn(64, 4, generator=g)
    bias = torch.randn(64, generator=g)
    state = torch.randn(2, 64, 3, generator=g) if with_state else None
    expected, final_expected = causal_conv1d(x, weight, bias, state, return_final_state=True, activation="silu")
    cuda_state = None if state is None else state.cuda()
    out, final = causal_conv1d(
        x.cuda(), weight.cuda(), bias.cuda(), cuda_state, return_final_state=True, activation="silu"
    )
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final.cpu(), final_expected)
