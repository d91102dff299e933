"""MPVSS motion encoder: the FlowNetS encoder over a (current, key) frame pair.

Parameter names follow the official release (`conv1.0.conv.weight`, ...) so its
checkpoints, and FlowNetS encoder weights converted to that layout, load unchanged.
"""
from torch import nn

__all__ = ["ConvBlock", "MotionEncoder"]


class ConvBlock(nn.Module):
    """A convolution (or 4x4 stride-2 transposed convolution) with an optional LeakyReLU(0.1).

    The convolution is the attribute `conv`, which gives the official `<name>.conv.weight`
    keys. Init as the official release: kaiming normal with fan_out (for the LeakyReLU
    slope when there is one, else for ReLU), biases 0.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, *, bias=True,
                 leaky=True, transposed=False):
        super().__init__()
        if transposed:
            # exact x2 upsampling: out = 2 * in
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                  padding=(kernel_size - 1) // 2, bias=bias)
        self.act = nn.LeakyReLU(0.1, inplace=True) if leaky else nn.Identity()
        if leaky:
            nn.init.kaiming_normal_(self.conv.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")
        else:
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.act(self.conv(x))


class MotionEncoder(nn.Module):
    """Six FlowNetS blocks `conv1`..`conv6`, each halving the resolution.

    A block's first conv has the block's kernel size and stride 2; its further convs are
    3x3 stride 1 (the official code forces 3x3 there, which matters only for conv3's
    second conv: 3x3, not 5x5). Every conv has a bias and LeakyReLU(0.1), no norm.
    Output sizes round up (ceil(H / 2) per block).
    """

    num_blocks = 6

    def __init__(self, in_channels=6, channels=(64, 128, 256, 512, 512, 1024),
                 kernel_sizes=(7, 5, 5, 3, 3, 3), num_convs=(1, 1, 2, 2, 2, 2)):
        """
        Args:
            in_channels: input channels (6: the two RGB frames).
            channels, kernel_sizes, num_convs: per block, its output channels, the kernel
                size of its first conv and its number of convs.
        """
        super().__init__()
        lengths = {len(channels), len(kernel_sizes), len(num_convs)}
        if lengths != {self.num_blocks}:
            raise ValueError(
                f"MotionEncoder: channels, kernel_sizes and num_convs need {self.num_blocks} entries "
                f"(MODEL.MOTION.ENCODER_*), got {list(channels)}, {list(kernel_sizes)}, {list(num_convs)}"
            )
        if min(num_convs) < 1:
            raise ValueError(f"MotionEncoder: every block needs >= 1 conv, got num_convs {list(num_convs)}")
        self.channels = tuple(channels)
        for i, (out, kernel, convs) in enumerate(zip(channels, kernel_sizes, num_convs), 1):
            layers = [ConvBlock(in_channels, out, kernel, stride=2)]
            layers += [ConvBlock(out, out, 3) for _ in range(convs - 1)]
            self.add_module(f"conv{i}", nn.Sequential(*layers))
            in_channels = out

    def forward(self, x):
        """(B, in_channels, H, W) -> [conv2, ..., conv6] outputs, at 1/4 ... 1/64 of H, W.

        conv1's output (1/2) is only an intermediate: the decoder reads conv2..conv6.
        """
        outs = []
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"conv{i}")(x)
            if i > 1:
                outs.append(x)
        return outs
