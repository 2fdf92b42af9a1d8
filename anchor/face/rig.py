"""The mouth rig: the portrait's own lips, jaw and chin moved over a landmark mesh, the inner mouth drawn.

A ``MouthShape`` moves the 68 landmarks (``_targets``): the lips part along
their own inner contour (the lower lip and the jaw carry most of the gap,
the upper lip a little), the corners spread for ``width`` and draw in for
``round``, which also purses the lips. A mesh of triangles over the lips,
the lower face and a ring of fixed points around it is warped piecewise
affinely from those targets back to the portrait, so every pixel outside
the ring and everything above the nostrils stays the photo's own, and the
warp is continuous: no seam. Between the parted lips the inner mouth is
drawn: a dark cavity shaded towards the lips, upper teeth, and with the
mouth wide open lower teeth and the tongue.

A portrait whose mouth is open in the photo (a smile with teeth) is first
closed by the same warp (its rest pose), so ``CLOSED`` means lips together
on every portrait.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from anchor.face.landmarks import INNER_LIPS, JAW, MOUTH_LEFT, MOUTH_RIGHT, OUTER_LIPS
from anchor.face.mouth import CLOSED, MouthShape
from anchor.face.portrait import Image, Portrait

F32 = npt.NDArray[np.float32]

#: Largest gap between the inner lips at the centre, in mouth widths.
MAX_GAP = 0.5
#: Of the gap: the upper lip's share; the lower lip and jaw take the rest.
UPPER_SHARE = 0.22
#: How far each lower jaw point follows the gap (chin 8 most; the jaw's ends stay).
JAW_FOLLOW = {5: 0.28, 6: 0.5, 7: 0.66, 8: 0.72, 9: 0.66, 10: 0.5, 11: 0.28}
#: Inner/outer lip pairs across the mouth: upper point, lower point.
INNER_PAIRS = ((61, 67), (62, 66), (63, 65))
UPPER_OUTER, LOWER_OUTER = (49, 50, 51, 52, 53), (55, 56, 57, 58, 59)
UPPER_INNER, LOWER_INNER = (61, 62, 63), (65, 66, 67)
#: Landmarks of the mesh that never move: the nostrils and the jaw's upper ends.
FIXED_LANDMARKS = (3, 4, 12, 13, 31, 32, 33, 34, 35)
DEFAULT_TEETH = np.array([226.0, 218.0, 204.0], dtype=np.float32)


def _smooth(t: F32 | float) -> F32:
    x = np.clip(np.asarray(t, dtype=np.float32), 0.0, 1.0)
    return np.asarray(x * x * (3 - 2 * x), dtype=np.float32)


def _midpoints(ring: list[int], n: int) -> npt.NDArray[np.float32]:
    """Rows of weights over ``n`` points: the Catmull-Rom midpoint of each edge of the closed ``ring``."""
    rows = np.zeros((len(ring), n), np.float32)
    k = len(ring)
    for i in range(k):
        for j, w in ((-1, -1 / 16), (0, 9 / 16), (1, 9 / 16), (2, -1 / 16)):
            rows[i, ring[(i + j) % k]] += w
    return rows


def _loft(inner: list[int], outer: list[int], at: F32) -> list[tuple[int, int, int]]:
    """Triangles filling the band between two closed rings of point ids (both in the same direction)."""
    p0 = at[inner[0]]
    start = int(np.argmin([float(np.sum((at[q] - p0) ** 2)) for q in outer]))
    outer = outer[start:] + outer[:start]
    n, m = len(inner), len(outer)
    i = j = 0
    tris = []
    while i < n or j < m:
        a, b = inner[i % n], outer[j % m]
        a2, b2 = inner[(i + 1) % n], outer[(j + 1) % m]
        step_inner = j >= m or (
            i < n and float(np.sum((at[a2] - at[b]) ** 2)) <= float(np.sum((at[a] - at[b2]) ** 2))
        )
        if step_inner:
            tris.append((a, a2, b))
            i += 1
        else:
            tris.append((a, b2, b))
            j += 1
    return tris


class MouthRig:
    """Renders a portrait with its mouth in any ``MouthShape``; the portrait's landmarks drive the mesh."""

    def __init__(self, portrait: Portrait) -> None:
        self.portrait = portrait
        self.base = portrait.image
        src = np.asarray(portrait.landmarks, dtype=np.float32)
        left, right = src[MOUTH_LEFT], src[MOUTH_RIGHT]
        self.width = float(np.linalg.norm(right - left))
        self.ex = (right - left) / max(self.width, 1e-3)  # along the mouth
        self.ey = np.array([-self.ex[1], self.ex[0]], dtype=np.float32)  # down the face
        self.centre = (left + right) / 2
        self._u = np.array([float((p - self.centre) @ self.ex) / (self.width / 2) for p in src], np.float32)
        self.rest = self._closed(src)

        # Curved lip contours: a spline midpoint between each pair of lip landmarks (ids 68-87),
        # so the lips bend smoothly instead of along the landmarks' straight segments.
        inner_ring, outer_ring = list(range(60, 68)), list(range(48, 60))
        self._spline = np.concatenate([_midpoints(inner_ring, 68), _midpoints(outer_ring, 68)])
        ring = self._ring(src)
        self.source = np.concatenate([src, self._spline @ src, ring]).astype(np.float32)
        first_ring = 68 + len(self._spline)
        inner = [v for i, k in enumerate(inner_ring) for v in (k, 68 + i)]
        outer = [v for i, k in enumerate(outer_ring) for v in (k, 76 + i)]
        middle = [3, 31, 32, 33, 34, 35, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4]
        outside = list(range(first_ring, len(self.source)))
        self._inner = inner
        opened = self._points(MouthShape(open=1.0))
        self.triangles = np.array(
            _loft(inner, outer, opened) + _loft(outer, middle, opened) + _loft(middle, outside, opened),
            dtype=np.int32,
        )
        fixed = set(FIXED_LANDMARKS) | set(outside)
        moving = [not {int(v) for v in t} <= fixed for t in self.triangles]
        self._moving = self.triangles[np.array(moving)]

        h, w = self.base.shape[:2]
        lo = np.floor(ring.min(axis=0)).astype(int)
        hi = np.ceil(ring.max(axis=0)).astype(int) + 1
        self.x0, self.y0 = max(0, int(lo[0])), max(0, int(lo[1]))
        self.x1, self.y1 = min(w, int(hi[0])), min(h, int(hi[1]))
        ys, xs = np.mgrid[self.y0 : self.y1, self.x0 : self.x1].astype(np.float32)
        self._xs, self._ys = xs, ys
        self._roi = np.ascontiguousarray(self.base[self.y0 : self.y1, self.x0 : self.x1])
        self._colours(src)

    # -- geometry -------------------------------------------------------------------------------

    def _ring(self, src: F32) -> F32:
        """Fixed points round the lower face: a box from the nostrils to below the chin.

        Nothing above its top moves: the mesh's upper points (nostrils, the jaw's
        upper ends) are fixed, so no moving triangle reaches past them.
        """
        jaw = src[JAW]
        face_w = float(jaw[:, 0].max() - jaw[:, 0].min())
        top = float(min(src[31:36, 1].min(), src[3, 1], src[13, 1]))
        chin = float(src[8, 1])
        bottom = chin + 0.35 * (chin - float(src[29, 1]))  # room below the chin for the jaw to drop into
        x_lo, x_hi = float(jaw[:, 0].min()) - 0.08 * face_w, float(jaw[:, 0].max()) + 0.08 * face_w
        n = 5
        xs = np.linspace(x_lo, x_hi, n + 1)
        ys = np.linspace(top, bottom, n + 1)
        # Clockwise from the top left, the same direction as the landmark rings.
        pts = (
            [(x, top) for x in xs[:-1]]
            + [(x_hi, y) for y in ys[:-1]]
            + [(x, bottom) for x in xs[::-1][:-1]]
            + [(x_lo, y) for y in ys[::-1][:-1]]
        )
        return np.array(pts, dtype=np.float32)

    def _closed(self, src: F32) -> F32:
        """The landmarks with the lips together: a mouth open in the photo closes, mostly by the jaw."""
        rest = src.copy()
        gaps = [float((src[lo] - src[up]) @ self.ey) for up, lo in INNER_PAIRS]
        gap = max(0.0, float(np.mean(gaps)))
        self.opened_in_photo = gap >= 0.04 * self.width
        if not self.opened_in_photo:
            return rest
        for (up, lo), g in zip(INNER_PAIRS, gaps, strict=True):
            g = max(g, 0.0)
            rest[up] += 0.3 * g * self.ey
            rest[lo] -= 0.7 * g * self.ey
        for k in UPPER_OUTER:
            rest[k] += 0.15 * gap * self.ey * (1 - abs(self._u[k]))
        for k in LOWER_OUTER:
            rest[k] -= 0.7 * gap * self.ey * (1 - 0.5 * abs(self._u[k]))
        for k, f in JAW_FOLLOW.items():
            rest[k] -= 0.9 * f * gap * self.ey
        return rest

    def _points(self, shape: MouthShape) -> F32:
        """Every mesh point (landmarks, then the ring) where ``shape`` puts it."""
        pts = self.rest.copy()
        w = self.width
        gap = shape.open * MAX_GAP * w
        u = self._u
        # The gap's profile across the mouth: round vowels open a rounder, more even hole.
        power = 0.6 - 0.35 * shape.round
        profile = np.clip(1.0 - u * u, 0.0, 1.0) ** power
        for k in UPPER_INNER:
            pts[k] -= UPPER_SHARE * gap * profile[k] * self.ey
        for k in UPPER_OUTER:
            pts[k] -= (
                0.5 * UPPER_SHARE * gap * profile[k] + 0.05 * shape.round * w * (1 - abs(u[k]))
            ) * self.ey
        for k in LOWER_INNER:
            pts[k] += (1 - UPPER_SHARE) * gap * profile[k] * self.ey
        outer_profile = np.clip(1.0 - u * u, 0.0, 1.0) ** 0.3
        for k in LOWER_OUTER:
            lift = 0.06 * shape.round * w * (1 - abs(u[k]))
            pts[k] += ((1 - UPPER_SHARE) * gap * outer_profile[k] + lift) * self.ey
        for k, f in JAW_FOLLOW.items():
            pts[k] += f * gap * self.ey
        # Corners: out for a spread (ee), in for rounding (oo) and a little for a wide jaw; lips follow.
        spread = w * (0.07 * shape.width - 0.16 * shape.round - 0.04 * shape.open)
        for k in range(48, 68):
            pts[k] += spread * u[k] * self.ex
        for k in (48, 54, 60, 64):
            pts[k] += (0.12 * gap - 0.025 * max(shape.width, 0.0) * w) * self.ey
        ring = self.source[68 + len(self._spline) :]
        return np.concatenate([pts, self._spline @ pts, ring]).astype(np.float32)

    # -- colours --------------------------------------------------------------------------------

    def _colours(self, src: F32) -> None:
        """The lips' colour (the cavity and tongue are shades of it); the teeth's, as the photo showed them
        (before its rest pose closed the mouth: ``Portrait.teeth``) or else ivory toned to the face."""
        mask = np.zeros(self.base.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(src[OUTER_LIPS]).astype(np.int32)], 255)
        inner = np.zeros_like(mask)
        cv2.fillPoly(inner, [np.round(src[INNER_LIPS]).astype(np.int32)], 255)
        lips = self.base[(mask > 0) & (inner == 0)].astype(np.float32)
        self.lip = lips.mean(axis=0) if len(lips) else np.array([150.0, 80.0, 80.0], np.float32)
        shown = self.base[inner > 0].astype(np.float32)
        bright = shown[shown.mean(axis=1) > lips.mean() + 40] if len(shown) and len(lips) else shown[:0]
        shown_teeth = np.clip(bright.mean(axis=0), 0, 245) if len(bright) > 12 else None
        self.photo_teeth: tuple[float, float, float] | None = None
        if shown_teeth is not None:
            self.photo_teeth = (float(shown_teeth[0]), float(shown_teeth[1]), float(shown_teeth[2]))
        if self.portrait.teeth is not None:
            self.teeth = np.array(self.portrait.teeth, dtype=np.float32)
        elif shown_teeth is not None:
            self.teeth = shown_teeth.astype(np.float32)
        else:
            # Ivory taking on the lips' warmth, no brighter than the face's own highlights.
            skin = self.base[mask > 0].astype(np.float32) if len(lips) else DEFAULT_TEETH[None]
            tint = 0.85 * DEFAULT_TEETH + 0.15 * self.lip
            ceiling = float(np.percentile(self.base.astype(np.float32).mean(axis=2), 97)) * 1.0
            scale = min(1.0, ceiling / float(tint.mean()), (float(skin.mean()) + 90) / float(tint.mean()))
            self.teeth = (tint * scale).astype(np.float32)

    # -- drawing --------------------------------------------------------------------------------

    def points(self, shape: MouthShape) -> F32:
        """The 68 landmarks of a frame rendered with ``shape`` (image pixels)."""
        return self._points(shape)[:68]

    def render(self, shape: MouthShape) -> Image:
        """The portrait with its mouth in ``shape``; the portrait itself (no copy) for its rest pose."""
        if shape == CLOSED and not self.opened_in_photo:
            return self.base
        target = self._points(shape)
        roi = self._warp(target)
        self._draw_mouth(roi, target, shape)
        frame = self.base.copy()
        frame[self.y0 : self.y1, self.x0 : self.x1] = roi
        return frame

    def _warp(self, target: F32) -> Image:
        tris = self._moving
        dst = target[tris] - np.array([self.x0, self.y0], np.float32)  # [T, 3, 2] in ROI pixels
        src = self.source[tris]
        # Affine per triangle, from the target triangle back to the source one.
        a = np.concatenate([dst, np.ones((len(tris), 3, 1), np.float32)], axis=2)  # [T, 3, 3]
        det = np.linalg.det(a)
        ok = np.abs(det) > 1e-3
        coef = np.zeros((len(tris), 3, 2), np.float32)
        coef[ok] = np.linalg.solve(a[ok], src[ok])  # [x y 1] @ coef = source (x, y)
        labels = np.full(self._xs.shape, -1, np.int32)
        for k in np.flatnonzero(ok):
            cv2.fillConvexPoly(labels, np.round(dst[k]).astype(np.int32), int(k))
        mx, my = self._xs.copy(), self._ys.copy()
        hit = labels >= 0
        lab = labels[hit]
        x, y = self._xs[hit] - self.x0, self._ys[hit] - self.y0
        mx[hit] = x * coef[lab, 0, 0] + y * coef[lab, 1, 0] + coef[lab, 2, 0]
        my[hit] = x * coef[lab, 0, 1] + y * coef[lab, 1, 1] + coef[lab, 2, 1]
        out: Image = cv2.remap(self.base, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
        return out

    def _draw_mouth(self, roi: Image, target: F32, shape: MouthShape) -> None:
        """The cavity between the parted inner lips: dark, teeth above, tongue and lower teeth when wide."""
        inner = target[self._inner] - np.array([self.x0, self.y0], np.float32)  # 60, mid, 61, mid, ...
        gap = float(np.max((inner[[0, 15, 14, 13, 12, 11, 10, 9, 8]] - inner[:9]) @ self.ey))
        if gap < 0.8:
            return
        # The teeth tuck under the upper lip: the cavity reaches a little behind its inner edge, which
        # in the photo is the shadowed seam of the closed lips and would show as a dark band.
        across_lip = ((target[self._inner[:9]] - self.centre) @ self.ex) / (self.width / 2)
        inner[:9] -= _smooth(1.0 - np.abs(across_lip))[:, None] * (0.04 * self.width) * self.ey
        upper = inner[:9]  # 60 .. 64, left to right
        lower = inner[[0, 15, 14, 13, 12, 11, 10, 9, 8]]  # 60, 67 .. 65, 64
        pad = 3
        lo = np.floor(inner.min(axis=0)).astype(int) - pad
        hi = np.ceil(inner.max(axis=0)).astype(int) + pad
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [roi.shape[1], roi.shape[0]])
        if np.any(hi <= lo):
            return
        bw, bh = int(hi[0] - lo[0]), int(hi[1] - lo[1])
        poly = np.round((inner - lo) * 16).astype(np.int32)
        mask = np.zeros((bh, bw), np.uint8)
        cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=4)
        alpha = mask.astype(np.float32) / 255
        ys, xs = np.mgrid[0:bh, 0:bw].astype(np.float32)
        xs += lo[0]
        ys += lo[1]
        # Per column: the inner upper and lower lip lines, and how far down between them a pixel sits.
        top = np.interp(xs[0], upper[:, 0], upper[:, 1])[None, :]
        bottom = np.interp(xs[0], lower[:, 0], lower[:, 1])[None, :]
        span = np.maximum(bottom - top, 1e-3)
        down = ys - top  # pixels below the upper lip
        up = bottom - ys  # pixels above the lower lip
        t = np.clip(down / span, 0.0, 1.0)
        half = max(float(upper[-1, 0] - upper[0, 0]) / 2, 1.0)
        across = np.clip(np.abs(xs - (upper[0, 0] + upper[-1, 0]) / 2) / half, 0, 1)
        w = self.width
        dark = self.lip * 0.16
        mid = self.lip * 0.42
        colour = dark + (mid - dark) * (0.35 * (1 - t) * (1 - across))[..., None]
        # Tongue: low in the mouth, behind the lower teeth; seen once the mouth opens past a third.
        tongue_on = float(_smooth((shape.open - 0.3) / 0.4))
        if tongue_on > 0:
            tongue_top = 0.58 - 0.1 * shape.open
            rise = np.clip((t - tongue_top) / 0.2, 0, 1) * (1 - _smooth((across - 0.55) / 0.3))
            tongue = self.lip * (0.55 + 0.25 * np.clip((t - tongue_top) / 0.4, 0, 1))[..., None]
            colour = colour + (tongue - colour) * (tongue_on * rise)[..., None]
        # The lips shade the cavity's rim.
        rim = cv2.GaussianBlur(alpha, (0, 0), max(0.8, 0.12 * gap))
        colour = colour * (0.55 + 0.45 * np.clip(rim * 1.6 - 0.3, 0, 1))[..., None]
        # Upper teeth hang from the upper lip, the incisors a little longer; lower teeth show when wide open.
        teeth_h = min(0.11 * w, 0.42 * gap) * (1 + 0.12 * np.cos(np.pi * np.clip(across / 0.3, 0, 1)))
        upper_teeth = _smooth((teeth_h - down) / 1.0) * (1 - _smooth((across - 0.45) / 0.22))
        upper_teeth *= _smooth(down / 1.0)  # the lip's shadow on their roots
        lower_h = min(0.045 * w, 0.2 * gap) * float(_smooth((shape.open - 0.6) / 0.3))
        lower_teeth = _smooth((lower_h - up) / 1.0) * (1 - _smooth((across - 0.32) / 0.2)) * (lower_h > 0.5)
        # Darker towards the corners and their lower edge, faint gaps between the front teeth.
        gaps = 1 - 0.15 * np.exp(-(((across - np.array([[[0.0]], [[0.26]]])) / 0.03) ** 2)).max(axis=0)
        edge = 1 - 0.25 * np.clip(down / np.maximum(teeth_h, 1e-3), 0, 1) ** 4
        shaded = 0.75 * self.teeth + 0.25 * self.lip  # lower teeth sit in the lip's and tongue's shadow
        for amount, tone, fall in ((lower_teeth, shaded, 0.7 * gaps), (upper_teeth, self.teeth, gaps * edge)):
            teeth = tone * ((1 - 0.35 * across**2) * fall)[..., None]
            colour = colour + (teeth - colour) * amount[..., None]
        region = roi[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float32)
        mixed = region + (colour - region) * alpha[..., None]
        roi[lo[1] : hi[1], lo[0] : hi[0]] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
