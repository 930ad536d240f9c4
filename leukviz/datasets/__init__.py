"""Where images come from: the dataset readers (C-NMC, class folders, train/val/test trees, zips), their
splits and leakage checks, the image cache, the C-NMC file names, the synthetic demo, and the image
statistics the out-of-distribution check compares."""

__all__ = ["cnmc", "data", "ood", "synthetic"]
