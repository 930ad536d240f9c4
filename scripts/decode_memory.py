"""Peak memory and time of decoding one large 16-bit PNG for prediction (decode, out-of-distribution check, one
64 px fit), in this process. docs/RELIABILITY.md R35 quotes it; run it at an older commit to compare (it falls
back to that commit's two decodes when data.decode_rgb does not exist).

    PYTHONPATH=. .venv/bin/python scripts/decode_memory.py
"""

import io
import resource
import time

import numpy as np
from PIL import Image

try:
    from leukviz.datasets import data, ood
except ImportError:  # before the layer subpackages (commit 7dca5f2 and older)
    from leukviz import data, ood

rng = np.random.default_rng(0)
a = np.zeros((6000, 6000), np.uint16)
a[2000:4000, 2000:4000] = rng.integers(1000, 60000, (2000, 2000), dtype=np.uint16)
buf = io.BytesIO()
Image.fromarray(a).save(buf, format="PNG")
blob = buf.getvalue()
del a, buf
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
if hasattr(data, "decode_rgb"):
    full = data.decode_rgb(io.BytesIO(blob))
    ood.features(full)
    data.fit_image(full, 64, True, data.CELL_WINDOW)
else:  # before: the model's decode and the check's decode, each of the whole file
    data.load_image(io.BytesIO(blob), 64, True, data.CELL_WINDOW)
    ood.features(blob)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(f"peak RSS +{grew:.0f} MB, {time.time() - t:.2f} s")
