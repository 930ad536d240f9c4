"""The networks and what feeds them: the backbone registry and builder, the run settings and the presets'
recipes (config), preprocessing and augmentation side by side, the one eval-mode forward loop (forward), and
the device and precision."""

__all__ = ["augmentation", "backbones", "config", "devices", "forward", "preprocess"]
