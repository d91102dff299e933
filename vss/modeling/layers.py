"""Layers shared by the models' blocks (Swin, MiT, TV3S's Mamba layers)."""

__all__ = ["drop_path"]


def drop_path(x, prob, training):
    """Stochastic depth: drop the residual branch for a random subset of the batch,
    rescaling the kept samples so the expectation is unchanged."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep
