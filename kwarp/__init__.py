"""kwarp: WARP (Weight Averaged Rewarded Policies) alignment, on Kubernetes or on one machine."""

__version__ = "0.1.0"
