"""Pictures of retrieval results."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

from PIL import Image, ImageDraw, ImageOps

__all__ = ["draw_query_grid"]

MATCH, MISMATCH, UNKNOWN, QUERY = (40, 170, 60), (210, 40, 40), (150, 150, 150), (40, 90, 200)


def _tile(path: str, size: int, frame: tuple, border: int) -> Image.Image:
    with Image.open(path) as img:
        img = ImageOps.fit(img.convert("RGB"), (size - 2 * border, size - 2 * border))
    return ImageOps.expand(img, border=border, fill=frame)


def draw_query_grid(results: Sequence[Dict[str, Any]], path: Path | str, tile: int = 128, border: int = 5) -> Path:
    """One row per query: the query (blue frame), then its results in rank order, framed
    green when the result's class matches the query's, red when not, grey when unknown.
    Each result is captioned with its rank and Hamming distance."""
    if not results:
        raise ValueError("no query results to draw")
    cols = 1 + max(len(r["hits"]) for r in results)
    caption = 16
    canvas = Image.new("RGB", (cols * (tile + 4), len(results) * (tile + caption + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, res in enumerate(results):
        y = row * (tile + caption + 4)
        canvas.paste(_tile(res["query"], tile, QUERY, border), (0, y))
        draw.text((4, y + tile + 1), f"query: {res.get('query_label') or '?'}"[:24], fill=(0, 0, 0))
        for col, hit in enumerate(res["hits"], start=1):
            frame = UNKNOWN if hit["match"] is None else (MATCH if hit["match"] else MISMATCH)
            x = col * (tile + 4)
            canvas.paste(_tile(hit["path"], tile, frame, border), (x, y))
            draw.text((x + 4, y + tile + 1), f"#{hit['rank']}  d={hit['distance']}", fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
