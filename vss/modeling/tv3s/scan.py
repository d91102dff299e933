"""Selective scan (Mamba's S6) and depthwise causal conv, both able to start from a carried state.

TV3S streams a video frame by frame: the scan state and the conv state at the end of frame t-1
are where frame t starts. Both functions take that state in and hand the final one back.

On CUDA, mamba-ssm's and causal-conv1d's kernels are used when installed (imported lazily: they
are optional and absent on CPU machines); everywhere else a pure-PyTorch path runs.

Tensor layout follows mamba-ssm: u, delta, z (batch, d_inner, L); A (d_inner, d_state);
B, C (batch, d_state, L); D, delta_bias (d_inner,); scan state (batch, d_inner, d_state).
"""
import functools
import math

import torch
import torch.nn.functional as F

# Tokens whose decays and inputs are computed together by the pure-PyTorch scan. Larger chunks
# cut autograd nodes; smaller ones keep a chunk's (chunk, batch, d_state, d_inner) tensors in cache.
CHUNK_SIZE = 16

_LOG2E = math.log2(math.e)


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = <C_t, h_t> + D u_t,  y *= silu(z).

    delta gets delta_bias added, then softplus if delta_softplus. h starts at initial_state
    (zeros if None). Computed in float32 (float64 stays float64); y has u's dtype.
    Returns y (batch, d_inner, L), or (y, final state) if return_final_state.
    With the CUDA kernel, gradients do not flow back through the scanned part of the returned
    final state (mamba-ssm's backward drops them); y is fully differentiable.
    """
    # The kernel has no float64 build.
    kernel = _mamba_selective_scan() if u.is_cuda and u.dtype != torch.float64 else None
    if kernel is None:
        return selective_scan_torch(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state
        )
    return scan_with_zero_init_kernel(
        kernel, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state
    )


def selective_scan_torch(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    """`selective_scan` in pure PyTorch, on any device.

    The recurrence itself is one fused multiply-add per token; everything else (decays, inputs,
    and at inference the output contraction) is computed a chunk at a time. On CPU this beats
    the parallel forms: with a decay per (channel, state) pair, Mamba-1 has no matmul structure
    inside a chunk, so pairwise (segsum) decays cost about chunk/2 times more exps, factoring
    them as exp(cumsum) * exp(-cumsum) overflows, and a two-level scan (all chunks at once, then
    across chunks) makes about twice the passes over the states; this form does the least work
    and is exact.
    """
    _check_scan_args("selective_scan", u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype = _compute_dtype(u)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, d_inner, _ = u.shape
    u_c = u.to(dtype)
    delta = _effective_delta(delta.to(dtype), delta_bias, delta_softplus)
    # Time-major and contiguous, so that every token reads contiguous slices; the state is kept
    # as (batch, d_state, d_inner) so the output contraction over d_state is a batched matmul.
    steps = delta.permute(2, 0, 1).contiguous()  # (L, b, d)
    inputs = (delta * u_c).permute(2, 0, 1).contiguous()  # (L, b, d)
    B_t = B.to(dtype).permute(2, 0, 1).unsqueeze(-1).contiguous()  # (L, b, n, 1)
    C_t = C.to(dtype).permute(2, 0, 1).unsqueeze(2).contiguous()  # (L, b, 1, n)
    # exp2 runs several times faster than exp on CPU; log2(e) is folded into A once.
    A2 = (A.to(dtype) * _LOG2E).t().contiguous()  # (n, d)
    if initial_state is None:
        h = u_c.new_zeros(batch, A.shape[1], d_inner)
    else:
        h = initial_state.to(dtype).transpose(1, 2).contiguous()
    # Without autograd, chunks reuse buffers: fresh multi-megabyte tensors per chunk cost more in
    # page faults than the arithmetic. The states overwrite the decays in place, in two buffers
    # taken in turn so that a chunk's last state survives the next chunk's decays.
    reuse = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
    if reuse:
        decay_buffers = [h.new_empty(CHUNK_SIZE, *h.shape) for _ in range(2)]
        drive_buffer = h.new_empty(CHUNK_SIZE, *h.shape)
    ys = []
    # split/unbind rather than indexing: their backward is one cat/stack, not a zero-filled
    # full-size gradient per slice.
    chunks = zip(steps.split(CHUNK_SIZE), inputs.split(CHUNK_SIZE), B_t.split(CHUNK_SIZE), C_t.split(CHUNK_SIZE))
    for i, (steps_c, inputs_c, B_c, C_c) in enumerate(chunks):
        size = steps_c.shape[0]
        decays, drives = (decay_buffers[i % 2][:size], drive_buffer[:size]) if reuse else (None, None)
        decays = torch.exp2(torch.mul(steps_c.unsqueeze(2), A2, out=decays), out=decays)  # (T, b, n, d)
        drives = torch.mul(B_c, inputs_c.unsqueeze(2), out=drives)  # (T, b, n, d)
        if reuse:
            for k in range(size):
                h = torch.addcmul(drives[k], decays[k], h, out=decays[k])
            ys.append(torch.matmul(C_c, decays).squeeze(2).transpose(0, 1))  # (b, T, d)
        else:
            # a product per token: backward through a stack of the chunk's states is ~3x slower
            for decay, drive, C_k in zip(decays.unbind(), drives.unbind(), C_c.unbind()):
                h = torch.addcmul(drive, decay, h)
                ys.append(torch.matmul(C_k, h))  # (b, 1, d)
    y = torch.cat(ys, 1).transpose(1, 2)
    y = _gate(_add_skip(y, u_c, D), z).to(u.dtype)
    if return_final_state:
        return y, h.transpose(1, 2).contiguous()
    return y


def selective_scan_ref(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    """`selective_scan` by its definition, one token at a time (the oracle for tests and benchmarks)."""
    _check_scan_args("selective_scan_ref", u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype = _compute_dtype(u)
    batch, d_inner, length = u.shape
    u_c, A, B, C = (t.to(dtype) for t in (u, A, B, C))
    delta = _effective_delta(delta.to(dtype), delta_bias, delta_softplus)
    h = u_c.new_zeros(batch, d_inner, A.shape[1]) if initial_state is None else initial_state.to(dtype)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u_c[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = _gate(_add_skip(torch.stack(ys, -1), u_c, D), z).to(u.dtype)
    return (y, h) if return_final_state else y


def scan_with_zero_init_kernel(
    kernel,
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    """`selective_scan` through a scan kernel that always starts from a zero state.

    kernel has mamba-ssm's `selective_scan_fn` signature
    (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state).
    The initial state's part is added afterwards with `add_initial_state`.
    """
    _check_scan_args("selective_scan", u, delta, A, B, C, D, z, delta_bias, initial_state)
    if initial_state is None:
        y, final_state = kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)
        return (y, final_state) if return_final_state else y
    # silu(z) multiplies the whole output, the initial state's part too: gate after adding it.
    y, final_state = kernel(u, delta, A, B, C, D, None, delta_bias, delta_softplus, return_last_state=True)
    dtype = _compute_dtype(u)
    steps = _effective_delta(delta.to(dtype), delta_bias, delta_softplus)
    y, final_state = add_initial_state(
        y.to(dtype), final_state.to(dtype), steps, A.to(dtype), C.to(dtype), initial_state.to(dtype)
    )
    y = _gate(y, z).to(u.dtype)
    return (y, final_state) if return_final_state else y


def add_initial_state(y, final_state, delta, A, C, initial_state):
    """Turn the outputs of a scan run from a zero state into those of a run from initial_state.

    The scan is linear in its state: from h0 every state gains P_t h0 with
    P_t = prod_{s<=t} exp(delta_s A) = exp(A cumsum(delta)_t), so y_t gains <C_t, P_t h0> and the
    final state gains P_L h0. y must be taken before any silu(z) gate (the D term may be in);
    delta is the step size the scan used (after delta_bias and softplus). The exponents are <= 0
    (delta >= 0, A <= 0): the products underflow to 0 at worst, nothing is divided.
    Holds (batch, d_inner, d_state, L) decays in memory at once.
    """
    decays = torch.exp(A[:, :, None] * delta.cumsum(-1)[:, :, None, :])  # (b, d, n, L)
    carried = decays * initial_state[..., None]
    return y + torch.einsum("bnl,bdnl->bdl", C, carried), final_state + carried[..., -1]


def causal_conv1d(x, weight, bias=None, initial_state=None, return_final_state=False, activation=None):
    """Depthwise causal conv: out_t = bias + sum_k weight[:, k] * x_{t - width + 1 + k}.

    x (batch, dim, L); weight (dim, width); bias (dim,). The conv state is the last width-1
    inputs before x, (batch, dim, width-1); None means zeros (the start of a video).
    activation: None or "silu". Returns out (batch, dim, L), or (out, final state) if
    return_final_state, the final state being the last width-1 inputs of [state, x].
    """
    _check_conv_args(x, weight, bias, initial_state, activation)
    if x.is_cuda and x.dtype != torch.float64:  # the kernel has no float64 build
        out = _causal_conv1d_cuda(x, weight, bias, initial_state, return_final_state, activation)
        if out is not None:
            return out
    batch, dim, _ = x.shape
    keep = weight.shape[1] - 1
    state = x.new_zeros(batch, dim, keep) if initial_state is None else initial_state.to(x.dtype)
    padded = torch.cat([state, x], dim=-1)
    out = F.conv1d(padded, weight.unsqueeze(1), bias, groups=dim)
    if activation == "silu":
        out = F.silu(out)
    if return_final_state:
        # a copy, so that a carried state does not keep the whole padded input alive
        return out, padded[:, :, padded.shape[-1] - keep :].contiguous()
    return out


def _causal_conv1d_cuda(x, weight, bias, initial_state, return_final_state, activation):
    """causal-conv1d's kernel when installed and able to take these arguments, else None."""
    kernel = _causal_conv1d_kernel()
    dim, width = weight.shape
    if kernel is None or not 2 <= width <= 4:
        return None
    if initial_state is None and not return_final_state:
        return kernel(x, weight, bias, activation=activation)
    # The kernel reads and writes conv states only in the channel-last layout (stride 1 over
    # dim), which it supports for dim a multiple of 8.
    if dim % 8:
        return None
    x = x.transpose(1, 2).contiguous().transpose(1, 2)
    if initial_state is not None:
        initial_state = initial_state.to(x.dtype).transpose(1, 2).contiguous().transpose(1, 2)
    return kernel(
        x,
        weight,
        bias,
        initial_states=initial_state,
        return_final_states=return_final_state,
        activation=activation,
    )


@functools.lru_cache(maxsize=None)
def _mamba_selective_scan():
    """mamba-ssm's CUDA `selective_scan_fn`, or None where mamba-ssm is not usable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=None)
def _causal_conv1d_kernel():
    """causal-conv1d's CUDA `causal_conv1d_fn`, or None where it is not usable."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


def _compute_dtype(u):
    return torch.promote_types(u.dtype, torch.float32)


def _effective_delta(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _add_skip(y, u, D):
    return y if D is None else y + D.to(y.dtype)[:, None] * u


def _gate(y, z):
    return y if z is None else y * F.silu(z.to(y.dtype))


def _check_scan_args(name, u, delta, A, B, C, D, z, delta_bias, initial_state):
    if u.dim() != 3 or u.shape[-1] < 1:
        raise ValueError(f"{name}: u must be (batch, d_inner, L) with L >= 1, got {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(
            f"{name}: A must be (d_inner, d_state) with d_inner={u.shape[1]}, got {tuple(A.shape)}"
        )
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, d_inner, length)),
        "B": (B, (batch, d_state, length)),
        "C": (C, (batch, d_state, length)),
        "D": (D, (d_inner,)),
        "z": (z, (batch, d_inner, length)),
        "delta_bias": (delta_bias, (d_inner,)),
        "initial_state": (initial_state, (batch, d_inner, d_state)),
    }
    for arg, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: {arg} must have shape {shape}, got {tuple(tensor.shape)}")


def _check_conv_args(x, weight, bias, initial_state, activation):
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d: x must be (batch, dim, L) and weight (dim, width), "
            f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    batch, dim, _ = x.shape
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"causal_conv1d: bias must have shape ({dim},), got {tuple(bias.shape)}")
    state_shape = (batch, dim, weight.shape[1] - 1)
    if initial_state is not None and tuple(initial_state.shape) != state_shape:
        raise ValueError(
            f"causal_conv1d: initial_state must be (batch, dim, width-1) = {state_shape}, "
            f"got {tuple(initial_state.shape)}"
        )
