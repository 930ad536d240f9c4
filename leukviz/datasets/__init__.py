"""Where images come from: the dataset itself and the public surface `data` (open_dataset, fingerprint,
inspect), the Dataset record (dataset), decoding (decode), the layout readers (layouts), zips and uploads
(archives), splits and their leakage checks (splits), the image cache (imagecache) and its folder (cachedir),
the C-NMC file names, the synthetic demo, and the image statistics the out-of-distribution check compares."""

__all__ = ["archives", "cachedir", "cnmc", "data", "dataset", "decode", "imagecache", "layouts", "ood", "splits",
           "synthetic"]
