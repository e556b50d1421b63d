"""Object silhouettes as functions of local metric coordinates.

Each function takes local coordinates of the pixels of a billboard (front quad: ``lx`` across,
``ly`` up from the ground; side quad: ``lz`` along the object from its near end, ``ly`` up) and
returns ``(label, part, top)``: the Cityscapes labelId (0 = empty), the index into the object's
colour table, and how much the pixel is an upward-facing ledge that catches snow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .layout import (
    BICYCLE,
    BUS,
    CAR,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    TRUCK,
    VEGETATION,
    Thing,
)
from .noise import fbm

ShapeOut = tuple[np.ndarray, np.ndarray, np.ndarray]
Shape = Callable[[np.ndarray, np.ndarray, Thing], ShapeOut]


class _Canvas:
    """Accumulates label/part/top for one billboard; later ``put`` calls paint over earlier."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.label = np.zeros(shape, np.uint8)
        self.part = np.zeros(shape, np.uint8)
        self.top = np.zeros(shape, np.float32)

    def put(self, mask: np.ndarray, label: int, part: int, top: float | None = None) -> None:
        self.label[mask] = label
        self.part[mask] = part
        if top is not None:
            self.top[mask] = top

    def out(self) -> ShapeOut:
        return self.label, self.part, self.top


def _seg(
    px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    """Distance from points to the segment a-b."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


def _vehicle_label(kind: str) -> int:
    return {"car": CAR, "truck": TRUCK, "bus": BUS}[kind]


def vehicle_end(lx: np.ndarray, ly: np.ndarray, t: Thing) -> ShapeOut:
    """Rear (facing +1) or front (facing -1) of a car, truck or bus."""
    c = _Canvas(np.broadcast_shapes(lx.shape, ly.shape))
    a = np.abs(lx) / (0.5 * t.w)
    b = np.broadcast_to(ly / t.h, c.label.shape)
    a = np.broadcast_to(a, c.label.shape)
    lab = _vehicle_label(t.kind)
    c.put((b < 0.16) & (a > 0.58) & (a < 0.93), lab, 1)  # tyres below the body
    if t.kind == "car":
        corner = 0.1 * np.clip((b - 0.48) / 0.1, 0.0, 1.0)
        c.put((b >= 0.12) & (b < 0.58) & (a < 1.0 - corner), lab, 0)
        c.put((b >= 0.12) & (b < 0.22) & (a < 0.98), lab, 5)
        hw = 0.9 - 0.22 * (b - 0.58) / 0.38
        c.put((b >= 0.56) & (b < 0.6) & (a < 0.92), lab, 0, 0.7)  # boot lid / bonnet ledge
        c.put((b >= 0.58) & (b < 0.97) & (a < hw), lab, 0)
        c.put((b > 0.62) & (b < 0.9) & (a < hw - 0.08), lab, 2)
        c.put((b >= 0.9) & (b < 0.97) & (a < hw), lab, 0, 1.0)
        c.put((b > 0.4) & (b < 0.52) & (a > 0.66) & (a < 0.93), lab, 3)
        if t.facing < 0:
            c.put((b > 0.3) & (b < 0.42) & (a < 0.45), lab, 5)
        c.put((b > 0.22) & (b < 0.31) & (a < 0.22), lab, 4)
    elif t.kind == "truck":
        if t.facing > 0:
            c.put((b >= 0.1) & (a < 1.0), lab, 6)
            c.put((b >= 0.1) & (a < 0.012 * 2.4 / t.w), lab, 5)
            c.put((b >= 0.97) & (a < 1.0), lab, 6, 1.0)
            c.put((b > 0.12) & (b < 0.2) & (a > 0.7) & (a < 0.95), lab, 3)
        else:
            c.put((b >= 0.78) & (a < 0.95), lab, 6, None)
            c.put((b >= 0.97) & (a < 0.95), lab, 6, 1.0)
            c.put((b >= 0.1) & (b < 0.78) & (a < 1.0), lab, 0)
            c.put((b > 0.45) & (b < 0.72) & (a < 0.86), lab, 2)
            c.put((b > 0.16) & (b < 0.26) & (a > 0.65) & (a < 0.92), lab, 3)
            c.put((b > 0.16) & (b < 0.3) & (a < 0.5), lab, 5)
    else:  # bus
        c.put((b >= 0.08) & (a < 1.0), lab, 0)
        c.put((b >= 0.97) & (a < 1.0), lab, 0, 1.0)
        if t.facing > 0:
            c.put((b > 0.58) & (b < 0.85) & (a < 0.82), lab, 2)
            c.put((b > 0.14) & (b < 0.3) & (a > 0.76) & (a < 0.95), lab, 3)
        else:
            c.put((b > 0.33) & (b < 0.86) & (a < 0.93), lab, 2)
            c.put((b > 0.88) & (b < 0.95) & (a < 0.7), lab, 3)
            c.put((b > 0.14) & (b < 0.22) & (a > 0.7) & (a < 0.93), lab, 3)
        c.put((b > 0.3) & (b < 0.34) & (a < 1.0), lab, 6)
    return c.out()


def vehicle_side(lz: np.ndarray, ly: np.ndarray, t: Thing) -> ShapeOut:
    """Side of a vehicle; ``lz`` runs from its near end (the rear when facing +1)."""
    c = _Canvas(np.broadcast_shapes(lz.shape, ly.shape))
    lz = np.broadcast_to(lz, c.label.shape)
    ly = np.broadcast_to(ly, c.label.shape)
    L = t.length
    # Measure from the vehicle's front so the cab/bonnet sits at the right end.
    fz = lz if t.facing < 0 else L - lz
    b = ly / t.h
    lab = _vehicle_label(t.kind)
    inside = (lz >= 0) & (lz <= L)
    r = 0.33 if t.kind == "car" else 0.5
    wheels = [0.17 * L, 0.83 * L] if t.kind != "truck" else [0.15 * L, 0.7 * L, 0.86 * L]
    dist = np.min(np.stack([np.hypot(fz - w, ly - r) for w in wheels]), axis=0)
    arch = dist < r * 1.15
    if t.kind == "car":
        body = inside & (b >= 0.14) & (b < 0.58) & ~arch
        c.put(body, lab, 0)
        c.put(inside & (b >= 0.54) & (b < 0.58) & ~arch, lab, 0, 0.7)
        g = (b - 0.58) / 0.38
        front = 0.2 + 0.18 * g  # windscreen slope near the front
        back = 0.9 - 0.1 * g
        cab = inside & (b >= 0.58) & (b < 0.96) & (fz / L > front) & (fz / L < back)
        c.put(cab, lab, 0)
        glass = cab & (b > 0.62) & (b < 0.9) & (fz / L > front + 0.04) & (fz / L < back - 0.04)
        glass &= np.abs(fz / L - 0.55) > 0.02  # B pillar
        c.put(glass, lab, 2)
        c.put(cab & (b >= 0.9), lab, 0, 1.0)
    elif t.kind == "truck":
        cab_len = 2.2
        c.put(inside & (fz > cab_len + 0.2) & (b >= 0.14) & ~arch, lab, 6)
        c.put(inside & (fz > cab_len + 0.2) & (b >= 0.97), lab, 6, 1.0)
        cab = inside & (fz <= cab_len) & (b >= 0.14) & (b < 0.78) & ~arch
        c.put(cab, lab, 0)
        c.put(cab & (b > 0.45) & (b < 0.72) & (fz > 0.4) & (fz < cab_len - 0.3), lab, 2)
        c.put(inside & (fz > cab_len) & (fz <= cab_len + 0.2) & (b > 0.14) & (b < 0.6), lab, 5)
    else:
        c.put(inside & (b >= 0.08) & ~arch, lab, 0)
        c.put(inside & (b >= 0.97), lab, 0, 1.0)
        band = (
            inside & (b > 0.5) & (b < 0.86) & (np.mod(fz, 1.5) > 0.18) & (fz > 0.3) & (fz < L - 0.3)
        )
        c.put(band, lab, 2)
        c.put(inside & (b > 0.3) & (b < 0.35), lab, 6)
    c.put(inside & (dist < r), lab, 1)
    c.put(inside & (dist < 0.5 * r), lab, 7)
    return c.out()


def person(lx: np.ndarray, ly: np.ndarray, t: Thing) -> ShapeOut:
    c = _Canvas(np.broadcast_shapes(lx.shape, ly.shape))
    h = t.h
    s = np.broadcast_to(ly / h, c.label.shape)
    x = np.broadcast_to(lx / h, c.label.shape)
    ax = np.abs(x)
    stride = 0.035 * (0.5 - s) / 0.5 if t.variant == 3 else 0.0
    legs = (s < 0.5) & ((np.abs(x - 0.045 - stride) < 0.036) | (np.abs(x + 0.045 + stride) < 0.036))
    c.put(legs, PERSON, 2 if t.variant != 1 else 0)
    if t.variant == 1:  # skirt
        c.put((s >= 0.28) & (s < 0.52) & (ax < 0.09 + 0.06 * (0.5 - s) / 0.22), PERSON, 2)
    c.put(legs & (s < 0.03), PERSON, 4)
    hw = 0.1 + 0.025 * np.clip((s - 0.62) / 0.2, 0.0, 1.0)
    c.put((s >= 0.49) & (s < 0.85) & (ax < hw), PERSON, 1)
    arms = (s >= 0.5) & (s < 0.84) & (ax >= hw) & (ax < hw + 0.045)
    c.put(arms, PERSON, 1)
    c.put((s >= 0.44) & (s < 0.5) & (ax >= 0.1) & (ax < 0.15), PERSON, 0)
    if t.variant == 2:  # bag
        c.put((s >= 0.42) & (s < 0.56) & (x > 0.13) & (x < 0.21), PERSON, 2)
    c.put((s >= 0.84) & (s < 0.87) & (ax < 0.028), PERSON, 0)
    head = np.hypot(x, (s - 0.925) * 0.95) < 0.066
    c.put(head, PERSON, 0)
    c.put(head & (s > 0.935), PERSON, 3)
    c.top[(s > 0.97) & head] = 1.0
    c.top[(s >= 0.83) & (s < 0.85) & (ax < hw + 0.045)] = 0.6
    return c.out()


def two_wheeler(lx: np.ndarray, ly: np.ndarray, t: Thing) -> ShapeOut:
    """Bicycle or motorcycle in profile (crossing or parked sideways), with its rider."""
    c = _Canvas(np.broadcast_shapes(lx.shape, ly.shape))
    x = np.broadcast_to(lx if t.variant % 2 == 0 else -lx, c.label.shape)
    y = np.broadcast_to(ly, c.label.shape)
    motor = t.kind == "motorcycle"
    lab = MOTORCYCLE if motor else BICYCLE
    r = 0.31 if motor else 0.34
    wx = 0.68 if motor else 0.55
    d_back = np.hypot(x + wx, y - r)
    d_front = np.hypot(x - wx, y - r)
    thick = 0.09 if motor else 0.045
    tyres = (np.abs(d_back - r + thick / 2) < thick / 2) | (
        np.abs(d_front - r + thick / 2) < thick / 2
    )
    if motor:
        c.put(np.hypot((x + 0.02) / 0.55, (y - 0.6) / 0.2) < 1.0, lab, 5)
        c.put((np.abs(x + 0.05) < 0.22) & (y > 0.28) & (y < 0.55), lab, 6)
        c.put(np.hypot((x + 0.25) / 0.3, (y - 0.8) / 0.07) < 1.0, lab, 7)
        c.put(_seg(x, y, (wx, r), (0.48, 0.95)) < 0.04, lab, 6)
        c.put((d_back < 0.5 * r) | (d_front < 0.5 * r), lab, 6)
        seat, bar = (-0.22, 0.85), (0.46, 1.0)
    else:
        frame = np.min(
            np.stack(
                [
                    _seg(x, y, (-wx, r), (-0.12, 0.9)),
                    _seg(x, y, (-0.12, 0.9), (0.42, 0.92)),
                    _seg(x, y, (0.42, 0.92), (wx, r)),
                    _seg(x, y, (-0.12, 0.9), (0.02, 0.36)),
                    _seg(x, y, (0.02, 0.36), (-wx, r)),
                    _seg(x, y, (0.02, 0.36), (0.42, 0.92)),
                    _seg(x, y, (0.42, 0.92), (0.46, 1.04)),
                ]
            ),
            axis=0,
        )
        c.put(frame < 0.028, lab, 5)
        c.put((np.abs(x + 0.13) < 0.1) & (y > 0.9) & (y < 0.95), lab, 7)
        c.put((d_back < 0.03) | (d_front < 0.03), lab, 6)
        seat, bar = (-0.12, 0.95), (0.44, 1.04)
    c.put(tyres, lab, 4)
    if t.kind != "bicycle":  # ridden: add the rider
        sx, sy = seat
        hip = (sx, sy + 0.05)
        shoulder = (sx + 0.22, sy + 0.55)
        knee = (sx + 0.3, sy - 0.15)
        foot = (0.05, 0.38) if not motor else (0.05, 0.45)
        c.put(_seg(x, y, hip, knee) < 0.08, RIDER, 2)
        c.put(_seg(x, y, knee, foot) < 0.06, RIDER, 2)
        c.put(_seg(x, y, hip, shoulder) < 0.14, RIDER, 1)
        c.put(_seg(x, y, shoulder, bar) < 0.05, RIDER, 1)
        head_c = (shoulder[0] + 0.05, shoulder[1] + 0.19)
        head = np.hypot(x - head_c[0], y - head_c[1]) < (0.13 if motor else 0.11)
        c.put(head, RIDER, 3 if motor else 0)
        c.put(head & (y > head_c[1] + 0.03), RIDER, 3)
        c.top[head & (y > head_c[1] + 0.08)] = 1.0
        c.top[(_seg(x, y, hip, shoulder) < 0.14) & (y > shoulder[1] - 0.05)] = 0.6
    return c.out()


def lamp(lx: np.ndarray, ly: np.ndarray, t: Thing) -> ShapeOut:
    c = _Canvas(np.broadcast_shapes(lx.shape, ly.shape))
    x = np.broadcast_to(lx, c.label.shape)
    y = np.broadcast_to(ly, c.label.shape)
    h = t.h
    c.put((np.abs(x) < 0.1 - 0.04 * y / h) & (y < h), POLE, 0)
    c.put(_seg(x, y, (0.0, h - 0.3), (t.arm, h - 0.08)) < 0.045, POLE, 0)
    head = np.hypot((x - t.arm) / 0.34, (y - h + 0.12) / 0.1) < 1.0
    c.put(head, POLE, 0)
    c.put(head & (y < h - 0.14), POLE, 1)
    c.top[head & (y > h - 0.07)] = 1.0
    return c.out()


def sign(lx: np.ndarray, ly: np.ndarray, t: Thing) -> ShapeOut:
    c = _Canvas(np.broadcast_shapes(lx.shape, ly.shape))
    x = np.broadcast_to(lx, c.label.shape)
    y = np.broadcast_to(ly, c.label.shape)
    h, s = t.h, 0.5 * t.w
    c.put((np.abs(x) < 0.04) & (y < h), POLE, 0)
    dy = y - h
    if t.variant == 0:  # prohibition: red ring, white disc
        d = np.hypot(x, dy)
        c.put(d < s, TRAFFIC_SIGN, 1)
        c.put(d < 0.75 * s, TRAFFIC_SIGN, 2)
        c.top[(d < s) & (dy > 0.85 * s)] = 1.0
    elif t.variant == 1:  # mandatory: blue disc, white arrow
        d = np.hypot(x, dy)
        c.put(d < s, TRAFFIC_SIGN, 1)
        c.put(
            (d < 0.6 * s) & (np.abs(x) < 0.12 * s)
            | (np.abs(dy - 0.3 * s) + np.abs(x) < 0.3 * s) & (d < s) & (dy > 0.05 * s),
            TRAFFIC_SIGN,
            2,
        )
        c.top[(d < s) & (dy > 0.85 * s)] = 1.0
    elif t.variant == 2:  # priority road: yellow diamond with white rim
        d = np.abs(x) + np.abs(dy)
        c.put(d < s, TRAFFIC_SIGN, 2)
        c.put(d < 0.75 * s, TRAFFIC_SIGN, 1)
        c.top[(d < s) & (dy > 0.8 * s)] = 1.0
    else:  # direction board
        box = (np.abs(x) < 1.2 * s) & (np.abs(dy) < 0.6 * s)
        c.put(box, TRAFFIC_SIGN, 1)
        c.put(box & (np.abs(dy) < 0.08 * s) & (np.abs(x) < 0.9 * s), TRAFFIC_SIGN, 2)
        c.top[box & (dy > 0.5 * s)] = 1.0
    return c.out()


def traffic_light(lx: np.ndarray, ly: np.ndarray, t: Thing) -> ShapeOut:
    c = _Canvas(np.broadcast_shapes(lx.shape, ly.shape))
    x = np.broadcast_to(lx, c.label.shape)
    y = np.broadcast_to(ly, c.label.shape)
    h = t.h
    c.put((np.abs(x) < 0.06) & (y < h), POLE, 0)
    box = (np.abs(x) < 0.18) & (y >= h) & (y < h + 0.95)
    c.put(box, TRAFFIC_LIGHT, 1)
    c.top[box & (y > h + 0.9)] = 1.0
    for i, cy in enumerate((0.78, 0.48, 0.18)):
        c.put(box & (np.hypot(x, y - h - cy) < 0.1), TRAFFIC_LIGHT, 2 + i)
    return c.out()


def tree(lx: np.ndarray, ly: np.ndarray, t: Thing) -> ShapeOut:
    c = _Canvas(np.broadcast_shapes(lx.shape, ly.shape))
    x = np.broadcast_to(lx, c.label.shape)
    y = np.broadcast_to(ly, c.label.shape)
    r = 0.5 * t.w
    cy = t.h - r
    c.put((np.abs(x) < 0.11 + 0.06 * (1.0 - y / t.h)) & (y < cy), VEGETATION, 1)
    # Noise in metres (resolution-independent): a ragged, leafy outline.
    n = fbm(x * 1.1, y * 1.1, t.seed & 0x7FFFFFFF, octaves=3)
    d = np.hypot(x / r, (y - cy) / (1.05 * r))
    canopy = d < 0.78 + 0.45 * (n - 0.5) * 2.0 * 0.5
    c.put(canopy, VEGETATION, 0)
    c.top[canopy & (y > cy + 0.2 * r) & (n > 0.45)] = 0.8
    return c.out()


FRONT_SHAPES: dict[str, Shape] = {
    "car": vehicle_end,
    "truck": vehicle_end,
    "bus": vehicle_end,
    "person": person,
    "rider": two_wheeler,
    "motorcycle": two_wheeler,
    "bicycle": two_wheeler,
    "lamp": lamp,
    "sign": sign,
    "traffic_light": traffic_light,
    "tree": tree,
}
