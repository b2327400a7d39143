"""Draw a prediction's evidence boxes, labelled, on the image they refer to."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind-friendly outline colours (Okabe-Ito), cycled per box.
COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]


def draw_boxes(image: Image.Image, boxes: list[dict], min_side: int = 384) -> Image.Image:
    """A copy of ``image`` with each ``{"bbox_2d": [x1, y1, x2, y2], "label"}`` (original pixels) drawn.

    Small images are upscaled first (nearest neighbour, boxes scaled with them) so that labels stay legible.
    """
    img = image.convert("RGB")
    scale = max(1.0, min_side / max(1, min(img.size)))
    if scale > 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(12, img.height // 40))
    width = max(2, img.height // 200)
    for k, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) * scale for v in box["bbox_2d"])
        color = COLORS[k % len(COLORS)]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        label = str(box.get("label", ""))
        if label:
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            tw, th = right - left, bottom - top
            # Label above the box, or inside its top edge when the box touches the top of the image.
            ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else y1 + width
            draw.rectangle([x1, ty, x1 + tw + 2 * width, ty + th + 2 * width], fill=color)
            draw.text((x1 + width, ty + width - top), label, fill="black", font=font)
    return img


def save_overlay(prediction, path: str | Path, image_index: int = 0) -> Path | None:
    """Write the image ``image_index`` of a ``Prediction`` with its boxes to ``path`` (PNG); None without images."""
    visuals = getattr(prediction, "visuals", None) or []
    if image_index >= len(visuals):
        return None
    boxes = [b for b in prediction.boxes if b.get("image") == image_index]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_boxes(visuals[image_index].image, boxes).save(path, format="PNG")
    return path
