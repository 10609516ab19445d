"""Render the sample page the language pipeline reads when a request brings no image.

    python handlers/samples/make_sample.py            # writes handlers/samples/page_de.png

Needs Pillow (a dev dependency) and DejaVu Sans from Debian's `fonts-dejavu-core` package
(`/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf`; `--font` for another TrueType file). The
page is a short German paragraph, black 34 px text on white, which Tesseract (`-l deu`) reads
back exactly; stored as a 1-bit PNG it is about 6 KB. tests/test_language.py compares the OCR
output with TEXT.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
FONT: Final = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # Debian: fonts-dejavu-core
TEXT: Final = (
    "Am Samstag fahren wir mit dem Zug nach Hamburg. Meine Schwester wohnt dort seit zwei Jahren "
    "in einer kleinen Wohnung am Hafen. Wir gehen zusammen auf den Markt und kaufen frisches Brot, "
    "Käse und Äpfel. Am Abend kochen wir eine Suppe und sprechen über unsere Pläne für den Sommer."
)
WIDTH, MARGIN, SIZE, COLUMNS = 1200, 60, 34, 58


def render(text: str, font_path: str) -> Image.Image:
    """The text wrapped to COLUMNS characters, black on white, as a 1-bit image."""
    font = ImageFont.truetype(font_path, SIZE)
    lines = textwrap.wrap(text, COLUMNS)
    line_height = round(SIZE * 1.6)
    height = 2 * MARGIN + line_height * len(lines)
    page = Image.new("L", (WIDTH, height), 255)
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + i * line_height), line, font=font, fill=0)
    return page.point(lambda v: 255 if v > 128 else 0).convert("1")


def main() -> None:
    """Write the sample page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=HERE / "page_de.png")
    parser.add_argument("--font", default=FONT, help="a TrueType font file (default: DejaVu Sans)")
    args = parser.parse_args()
    render(TEXT, args.font).save(args.output, optimize=True)
    print(f"{args.output}: {args.output.stat().st_size} bytes")


if __name__ == "__main__":
    main()
