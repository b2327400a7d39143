"""CLIMB-mini's images: drawing primitives and one renderer per image domain.

Images are float32 in [0, 1]; grayscale (H, W), colour (H, W, 3).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .config import ClimbMiniConfig
from .domains import DOMAIN_SPECS


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of a square image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise with about ``cells`` blobs across, unit standard deviation."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    out = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return out / max(float(out.std()), 1e-6)


def _ellipse(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = _grid(size)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _blob(
    rng: np.random.Generator, size: int, cy: float, cx: float, r: float, *, aspect: float = 1.0,
    angle: float | None = None, lobes: float = 0.0, spikes: float = 0.0, n_spikes: int = 10,
) -> np.ndarray:
    """A star-shaped region: an ellipse of radius ``r`` (``r * aspect`` across) with lobulated / spiculated edge."""
    yy, xx = _grid(size)
    angle = rng.uniform(0, np.pi) if angle is None else angle
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / aspect
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    edge = np.ones_like(rho)
    if lobes:
        amps = rng.uniform(0.3, 1.0, 4)
        phases = rng.uniform(0, 2 * np.pi, 4)
        edge += lobes * sum(a * np.cos(k * theta + p) for k, a, p in zip(range(2, 6), amps, phases)) / amps.sum()
    if spikes:
        edge += spikes * np.maximum(np.cos(n_spikes * (theta - rng.uniform(0, np.pi))), 0.0) ** 8
    return rho <= r * edge


def _extent(r: float, aspect: float = 1.0, lobes: float = 0.0, spikes: float = 0.0) -> float:
    """Largest distance from the centre that ``_blob`` with these settings can reach."""
    return r * max(1.0, aspect) * (1.0 + lobes + spikes) + 1.0


def _place(
    rng: np.random.Generator, size: int, extent: float, ok: Callable[[float, float], bool] | None = None,
    margin: float = 1.0,
) -> tuple[float, float]:
    """A random centre keeping a shape of radius ``extent`` inside the image and satisfying ``ok(cy, cx)``."""
    lo, hi = extent + margin, size - extent - margin
    if hi <= lo:
        raise ValueError(f"a lesion of extent {extent:.1f}px does not fit a {size}px image")
    for _ in range(200):
        cy, cx = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if ok is None or ok(cy, cx):
            return cy, cx
    raise ValueError(f"no place found for a lesion of extent {extent:.1f}px in a {size}px image")


def _paint(img: np.ndarray, mask: np.ndarray, value: Any, alpha: float = 1.0, soften: float = 0.6) -> None:
    """Blend ``value`` (scalar, RGB triple or per-pixel array) into ``img`` over ``mask``, in place."""
    a = mask.astype(np.float32)
    if soften:
        a = ndimage.gaussian_filter(a, soften)
    a *= alpha
    value = np.asarray(value, dtype=np.float32)
    if img.ndim == 3:
        a = a[..., None]
    img += a * (value - img)


def _lines(size: int, paths: Sequence[Sequence[tuple[float, float]]], width: int = 1) -> np.ndarray:
    """Mask of polylines given as [(x, y), ...] point lists."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for pts in paths:
        draw.line([(float(x), float(y)) for x, y in pts], fill=255, width=width, joint="curve")
    return np.asarray(canvas) > 0


def _dots(size: int, centres: Sequence[tuple[float, float]], radii: Sequence[float]) -> np.ndarray:
    """Mask of filled discs at (y, x) centres."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for (y, x), r in zip(centres, radii):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(canvas) > 0


def _curve(rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float], bend: float,
           n: int = 16) -> list[tuple[float, float]]:
    """A quadratic Bezier from ``start`` to ``end`` (x, y), bowed sideways by ``bend`` times its length."""
    (x0, y0), (x1, y1) = start, end
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    nx, ny = -(y1 - y0), x1 - x0
    cx, cy = mx + bend * nx, my + bend * ny
    s = np.linspace(0, 1, n)
    xs = (1 - s) ** 2 * x0 + 2 * (1 - s) * s * cx + s**2 * x1
    ys = (1 - s) ** 2 * y0 + 2 * (1 - s) * s * cy + s**2 * y1
    return list(zip(xs.tolist(), ys.tolist()))


def _finish(img: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Add white noise and clip to [0, 1]."""
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0, out=img)


@dataclass
class _Lesion:
    image: int
    mask: np.ndarray
    label: str


@dataclass
class _Drawn:
    images: list[np.ndarray]
    lesions: list[_Lesion] = field(default_factory=list)


def _contrast(hard: bool) -> float:
    """Opacity of a lesion's class colour: hard rows keep each class's colour but show it fainter."""
    return 0.7 if hard else 0.95


def _size(rng: np.random.Generator, hard: bool, easy: tuple[float, float], faint: tuple[float, float]) -> float:
    """A lesion radius as a fraction of the image side: large in easy rows, smaller in hard ones."""
    return float(rng.uniform(*(faint if hard else easy)))


# --------------------------------------------------------------------------------------------------------------
# Renderers, one per image domain: (rng, labels, hard, cfg) -> _Drawn
#
# Each abnormal class paints a large region (easy rows: about a quarter to a half of the image side, several
# 28x28-pixel cells) in its own colour or grey level, so classes differ in the mean and contrast of whole patches,
# with the modality's typical shape or texture drawn on top. Backgrounds are kept low in variance.


def _render_chest_xray(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    yy, xx = _grid(s)
    k = _contrast(hard)
    img = np.full((s, s), 0.05, dtype=np.float32)
    img[_ellipse(s, 0.56 * s, 0.5 * s, 0.52 * s, 0.47 * s)] = 0.48
    cy, ry, rx = 0.46 * s, 0.30 * s, 0.16 * s
    jitter = rng.uniform(-0.02, 0.02) * s
    lungs = [(cy, 0.30 * s + jitter, -1), (cy, 0.70 * s + jitter, 1)]  # (cy, cx, side: -1 left of image)
    ribs = 0.03 * np.sin(2 * np.pi * (yy + 0.3 * s * ((xx - 0.5 * s) / s) ** 2) / (s / 6.5))
    ribs += 0.015 * _smooth_noise(rng, s, 10)
    masks = [_ellipse(s, ly, lx, ry, rx) for ly, lx, _ in lungs]
    for m in masks:
        img[m] = 0.28 + ribs[m]
    img[(np.abs(xx - 0.5 * s - jitter) < 0.06 * s) & (yy > 0.12 * s)] = 0.58  # mediastinum / spine
    # Heart: normal size and grey; cardiomegaly makes it much wider and brighter.
    big = "Cardiomegaly" in labels
    heart_rx = _size(rng, hard, (0.25, 0.28), (0.19, 0.21)) * s if big else rng.uniform(0.13, 0.15) * s
    heart = _ellipse(s, 0.68 * s, 0.53 * s + jitter, (0.15 if hard else 0.18) * s if big else 0.14 * s, heart_rx)
    _paint(img, heart, 0.58)
    drawn = _Drawn([img])
    if big:
        _paint(img, heart, 0.96, alpha=k)
        drawn.lesions.append(_Lesion(0, heart, "Cardiomegaly"))
    sides = rng.permutation(2)
    if "Pleural Effusion" in labels:  # homogeneous bright band filling one lung base, meniscus rising laterally
        (ly, lx, side), lung = lungs[sides[0]], masks[sides[0]]
        level = ly + ry * _size(rng, hard, (-0.2, 0.05), (0.35, 0.5))
        lateral = lx + side * rx
        d = np.clip(1.0 - np.abs(xx - lateral) / (2 * rx), 0.0, 1.0)
        effusion = lung & (yy > level - 0.12 * s * d**2) & ~heart  # the heart stays in front: one colour each
        _paint(img, effusion, 0.78, alpha=k)
        drawn.lesions.append(_Lesion(0, effusion, "Pleural Effusion"))
    if "Pneumothorax" in labels:  # black lateral region without markings, lung collapsed towards the hilum
        (ly, lx, side), lung = lungs[sides[1]], masks[sides[1]]
        f = _size(rng, hard, (1.0, 1.2), (0.55, 0.7))
        collapsed = _ellipse(s, ly + 0.2 * ry * f, lx - side * 0.35 * rx * f, ry * (1 - 0.3 * f),
                             rx * (1 - 0.5 * f))
        ptx = lung & ~collapsed & (yy < ly + 0.45 * ry) & ~heart
        _paint(img, collapsed & lung & ~heart, 0.42, alpha=0.6 * k)
        _paint(img, ptx, 0.0, alpha=k)
        pleura = ndimage.binary_dilation(ptx) & collapsed & lung & ~heart
        _paint(img, pleura, 0.6, alpha=0.8, soften=0.0)
        drawn.lesions.append(_Lesion(0, ptx, "Pneumothorax"))
    if hard:  # ECG electrode on the chest wall
        ey, ex = _place(rng, s, 0.05 * s, lambda y, x: 0.15 * s < y < 0.9 * s and 0.15 * s < x < 0.85 * s)
        r = 0.035 * s
        _paint(img, _ellipse(s, ey, ex, r, r) & ~_ellipse(s, ey, ex, 0.55 * r, 0.55 * r), 0.95, alpha=0.8)
    drawn.images[0] = _finish(img + 0.01 * _smooth_noise(rng, s, 6), rng, 0.015)
    return drawn


def _render_mammography(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    yy, xx = _grid(s)
    right = bool(rng.random() < 0.5)  # chest wall on the right edge
    depth = (s - xx) if right else xx  # distance from the chest wall
    reach = rng.uniform(0.78, 0.86) * s
    breast = _ellipse(s, 0.5 * s, s if right else 0.0, 0.47 * s, reach)
    img = np.full((s, s), 0.02, dtype=np.float32)
    tissue = 0.3 + 0.035 * _smooth_noise(rng, s, 5) + 0.015 * _smooth_noise(rng, s, 14) - 0.08 * depth / s
    img[breast] = tissue[breast]
    pectoral = breast & (depth < 0.3 * s * (1.0 - yy / (0.45 * s)))
    img[pectoral] = 0.45
    drawn = _Drawn([img])
    label, k = labels[0], _contrast(hard)
    if label != DOMAIN_SPECS["mammography"].normal:
        benign = label == "BI-RADS 2"
        if benign:  # large, smooth, mid-grey oval
            r, aspect, lobes, spikes = _size(rng, hard, (0.18, 0.21), (0.11, 0.13)), rng.uniform(0.7, 0.85), 0.04, 0.0
        else:  # very dense spiculated mass
            r, aspect, lobes, spikes = _size(rng, hard, (0.14, 0.16), (0.09, 0.1)), rng.uniform(0.85, 1.0), 0.1, 0.4
        r *= s
        ext = _extent(r, 1.0, lobes, spikes)

        def inside(y: float, x: float) -> bool:
            d = s - x if right else x
            return ((y - 0.5 * s) / (0.47 * s - ext)) ** 2 + (d / (reach - ext)) ** 2 < 1 and d > 0.3 * s + 0.5 * ext

        cy, cx = _place(rng, s, ext, inside)
        mass = _blob(rng, s, cy, cx, r, aspect=aspect, lobes=lobes, spikes=spikes,
                     n_spikes=int(rng.integers(9, 14))) & breast
        if benign:
            halo = ndimage.binary_dilation(mass, iterations=2) & ~mass
            _paint(img, halo, 0.1, alpha=0.8 * k)
            _paint(img, mass, 0.62, alpha=k)
        else:
            _paint(img, mass, 0.96, alpha=k)
            n = int(rng.integers(8, 14))
            ang, rad = rng.uniform(0, 2 * np.pi, n), r * 0.7 * np.sqrt(rng.uniform(0, 1, n))
            calc = _dots(s, list(zip(cy + rad * np.sin(ang), cx + rad * np.cos(ang))), [0.8] * n) & mass
            _paint(img, calc, 1.0, alpha=k, soften=0.0)
        drawn.lesions.append(_Lesion(0, mass, label))
    if hard:  # skin marker (metal BB) near the skin line
        by, bx = _place(rng, s, 0.04 * s,
                        lambda y, x: bool(breast[int(y), int(x)]) and (s - x if right else x) > 0.5 * s)
        _paint(img, _ellipse(s, by, bx, 0.025 * s, 0.025 * s), 1.0, alpha=0.9)
    drawn.images[0] = _finish(img, rng, 0.015)
    return drawn


_SKIN_TONES = ((0.94, 0.80, 0.70), (0.91, 0.75, 0.63), (0.86, 0.68, 0.56))


def _render_dermoscopy(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    yy, xx = _grid(s)
    tone = np.asarray(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], dtype=np.float32)
    img = tone[None, None, :] * (1.0 + 0.025 * _smooth_noise(rng, s, 8)[..., None])
    img = img.astype(np.float32)
    label, k = labels[0], _contrast(hard)
    cy, cx = s / 2 + rng.uniform(-0.08, 0.08, 2) * s
    if label == "melanoma":  # large, asymmetric, near-black with blue-grey and red areas
        r = _size(rng, hard, (0.2, 0.23), (0.12, 0.14)) * s
        lesion = _blob(rng, s, cy, cx, r, aspect=rng.uniform(1.1, 1.3), lobes=0.3)
        base = np.broadcast_to(np.array([0.22, 0.12, 0.09], np.float32), img.shape).copy()
        n1, n2 = _smooth_noise(rng, s, 7), _smooth_noise(rng, s, 7)
        base[n1 > 0.6] = (0.07, 0.05, 0.05)  # black
        base[n2 > 0.9] = (0.36, 0.40, 0.52)  # blue-grey veil
        base[(n1 < -1.0) & (n2 < 0)] = (0.55, 0.18, 0.18)  # red
        _paint(img, lesion, base, alpha=k)
    elif label == "melanocytic nevus":  # round, symmetric, uniform medium brown
        r = _size(rng, hard, (0.17, 0.2), (0.1, 0.12)) * s
        lesion = _blob(rng, s, cy, cx, r, aspect=rng.uniform(0.92, 1.08), lobes=0.04)
        dist = np.hypot(yy - cy, xx - cx) / r
        shade = (0.54 - 0.05 * np.clip(1 - dist, 0, 1))[..., None] * np.array([1.0, 0.6, 0.32], np.float32)
        _paint(img, lesion, shade, alpha=k, soften=1.0)
    else:  # basal cell carcinoma: pink pearly nodule, red arborizing vessels, blue-grey nests
        r = _size(rng, hard, (0.17, 0.2), (0.1, 0.12)) * s
        lesion = _blob(rng, s, cy, cx, r, aspect=rng.uniform(0.9, 1.15), lobes=0.1)
        _paint(img, lesion, (0.95, 0.45, 0.6), alpha=k, soften=1.2)
        paths = []
        for _ in range(int(rng.integers(4, 7))):
            a = rng.uniform(0, 2 * np.pi)
            start = (cx + 0.1 * r * math.cos(a), cy + 0.1 * r * math.sin(a))
            end = (cx + 0.85 * r * math.cos(a + 0.4), cy + 0.85 * r * math.sin(a + 0.4))
            paths.append(_curve(rng, start, end, rng.uniform(-0.3, 0.3)))
        _paint(img, _lines(s, paths) & lesion, (0.72, 0.06, 0.12), alpha=k, soften=0.0)
        n = int(rng.integers(4, 7))
        ang, rad = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.2, 0.7, n) * r
        nests = _dots(s, list(zip(cy + rad * np.sin(ang), cx + rad * np.cos(ang))), rng.uniform(0.12, 0.2, n) * r)
        _paint(img, nests & lesion, (0.48, 0.52, 0.70), alpha=k)
    drawn = _Drawn([img], [_Lesion(0, lesion, label)])
    if hard:  # hairs across the field
        paths = [_curve(rng, tuple(rng.uniform(0, s, 2)), tuple(rng.uniform(0, s, 2)), rng.uniform(-0.2, 0.2))
                 for _ in range(int(rng.integers(2, 5)))]
        _paint(img, _lines(s, paths), (0.15, 0.10, 0.08), alpha=0.8, soften=0.0)
    vignette = np.clip((np.hypot(yy - s / 2, xx - s / 2) - 0.48 * s) / (0.08 * s), 0, 1)[..., None]
    drawn.images[0] = _finish(img * (1 - vignette), rng, 0.012)
    return drawn


def _render_fundus(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    yy, xx = _grid(s)
    rr = np.hypot(yy - s / 2, xx - s / 2) / (0.46 * s)
    retina = rr <= 1.0
    base = np.array([0.80, 0.36, 0.15], np.float32)
    img = base * (1.0 - 0.2 * rr**2 + 0.02 * _smooth_noise(rng, s, 6))[..., None]
    img[~retina] = 0.0
    img = img.astype(np.float32)
    left = bool(rng.random() < 0.5)
    dy, dx = s / 2 + rng.uniform(-0.04, 0.04) * s, (0.27 if left else 0.73) * s
    my, mx = s / 2 + rng.uniform(-0.03, 0.03) * s, (0.55 if left else 0.45) * s
    _paint(img, _ellipse(s, my, mx, 0.08 * s, 0.08 * s), (0.62, 0.26, 0.10), alpha=0.6, soften=2.0)  # macula
    vessels = []
    for up in (-1, 1):
        for reach in (0.62, 0.4):
            end = (mx + (0.35 if left else -0.35) * s * reach / 0.62, my + up * reach * 0.55 * s)
            vessels.append(_curve(rng, (dx, dy), end, up * (0.25 if left else -0.25)))
    _paint(img, _lines(s, vessels, width=max(1, s // 56)) & retina, (0.58, 0.14, 0.06), alpha=0.8, soften=0.0)
    _paint(img, _ellipse(s, dy, dx, 0.065 * s, 0.06 * s), (0.98, 0.88, 0.68), alpha=0.95, soften=1.0)  # disc
    drawn = _Drawn([img])
    label, k = labels[0], _contrast(hard)
    if label != DOMAIN_SPECS["fundus"].normal:
        r = _size(rng, hard, (0.17, 0.2), (0.11, 0.13)) * s
        ext = _extent(r, lobes=0.2)

        def away_from_disc(y: float, x: float) -> bool:
            return (math.hypot(y - s / 2, x - s / 2) < 0.44 * s - ext
                    and math.hypot(y - dy, x - dx) > 0.07 * s + ext)

        cy, cx = _place(rng, s, ext, away_from_disc)
        unit = s / 112
        if label == "Moderate DR":  # confluent yellow hard exudates with dark-red dot-blot haemorrhages
            region = _blob(rng, s, cy, cx, r, lobes=0.2) & retina
            canvas = np.broadcast_to(np.array([1.0, 0.86, 0.28], np.float32), img.shape).copy()
            n = int(rng.integers(8, 14))
            ang, rad = rng.uniform(0, 2 * np.pi, n), 0.85 * r * np.sqrt(rng.uniform(0, 1, n))
            canvas[_dots(s, list(zip(cy + rad * np.sin(ang), cx + rad * np.cos(ang))),
                         rng.uniform(1.5, 3.0, n) * unit)] = (0.45, 0.04, 0.04)
            _paint(img, region, canvas, alpha=k)
        else:  # Proliferative DR: large dark-red preretinal haemorrhage with a tangle of new vessels
            haem = _ellipse(s, cy, cx, 0.75 * r, r) & (yy > cy - 0.45 * r) & retina  # boat shape: flat top
            paths = [_curve(rng, (cx + rng.uniform(-1, 1) * r, cy + rng.uniform(-1, 0) * r),
                            (cx + rng.uniform(-1, 1) * r, cy + rng.uniform(-1, 0.2) * r), rng.uniform(-0.6, 0.6))
                     for _ in range(int(rng.integers(8, 13)))]
            nv = _lines(s, paths, width=max(1, round(unit))) & retina
            _paint(img, nv, (0.55, 0.02, 0.06), alpha=k, soften=0.0)
            _paint(img, haem, (0.30, 0.02, 0.02), alpha=k)
            region = nv | haem
        drawn.lesions.append(_Lesion(0, region, label))
    if hard:  # dust on the lens: a soft grey spot
        gy, gx = _place(rng, s, 0.06 * s, lambda y, x: math.hypot(y - s / 2, x - s / 2) < 0.35 * s)
        _paint(img, _ellipse(s, gy, gx, 0.04 * s, 0.04 * s), (0.35, 0.3, 0.28), alpha=0.35, soften=1.5)
    drawn.images[0] = _finish(img, rng, 0.012)
    return drawn


def _render_pathology(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    unit = s / 112
    stroma = np.array([0.93, 0.74, 0.85], np.float32)
    img = np.broadcast_to(stroma, (s, s, 3)) * (1.0 + 0.02 * _smooth_noise(rng, s, 10)[..., None])
    img = img.astype(np.float32)
    alveoli = _smooth_noise(rng, s, 9) > 0.15
    _paint(img, alveoli, (0.98, 0.93, 0.97), alpha=0.6, soften=0.8)
    n = int(30 * unit * unit)
    pts = rng.uniform(0, s, (n, 2))
    walls = ~alveoli[pts[:, 0].astype(int), pts[:, 1].astype(int)]
    nuclei = _dots(s, [tuple(p) for p in pts[walls]], [1.2 * unit] * int(walls.sum()))
    _paint(img, nuclei, (0.45, 0.28, 0.62), alpha=0.8, soften=0.0)
    label, k = labels[0], _contrast(hard)
    drawn = _Drawn([img])
    if label != DOMAIN_SPECS["pathology"].normal:
        r = _size(rng, hard, (0.23, 0.26), (0.13, 0.15)) * s
        cy, cx = _place(rng, s, _extent(r, lobes=0.2))
        region = _blob(rng, s, cy, cx, r, lobes=0.2)
        yy, xx = _grid(s)
        if label == "lung adenocarcinoma":  # dense dark-purple sheet of glands with small white lumens
            canvas = np.broadcast_to(np.array([0.42, 0.22, 0.62], np.float32), img.shape).copy()
            m = int(rng.integers(4, 7))
            ang, rad = rng.uniform(0, 2 * np.pi, m), 0.65 * r * np.sqrt(rng.uniform(0, 1, m))
            cen = list(zip(cy + rad * np.sin(ang), cx + rad * np.cos(ang)))
            lumen_r = rng.uniform(2.0, 3.5, m) * unit
            canvas[_dots(s, cen, lumen_r + 1.5 * unit) & ~_dots(s, cen, lumen_r)] = (0.25, 0.10, 0.45)
            canvas[_dots(s, cen, lumen_r)] = (0.96, 0.93, 0.97)
        else:  # squamous cell carcinoma: solid red-pink keratinising sheet, dark nuclei, keratin pearls
            canvas = np.broadcast_to(np.array([0.90, 0.30, 0.40], np.float32), img.shape).copy()
            m = int(30 * unit * unit)
            nuc = rng.uniform(cy - r, cy + r, m), rng.uniform(cx - r, cx + r, m)
            canvas[_dots(s, list(zip(*nuc)), [1.6 * unit] * m)] = (0.45, 0.10, 0.30)
            for _ in range(int(rng.integers(1, 3))):
                py, px = cy + rng.uniform(-0.5, 0.5) * r, cx + rng.uniform(-0.5, 0.5) * r
                d = np.hypot(yy - py, xx - px)
                pearl = d < 5.5 * unit
                canvas[pearl & (np.sin(d / unit * 1.6) > 0)] = (0.99, 0.55, 0.40)
                canvas[pearl & (np.sin(d / unit * 1.6) <= 0)] = (0.85, 0.32, 0.36)
        _paint(img, region, canvas, alpha=k, soften=0.8)
        drawn.lesions.append(_Lesion(0, region, label))
    if hard:  # tissue fold: a darker pink band
        p0, p1 = tuple(rng.uniform(0, s, 2)), tuple(rng.uniform(0, s, 2))
        _paint(img, _lines(s, [_curve(rng, p0, p1, 0.1)], width=int(4 * unit)), (0.80, 0.50, 0.70), alpha=0.45)
    drawn.images[0] = _finish(img, rng, 0.012)
    return drawn


def _slice_plan(rng: np.random.Generator, n: int, hard: bool) -> list[tuple[int, float]]:
    """Slices showing the lesion as (index, size factor), the larger first: 2 consecutive slices (1 if n == 1).

    Two, not more, so that the reference answer (one box per slice) stays short.
    """
    if n == 1:
        return [(0, 1.0)]
    k = int(rng.integers(n - 1))
    main, other = (k, k + 1) if rng.random() < 0.5 else (k + 1, k)
    return [(main, 1.0), (other, 0.7 if hard else 0.85)]


def _head(s: int, k: int, n: int) -> tuple[float, float, float]:
    """(centre, ry, rx) of the inner skull on slice k of n (the head is widest near the middle)."""
    f = 0.84 + 0.16 * math.sin(math.pi * (k + 0.5) / n)
    return s / 2, 0.40 * s * f, 0.34 * s * f


def _render_volume(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig,
                   domain: str) -> _Drawn:
    s, n = cfg.volume_size, cfg.volume_slices
    ct = domain == "ct"
    label = labels[0]
    normal = label == DOMAIN_SPECS[domain].normal
    plan = [] if normal else _slice_plan(rng, n, hard)
    # One lesion geometry for the volume; slices show it at different sizes.
    angle = rng.uniform(0, 2 * np.pi)
    rel = rng.uniform(0.0, 0.25)  # intra-axial centre, as a fraction of the brain radius
    radius = _size(rng, hard, (0.17, 0.2), (0.11, 0.13))
    slices, lesions = [], []
    for k in range(n):
        c, ry, rx = _head(s, k, n)
        brain = _ellipse(s, c, c, ry, rx)
        skull = _ellipse(s, c, c, ry + 0.05 * s, rx + 0.05 * s) & ~brain
        img = np.zeros((s, s), np.float32)
        if ct:
            img[brain] = 0.4 + 0.015 * _smooth_noise(rng, s, 6)[brain]
            img[skull] = 1.0
        else:
            img[brain] = 0.45 + 0.02 * _smooth_noise(rng, s, 6)[brain]
            cortex = brain & ~_ellipse(s, c, c, ry - 0.04 * s, rx - 0.04 * s)
            img[cortex] = 0.38
            scalp = _ellipse(s, c, c, ry + 0.08 * s, rx + 0.08 * s) & ~_ellipse(s, c, c, ry + 0.05 * s, rx + 0.05 * s)
            img[scalp] = 0.5
        if 0 < k < n - 1 or n <= 2:  # ventricles on the middle slices
            vent = (_ellipse(s, c - 0.02 * s, c - 0.06 * s, 0.09 * s, 0.03 * s)
                    | _ellipse(s, c - 0.02 * s, c + 0.06 * s, 0.09 * s, 0.03 * s))
            img[vent & brain] = 0.15
        size = dict(plan).get(k)
        if size is not None:
            mask = _volume_lesion(rng, img, s, c, ry, rx, brain, label, hard, radius * size, angle, rel)
            lesions.append(_Lesion(k, mask, label))
        slices.append(img)
    if hard:  # a small dark lacune on a random slice
        k = int(rng.integers(n))
        c, ry, rx = _head(s, k, n)
        ly, lx = _place(rng, s, 0.05 * s, lambda y, x: ((y - c) / ry) ** 2 + ((x - c) / rx) ** 2 < 0.4)
        _paint(slices[k], _ellipse(s, ly, lx, 0.035 * s, 0.035 * s), 0.25 if ct else 0.2, alpha=0.7)
    slices = [_finish(img, rng, 0.015) for img in slices]
    order = {k: i for i, (k, _) in enumerate(plan)}
    lesions.sort(key=lambda les: order[les.image])
    return _Drawn(slices, lesions)


def _volume_lesion(rng: np.random.Generator, img: np.ndarray, s: int, c: float, ry: float, rx: float,
                   brain: np.ndarray, label: str, hard: bool, radius: float, angle: float, rel: float) -> np.ndarray:
    """Draw one slice's cross-section of a CT/MRI lesion (radius: fraction of the side) into ``img``; return its mask.

    Grey levels tell the classes apart: CT subdural blood is moderately bright (0.68), intraparenchymal blood very
    bright (0.95); an MRI meningioma is homogeneously very bright (0.95), a glioma mostly dark (necrosis) inside a
    thin bright rim.
    """
    yy, xx = _grid(s)
    k = _contrast(hard)
    r = radius * s
    if label == "subdural hemorrhage":  # thick crescent along the inner skull
        width = r
        inner = _ellipse(s, c - 0.9 * width * math.sin(angle), c - 0.9 * width * math.cos(angle), ry - 0.2 * width,
                         rx - 0.2 * width)  # shifted away from the lesion side
        theta = np.arctan2(yy - c, xx - c)
        mask = brain & ~inner & (np.cos(theta - angle) > 0.05)
        _paint(img, mask, 0.68, alpha=k)
        return mask
    if label == "meningioma":  # dural-based, against the inner skull
        r *= 1.15
        cy, cx = c + (ry - 0.75 * r) * math.sin(angle), c + (rx - 0.75 * r) * math.cos(angle)
        mask = _blob(rng, s, cy, cx, r, lobes=0.05) & brain
        _paint(img, mask, 0.95, alpha=k)
        return mask
    cy, cx = c + rel * ry * math.sin(angle), c + rel * rx * math.cos(angle)
    if label == "intraparenchymal hemorrhage":
        mask = _blob(rng, s, cy, cx, r, lobes=0.12, aspect=rng.uniform(0.8, 1.0)) & brain
        _paint(img, mask, 0.95, alpha=k)
        return mask
    # glioma: thin enhancing rim around a large dark necrotic core
    mask = _blob(rng, s, cy, cx, r, lobes=0.25) & brain
    core = ndimage.binary_erosion(mask, iterations=max(1, round(0.12 * r)))
    _paint(img, mask, 0.95, alpha=k, soften=0.4)
    _paint(img, core, 0.06, alpha=k, soften=0.4)
    return mask


def _render_ct(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    return _render_volume(rng, labels, hard, cfg, "ct")


def _render_mri(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    return _render_volume(rng, labels, hard, cfg, "mri")


def _render_ultrasound(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s, n = cfg.image_size, cfg.ultrasound_frames
    pad = max(2, s // 28)  # probe motion between frames, in pixels
    big = s + 2 * pad
    yy, xx = _grid(big)
    tissue = np.full((big, big), 0.5, np.float32)
    tissue[yy < 0.12 * big] = 0.75  # skin
    tissue[(yy >= 0.12 * big) & (yy < 0.3 * big)] = 0.35  # subcutaneous fat
    tissue += 0.04 * _smooth_noise(rng, big, 7)
    label, k = labels[0], _contrast(hard)
    lesion = None
    if label != DOMAIN_SPECS["ultrasound"].normal:
        if label == "benign":  # wide, smooth, grey (hypoechoic) oval over a bright posterior band
            r, aspect, lobes, spikes = _size(rng, hard, (0.19, 0.22), (0.12, 0.14)), rng.uniform(0.6, 0.7), 0.05, 0.0
        else:  # taller-than-wide, spiculated, black mass over a dark posterior shadow
            r, aspect, lobes, spikes = _size(rng, hard, (0.12, 0.14), (0.075, 0.09)), rng.uniform(1.3, 1.5), 0.2, 0.4
        r *= s
        ext = _extent(r, aspect, lobes, spikes)
        cy, cx = _place(rng, big, ext, lambda y, x: 0.36 * big < y < 0.6 * big and 0.3 * big < x < 0.7 * big,
                        margin=pad + 1)
        lesion = _blob(rng, big, cy, cx, r, aspect=aspect, angle=0.0, lobes=lobes, spikes=spikes,
                       n_spikes=int(rng.integers(7, 12)))
        cols = lesion.any(axis=0)
        below = (yy > cy) & cols[None, :] & (yy < cy + 2.2 * ext) & ~lesion
        if label == "benign":
            _paint(tissue, below, 0.9, alpha=0.8 * k, soften=1.5)  # posterior enhancement
            _paint(tissue, lesion, 0.25, alpha=k)
        else:
            _paint(tissue, below, 0.1, alpha=0.8 * k, soften=1.5)  # posterior shadow
            _paint(tissue, lesion, 0.0, alpha=k)
    if hard:  # hyperechoic fat lobule
        hy, hx = _place(rng, big, 0.06 * s, lambda y, x: 0.35 * big < y < 0.85 * big, margin=pad + 1)
        _paint(tissue, _ellipse(big, hy, hx, 0.035 * s, 0.055 * s), 0.8, alpha=0.6)
    sy, sx = _grid(s)
    ang = np.arctan2(sx - s / 2, sy + 0.15 * s)
    dist = np.hypot(sx - s / 2, sy + 0.15 * s)
    fan = (np.abs(ang) < math.radians(40)) & (dist > 0.2 * s) & (dist < 1.12 * s)
    gain = np.exp(-0.3 * sy / s)  # depth attenuation
    drawn = _Drawn([])
    for f in range(n):
        oy, ox = pad, pad
        if f > 0:
            oy, ox = pad + int(rng.integers(-pad, pad + 1)), pad + int(rng.integers(-pad, pad + 1))
        frame = tissue[oy:oy + s, ox:ox + s] * gain
        speckle = rng.rayleigh(1.0, (s, s)).astype(np.float32) / math.sqrt(math.pi / 2)
        frame = np.where(fan, frame * (0.6 + 0.4 * speckle), 0.0).astype(np.float32)
        drawn.images.append(_finish(frame, rng, 0.01))
        if lesion is not None:
            drawn.lesions.append(_Lesion(f, lesion[oy:oy + s, ox:ox + s] & fan, label))
    return drawn


RENDERERS: dict[str, Callable[[np.random.Generator, tuple[str, ...], bool, ClimbMiniConfig], _Drawn]] = {
    "chest_xray": _render_chest_xray,
    "mammography": _render_mammography,
    "dermoscopy": _render_dermoscopy,
    "fundus": _render_fundus,
    "pathology": _render_pathology,
    "ct": _render_ct,
    "ultrasound": _render_ultrasound,
    "mri": _render_mri,
}
