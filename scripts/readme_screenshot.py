"""The README's screenshot (docs/img/overview.png) from the browser test's own (tests/test_browser.py writes one per
page into artifacts/screenshots/, or $LEUKVIZ_ARTIFACTS): the Compare page by default, scaled down and reduced to a
palette so it stays small enough to commit (under 200 KB).

    .venv/bin/python -m pytest tests/test_browser.py        # makes artifacts/screenshots/5-compare.png
    .venv/bin/python scripts/readme_screenshot.py [SCREENSHOT.png] [--width 1100]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "img" / "overview.png"
LIMIT = 200_000  # bytes


def main(argv: list[str] | None = None) -> int:
    shots = Path(os.environ.get("LEUKVIZ_ARTIFACTS") or REPO / "artifacts" / "screenshots")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("screenshot", nargs="?", type=Path, default=shots / "5-compare.png")
    p.add_argument("--width", type=int, default=1100, help="width in pixels of the committed image")
    args = p.parse_args(argv)
    if not args.screenshot.is_file():
        print(f"error: no screenshot at {args.screenshot}; run the browser test first "
              "(.venv/bin/python -m pytest tests/test_browser.py)", file=sys.stderr)
        return 2
    image = Image.open(args.screenshot).convert("RGB")
    height = round(image.height * args.width / image.width)
    small = image.resize((args.width, height), Image.Resampling.LANCZOS)
    for colors in (256, 128, 64):  # fewer colours until it fits: UI screenshots are mostly flat
        OUT.parent.mkdir(parents=True, exist_ok=True)
        small.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(OUT, optimize=True)
        if OUT.stat().st_size < LIMIT:
            print(f"wrote {OUT.relative_to(REPO)}: {args.width}x{height} px, {colors} colours, "
                  f"{OUT.stat().st_size / 1000:.0f} KB (from {args.screenshot})")
            return 0
    print(f"error: {OUT} is still {OUT.stat().st_size / 1000:.0f} KB at 64 colours; give a smaller --width",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
