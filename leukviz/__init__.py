"""leukviz: fine-tune and compare CNN backbones on single-cell leukemia images (C-NMC 2019)."""

__version__ = "0.1.0"
