"""The Mamba layer (Gu & Dao 2023, "selective SSM" block) and the pre-norm residual block around it.

`Mamba` has mamba-ssm's parameterisation and parameter names (`in_proj`, `conv1d`, `x_proj`,
`dt_proj`, `A_log`, `D`, `out_proj`), so the official TV3S checkpoints load key for key. Its
state (the causal conv's last inputs and the scan's hidden state) is an argument and a return
value, never kept in the module: a sequence cut in two and scanned piece by piece, each piece
starting from the state the previous one returned, gives the same output as one scan of the
whole sequence. TV3S uses that to stream a video one frame at a time.

`MambaBlock` is the VideoMamba-style pre-norm residual block the release uses: the residual
stream is updated first (add), then normalised (RMSNorm) and fed to the mixer; the residual is
kept in float32.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import drop_path
from .scan import causal_conv1d, selective_scan

__all__ = ["Mamba", "MambaState", "RMSNorm", "MambaBlock"]


@dataclass(frozen=True)
class MambaState:
    """Where a Mamba scan stopped, i.e. where the next piece of the sequence starts.

    Attributes:
        conv_state: (B, d_inner, d_conv - 1) the last conv inputs (activation dtype).
        ssm_state: (B, d_inner, d_state) the scan's hidden state (float32).
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class Mamba(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank=None, dt_min=1e-3, dt_max=0.1,
                 dt_init_floor=1e-4):
        """
        Args:
            d_model: token width.
            d_state: SSM state size per channel.
            d_conv: causal depthwise conv width.
            expand: inner width d_inner = expand * d_model.
            dt_rank: rank of the step-size projection; None: ceil(d_model / 16).
            dt_min, dt_max: initial step sizes are log-uniform in [dt_min, dt_max]
                (floored at dt_init_floor).
        """
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, bias=True)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        # A = -exp(A_log) = -(1..d_state) for every channel (S4D-real): decay rates spread over
        # time scales; kept as a log so A stays negative whatever the optimiser does.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

        # The step-size projection starts with weights of std ~ dt_rank^-0.5 and a bias that
        # is softplus^-1 of log-uniform steps, so initial steps cover [dt_min, dt_max].
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, hidden, state=None):
        """hidden (B, L, d_model), state: MambaState or None (zeros: a sequence's start).

        Returns (out (B, L, d_model), MambaState after the last token).
        """
        x, z, delta, B, C, conv_state = self.scan_inputs(hidden, state)
        y, ssm_state = selective_scan(
            x, delta, self.decays(), B, C, at_least_float32(self.D), z=z,
            delta_bias=at_least_float32(self.dt_proj.bias), delta_softplus=True,
            initial_state=None if state is None else state.ssm_state, return_final_state=True,
        )
        out = self.out_proj(y.transpose(1, 2))
        return out, MambaState(conv_state=conv_state, ssm_state=ssm_state)

    def scan_inputs(self, hidden, state=None):
        """What the selective scan of `forward` takes from `hidden` and the conv state of `state`.

        Returns (x, z, delta, B, C, conv_state): x, z, delta (B, d_inner, L), B, C (B, d_state,
        L) and the conv state after the last token; delta is before dt_proj's bias and the
        softplus, which the scan applies (as mamba-ssm's), so the step sizes are
        softplus(delta + dt_proj.bias).
        """
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ValueError(f"Mamba expects (batch, length, {self.d_model}) tokens, got {tuple(hidden.shape)}")
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x, conv_state = causal_conv1d(
            x, self.conv1d.weight[:, 0], self.conv1d.bias,
            initial_state=None if state is None else state.conv_state, return_final_state=True, activation="silu",
        )
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        return x, z, delta, B.transpose(1, 2), C.transpose(1, 2), conv_state

    def decays(self):
        """A (d_inner, d_state): the scan's state decays by exp(step * A) per token."""
        return -torch.exp(at_least_float32(self.A_log))


def at_least_float32(t):
    """`t` in float32, or in its own dtype where that is wider: half precision loses too much
    in the scan's parameters and the norm, and float64 (parity checks) stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 or wider (no bias, no centering)."""

    # a norm layer for the optimizer's SOLVER.WEIGHT_DECAY_NORM (vss.engine.optimizer)
    is_norm = True

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = at_least_float32(x)
        y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps) * at_least_float32(self.weight)
        return y.to(x.dtype)


class MambaBlock(nn.Module):
    """residual += DropPath(hidden); hidden = Mamba(RMSNorm(residual)).

    The first block of a stack gets residual None: its input starts the residual stream.
    """

    def __init__(self, d_model, drop_path=0.0, norm_eps=1e-5, **mamba_kwargs):
        super().__init__()
        self.mixer = Mamba(d_model, **mamba_kwargs)
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.drop_path = drop_path

    def forward(self, hidden, residual=None, state=None):
        """(hidden, residual, MambaState or None) -> (hidden, residual (float32 or wider), MambaState)."""
        if residual is None:
            residual = hidden
        else:
            residual = residual + drop_path(hidden, self.drop_path, self.training)
        # the residual stream stays in float32 at least; the norm's output takes the weights' dtype
        residual = residual.to(torch.promote_types(residual.dtype, torch.float32))
        hidden, state = self.mixer(self.norm(residual.to(self.norm.weight.dtype)), state)
        return hidden, residual, state
