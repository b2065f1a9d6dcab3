"""Training losses. Each takes the `CrossEncoder` first and maps (features, labels) to a loss."""

from workbench.losses.pointwise import BinaryCrossEntropyLoss

__all__ = ["BinaryCrossEntropyLoss"]
