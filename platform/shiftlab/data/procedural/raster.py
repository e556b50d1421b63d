"""Rasterise a layout into appearance-independent maps (z-buffered, vectorised per surface).

The maps (labels, depth, world coordinates, surface orientation, albedo, snow-catching ledges,
emitters) are computed once per layout and size; every appearance is shading on top of them,
which is what keeps all appearances pixel-aligned with one label map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layout import (
    F_U,
    F_V,
    ROAD,
    SIDEWALK,
    SKY,
    SKY_DEPTH,
    TERRAIN,
    VEGETATION,
    WALL,
    Facade,
    Layout,
    Thing,
    srgb,
)
from .noise import _hash01, fbm, value_noise
from .shapes import FRONT_SHAPES, Shape, vehicle_side

# Surface orientation codes.
N_GROUND, N_POS_X, N_NEG_X, N_CAMERA, N_SKY = 0, 1, 2, 3, 4


@dataclass
class Light:
    """A point emitter in world coordinates, used for glows and light pools."""

    x: float
    y: float
    z: float
    color: np.ndarray  # linear rgb, ~unit brightness
    intensity: float
    size: float  # metres: radius of the glowing core
    kind: str  # "lamp", "head", "tail", "signal"


@dataclass
class Scene:
    layout: Layout
    size: tuple[int, int]
    u: np.ndarray  # (1, W) normalised column centres
    v: np.ndarray  # (H, 1)
    label: np.ndarray
    depth: np.ndarray
    wx: np.ndarray
    wy: np.ndarray
    normal: np.ndarray
    albedo: np.ndarray
    top: np.ndarray
    emit: np.ndarray  # (H, W, 3) self-emission of lamps and vehicle lights (when switched on)
    window: np.ndarray  # (H, W) brightness of lit windows at night
    lights: list[Light] = field(default_factory=list)
    cache: dict[str, np.ndarray] = field(default_factory=dict)  # shared by the appearances

    @property
    def sky(self) -> np.ndarray:
        return self.label == SKY


def _coverage(dist: np.ndarray, half_width: float, footprint: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a stripe: thin far-away markings fade instead of flickering."""
    return np.clip((half_width - np.abs(dist)) / np.maximum(footprint, 1e-4) + 0.5, 0.0, 1.0)


def _paint(
    sc: Scene,
    rows: slice,
    cols: slice,
    mask: np.ndarray,
    depth: np.ndarray | np.floating,
    label: np.ndarray | np.integer | int,
    albedo: np.ndarray,
    normal: int,
    wx: np.ndarray | np.floating,
    wy: np.ndarray,
    top: np.ndarray | float = 0.0,
    emit: np.ndarray | None = None,
    window: np.ndarray | None = None,
) -> None:
    """Z-buffered write of one surface into the scene maps (sub-block rows x cols)."""
    shape = sc.depth[rows, cols].shape
    depth = np.broadcast_to(depth, shape)
    m = np.broadcast_to(mask, shape) & (depth < sc.depth[rows, cols])
    if not m.any():
        return
    sc.depth[rows, cols][m] = depth[m]
    sc.label[rows, cols][m] = np.broadcast_to(label, shape)[m]
    sc.albedo[rows, cols][m] = np.broadcast_to(albedo, (*shape, 3))[m]
    sc.normal[rows, cols][m] = normal
    sc.wx[rows, cols][m] = np.broadcast_to(wx, shape)[m]
    sc.wy[rows, cols][m] = np.broadcast_to(wy, shape)[m]
    sc.top[rows, cols][m] = np.broadcast_to(top, shape)[m]
    sc.emit[rows, cols][m] = 0.0 if emit is None else np.broadcast_to(emit, (*shape, 3))[m]
    sc.window[rows, cols][m] = 0.0 if window is None else np.broadcast_to(window, shape)[m]


def _road_markings(
    lay: Layout, x: np.ndarray, z: np.ndarray, fp_x: np.ndarray, fp_z: np.ndarray
) -> np.ndarray:
    """Lane markings: solid between opposite directions and at the edges, dashed between
    lanes; a zebra crossing and its stop line where the layout has one."""
    paint = np.zeros(z.shape, np.float32)
    for i in range(1, len(lay.lanes)):
        xb = lay.road_left + i * lay.lane_w
        if lay.lanes[i - 1][1] != lay.lanes[i][1]:
            line = np.maximum(
                _coverage(x - xb - 0.12, 0.06, fp_x), _coverage(x - xb + 0.12, 0.06, fp_x)
            )
        else:
            line = _coverage(x - xb, 0.07, fp_x) * (np.mod(z + 3.0, 12.0) < 4.5)
        paint = np.maximum(paint, line)
    for xe in (lay.road_left + 0.3, lay.road_right - 0.3):
        paint = np.maximum(paint, _coverage(x - xe, 0.08, fp_x))
    if lay.crosswalk_z is not None:
        cz = lay.crosswalk_z
        zebra = (z > cz) & (z < cz + 4.0) & (np.mod(x - lay.road_left, 1.1) < 0.55)
        stop = _coverage(z - cz + 1.5, 0.2, fp_z)
        paint = np.maximum(paint, np.maximum(zebra.astype(np.float32), stop))
    return paint


def _sidewalk(
    lay: Layout,
    x: np.ndarray,
    z: np.ndarray,
    fp_x: np.ndarray,
    fp_z: np.ndarray,
    grain: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Paving slabs with dark joints, and a lighter kerb along the road."""
    joint = np.maximum(
        _coverage(np.mod(x + 0.3, 0.6) - 0.3, 0.025, fp_x),
        _coverage(np.mod(z + 0.3, 0.6) - 0.3, 0.025, fp_z),
    )
    slab = 0.9 + 0.2 * value_noise(np.floor(x / 0.6), np.floor(z / 0.6), seed + 4)
    walk = lay.walk_color * (slab * (0.85 + 0.3 * grain) * (1.0 - 0.35 * joint))[..., None]
    kerb = (np.abs(x - lay.road_left) < 0.25) | (np.abs(x - lay.road_right) < 0.25)
    walk[kerb] = srgb(190, 188, 182) * (0.9 + 0.2 * grain[kerb, None])
    return walk


def _ground(sc: Scene) -> None:
    lay, cam = sc.layout, sc.layout.camera
    H, W = sc.size
    r0 = int(np.searchsorted(sc.v[:, 0], cam.v_h + 1e-4))
    rows = slice(r0, H)
    dv = sc.v[rows] - cam.v_h
    z = np.broadcast_to(F_V * cam.height / dv, (H - r0, W))
    x = (sc.u - cam.u_v) * z / F_U
    fp_x = z / (F_U * W)  # metres per pixel across
    fp_z = z * z / (F_V * cam.height * H)  # metres per pixel along the road
    fp = np.maximum(fp_x, fp_z)
    seed = lay.noise_seed
    label = np.full(z.shape, TERRAIN, np.uint8)
    on_walk = (x >= lay.walk_left) & (x <= lay.walk_right)
    on_road = (x >= lay.road_left) & (x <= lay.road_right)
    label[on_walk] = SIDEWALK
    label[on_road] = ROAD

    grain = fbm(x * 2.0, z * 2.0, seed + 1, octaves=4, footprint=fp * 2.0)
    blotch = fbm(x * 0.15, z * 0.15, seed + 2, octaves=3)
    road = lay.road_color * (0.75 + 0.35 * grain[..., None]) * (0.85 + 0.3 * blotch[..., None])
    paint = _road_markings(lay, x, z, fp_x, fp_z)
    paint *= 0.6 + 0.4 * fbm(x * 3.0, z * 0.7, seed + 3, octaves=2)  # worn paint
    road = road * (1.0 - paint[..., None]) + srgb(215, 215, 210) * paint[..., None]
    walk = _sidewalk(lay, x, z, fp_x, fp_z, grain, seed)

    grass = fbm(x * 1.5, z * 1.5, seed + 5, octaves=4, footprint=fp * 1.5)
    terrain = lay.terrain_color * (0.6 + 0.8 * grass[..., None]) * (0.8 + 0.4 * blotch[..., None])

    albedo = np.where(
        (label == ROAD)[..., None], road, np.where((label == SIDEWALK)[..., None], walk, terrain)
    )
    top = np.ones(z.shape, np.float32)
    _paint(
        sc,
        rows,
        slice(0, W),
        np.ones(z.shape, bool),
        z,
        label,
        albedo,
        N_GROUND,
        x,
        np.zeros_like(z),
        top,
    )


def _facade_hit(
    sc: Scene, f: Facade
) -> tuple[slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(columns, covered-pixel mask, z, y, facade index) of the pixels this facade covers."""
    cam = sc.layout.camera
    H, _ = sc.size
    side = np.sign(f.x)
    du = sc.u[0] - cam.u_v
    cols_idx = np.nonzero(du * side > 1e-4)[0]
    if cols_idx.size == 0:
        return None
    cols = slice(int(cols_idx[0]), int(cols_idx[-1]) + 1)
    z = np.broadcast_to(F_U * f.x / du[cols][None, :], (H, cols.stop - cols.start))
    y = cam.height - (sc.v - cam.v_h) * z / F_V
    idx_full, inside = f.index_at(z)
    inside = inside & (y >= 0.0) & (y <= f.height[idx_full]) & (z > 0.5)
    inside &= z < sc.depth[:, cols]  # skip pixels already covered by something nearer
    if not inside.any():
        return None
    return cols, inside, z[inside], y[inside], idx_full[inside]


def _facade_shading(
    sc: Scene, f: Facade, z: np.ndarray, y: np.ndarray, idx: np.ndarray, back: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(albedo, top light, window brightness) of the covered pixels (1-D): wall texture,
    windows and shop fronts that fade to their mean tone below a pixel, sills and cornice."""
    H, W = sc.size
    height = f.height[idx]
    zl = z - f.z0[idx]
    length = f.z1[idx] - f.z0[idx]
    fp = z * z / (F_U * W * abs(f.x)) + z / (F_V * H)  # metres per pixel on the facade
    tex = fbm(z * 0.7, y * 0.7, f.seed & 0x7FFFFFFF, octaves=4, footprint=fp * 0.7)
    albedo = f.color[idx] * (0.78 + 0.44 * tex)[..., None]

    col_w = f.col_w[idx]
    fh = f.floor_h[idx]
    fz = np.mod(zl, col_w) / col_w
    fy = np.mod(y, fh) / fh
    col = np.floor(zl / col_w)
    floor = np.floor(y / fh)
    margin = (zl > 0.8) & (zl < length - 0.8) & (y < height - 1.2)
    win = margin & (np.abs(fz - 0.5) < 0.5 * f.win_w[idx]) & (fy > 0.3) & (fy < 0.3 + f.win_h[idx])
    win &= floor >= 1
    shop = margin & f.shop[idx] & (y > 0.3) & (y < 2.7) & (np.abs(fz - 0.5) < 0.42)
    win |= shop
    sill = margin & (floor >= 1) & (np.abs(fz - 0.5) < 0.5 * f.win_w[idx] + 0.05)
    sill &= (fy > 0.26) & (fy <= 0.3)
    cornice = y > height - 0.45
    # Windows fade into the average wall/glass tone once they are smaller than a pixel.
    fade = np.exp(-((fp / (0.5 * col_w)) ** 2))
    h_cell = _hash01(col.astype(np.int64) + 131 * idx, floor.astype(np.int64), f.seed & 0xFFFF)
    glass = srgb(32, 40, 50) * (0.7 + 0.6 * h_cell[..., None])
    if back:
        glass = glass * 1.3
    wmix = (win * fade + 0.25 * (1.0 - fade) * margin * (floor >= 1))[..., None]
    albedo = albedo * (1.0 - wmix) + glass * wmix
    albedo = np.where(sill[..., None], albedo * 1.25, albedo)
    albedo = np.where(cornice[..., None], albedo * 0.7, albedo)
    top = np.where(cornice & (y > height - 0.25), 1.0, np.where(sill, 0.9, 0.0))
    # Lit windows at night: a hashed subset per window cell; shops are mostly lit.
    lit = win & (h_cell < np.where(shop, 0.85, 0.38))
    cell_light = _hash01(
        col.astype(np.int64), floor.astype(np.int64) + 7 * idx, (f.seed >> 3) & 0xFFFF
    )
    bright = np.where(lit, 0.35 + 0.65 * cell_light, 0.0)
    bright = bright * fade + (1.0 - fade) * 0.3 * margin * (floor >= 1) * 0.5
    return albedo, top, bright


def _facade(sc: Scene, f: Facade, back: bool) -> None:
    hit = _facade_hit(sc, f)
    if hit is None:
        return
    cols, inside, z, y, idx = hit
    albedo, top, bright = _facade_shading(sc, f, z, y, idx, back)

    def block(values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        # Scatter the covered pixels' values back into the block of columns.
        out = np.full(inside.shape + values.shape[1:], fill, np.float32)
        out[inside] = values
        return out

    normal = N_POS_X if f.x < 0 else N_NEG_X
    _paint(
        sc,
        slice(0, sc.size[0]),
        cols,
        inside,
        block(z, SKY_DEPTH),
        np.uint8(11),
        block(albedo),
        normal,
        np.float32(f.x),
        block(y),
        block(top),
        window=block(bright),
    )


def _barrier(sc: Scene, b) -> None:
    cam = sc.layout.camera
    H, W = sc.size
    side = np.sign(b.x)
    du = sc.u[0] - cam.u_v
    cols_idx = np.nonzero(du * side > 1e-4)[0]
    if cols_idx.size == 0 or b.height.max() <= 0:
        return
    cols = slice(int(cols_idx[0]), int(cols_idx[-1]) + 1)
    z = np.broadcast_to(F_U * b.x / du[cols][None, :], (H, cols.stop - cols.start))
    y = cam.height - (sc.v - cam.v_h) * z / F_V
    idx = np.clip(np.searchsorted(b.z0, z, side="right") - 1, 0, len(b.z0) - 1)
    inside = (z >= b.z0[idx]) & (z < b.z1[idx]) & (y >= 0) & (y <= b.height[idx]) & (z > 0.5)
    if not inside.any():
        return
    label = b.label[idx]
    seed = sc.layout.noise_seed + 11
    tex = fbm(z * 2.0, y * 2.0, seed, octaves=3)
    albedo = b.color[idx] * (0.75 + 0.5 * tex)[..., None]
    fence = label == 13
    posts = np.mod(z, 2.5) < 0.12
    mesh = (np.mod(z, 0.15) < 0.05) | (np.mod(y, 0.15) < 0.05)
    # The see-through mesh averages out (instead of aliasing) once a cell is below a pixel.
    fp = z * z / (F_U * W * abs(b.x)) + z / (F_V * H)
    fade = np.exp(-((fp / 0.15) ** 2))
    holes = np.where(mesh, 0.0, 1.0) * fade + 0.55 * (1.0 - fade)
    albedo = np.where((fence & ~posts)[..., None], albedo * (1.0 - 0.65 * holes)[..., None], albedo)
    leaves = fbm(z * 3.0, y * 3.0, seed + 1, octaves=3)
    hedge = label == VEGETATION
    albedo = np.where(hedge[..., None], b.color[idx] * (0.5 + 1.0 * leaves)[..., None], albedo)
    wall_cap = (label == WALL) & (y > b.height[idx] - 0.08)
    albedo = np.where(wall_cap[..., None], albedo * 1.2, albedo)
    top = np.where(y > b.height[idx] - 0.1, 1.0, 0.0).astype(np.float32)
    normal = N_POS_X if b.x < 0 else N_NEG_X
    _paint(sc, slice(0, H), cols, inside, z, label, albedo, normal, np.float32(b.x), y, top)


def _pixel_range(lo: float, hi: float, n: int) -> slice:
    a = int(np.clip(np.floor(lo * n - 0.5), 0, n))
    b = int(np.clip(np.ceil(hi * n + 0.5), 0, n))
    return slice(a, b)


def _emit_table(t: Thing) -> np.ndarray:
    """Per-part self-emission (linear rgb) of an object whose lights are on."""
    table = np.zeros((len(t.colors), 3), np.float32)
    if t.kind in ("car", "truck", "bus") and t.moving:
        table[3] = (srgb(255, 40, 30) * 3.0) if t.facing > 0 else srgb(255, 250, 235) * 6.0
    elif t.kind == "lamp":
        table[1] = srgb(255, 200, 120) * 8.0
    elif t.kind == "traffic_light":
        table[2 + t.variant] = t.colors[2 + t.variant] * 6.0
    return table


def _texture(sc: Scene, lx: np.ndarray, ly: np.ndarray, t: Thing) -> np.ndarray:
    return 0.88 + 0.24 * fbm(lx * 3.0, ly * 3.0, (t.seed + 17) & 0x7FFFFFFF, octaves=2)


def _front_quad(sc: Scene, t: Thing, x0: float, half_w: float, height: float, shape: Shape) -> None:
    cam = sc.layout.camera
    H, W = sc.size
    z = t.z
    if z < 1.0:
        return
    u0, _ = cam.project(x0 - half_w, 0.0, z)
    u1, _ = cam.project(x0 + half_w, 0.0, z)
    _, vt = cam.project(0.0, height, z)
    _, vb = cam.project(0.0, 0.0, z)
    cols, rows = _pixel_range(u0, u1, W), _pixel_range(vt, vb, H)
    if cols.stop <= cols.start or rows.stop <= rows.start:
        return
    lx = (sc.u[:, cols] - cam.u_v) * z / F_U - t.x
    ly = cam.height - (sc.v[rows] - cam.v_h) * z / F_V
    label, part, top = shape(lx, ly, t)
    mask = label > 0
    if not mask.any():
        return
    shape2 = label.shape
    lxb = np.broadcast_to(lx, shape2)
    lyb = np.broadcast_to(ly, shape2)
    albedo = t.colors[part] * _texture(sc, lxb, lyb, t)[..., None]
    emit = _emit_table(t)[part]
    _paint(sc, rows, cols, mask, np.float32(z), label, albedo, N_CAMERA, lxb + t.x, lyb, top, emit)


def _side_quad(sc: Scene, t: Thing, xs: float, shape: Shape) -> None:
    cam = sc.layout.camera
    H, W = sc.size
    z0, z1 = max(t.z, 1.0), t.z + t.length
    if abs(xs) < 0.15:
        return
    ua, _ = cam.project(xs, 0.0, z0)
    ub, _ = cam.project(xs, 0.0, z1)
    vs = [cam.project(xs, yy, zz)[1] for yy in (0.0, t.h) for zz in (z0, z1)]
    cols = _pixel_range(min(ua, ub), max(ua, ub), W)
    rows = _pixel_range(min(vs), max(vs), H)
    if cols.stop <= cols.start or rows.stop <= rows.start:
        return
    du = sc.u[:, cols] - cam.u_v
    du = np.where(np.abs(du) < 1e-6, 1e-6, du)
    z = F_U * xs / du
    lz = z - t.z
    ly = cam.height - (sc.v[rows] - cam.v_h) * z / F_V
    label, part, top = shape(lz, ly, t)
    mask = (label > 0) & (z > 0.5) & (z >= z0) & (z <= z1)
    if not mask.any():
        return
    shape2 = label.shape
    lzb = np.broadcast_to(lz, shape2)
    lyb = np.broadcast_to(ly, shape2)
    albedo = t.colors[part] * _texture(sc, lzb, lyb, t)[..., None]
    emit = np.zeros((*shape2, 3), np.float32)  # side lights are not modelled
    normal = N_POS_X if xs < 0 else N_NEG_X
    _paint(sc, rows, cols, mask, z, label, albedo, normal, np.float32(xs), lyb, top, emit)


def _thing(sc: Scene, t: Thing) -> None:
    shape = FRONT_SHAPES[t.kind]
    if t.kind in ("car", "truck", "bus"):
        _front_quad(sc, t, t.x, 0.5 * t.w, t.h, shape)
        if abs(t.x) > 0.5 * t.w + 0.1:
            _side_quad(sc, t, t.x - np.sign(t.x) * 0.5 * t.w, vehicle_side)
        if t.moving:
            for s in (-1.0, 1.0):
                x = t.x + s * 0.4 * t.w
                if t.facing > 0:
                    sc.lights.append(
                        Light(
                            x,
                            0.46 * t.h if t.kind == "car" else 0.6,
                            t.z,
                            srgb(255, 40, 25),
                            1.0,
                            0.09,
                            "tail",
                        )
                    )
                else:
                    sc.lights.append(
                        Light(
                            x,
                            0.46 * t.h if t.kind == "car" else 0.6,
                            t.z,
                            srgb(255, 245, 225),
                            3.0,
                            0.12,
                            "head",
                        )
                    )
    elif t.kind == "lamp":
        lo, hi = min(0.0, t.arm) - 0.4, max(0.0, t.arm) + 0.4
        _front_quad(sc, t, t.x + 0.5 * (lo + hi), 0.5 * (hi - lo), t.h + 0.1, shape)
        sc.lights.append(
            Light(t.x + t.arm, t.h - 0.18, t.z, srgb(255, 205, 130), 4.0, 0.25, "lamp")
        )
    elif t.kind == "sign":
        _front_quad(sc, t, t.x, 0.7 * t.w, t.h + 0.5 * t.w, shape)
    elif t.kind == "traffic_light":
        _front_quad(sc, t, t.x, 0.25, t.h + 1.0, shape)
        cy = (0.78, 0.48, 0.18)[t.variant]
        sc.lights.append(
            Light(
                t.x,
                t.h + cy,
                t.z - 0.05,
                t.colors[2 + t.variant] / max(float(t.colors[2 + t.variant].max()), 1e-3),
                1.5,
                0.1,
                "signal",
            )
        )
    elif t.kind in ("rider", "motorcycle", "bicycle"):
        _front_quad(sc, t, t.x, 1.05, 1.9, shape)
    else:
        _front_quad(sc, t, t.x, 0.5 * t.w if t.kind == "tree" else 0.3 * t.h, t.h, shape)


def rasterize(layout: Layout, size: tuple[int, int]) -> Scene:
    H, W = size
    u = ((np.arange(W, dtype=np.float32) + 0.5) / W)[None, :]
    v = ((np.arange(H, dtype=np.float32) + 0.5) / H)[:, None]
    sc = Scene(
        layout=layout,
        size=(H, W),
        u=u,
        v=v,
        label=np.full((H, W), SKY, np.uint8),
        depth=np.full((H, W), SKY_DEPTH, np.float32),
        wx=np.zeros((H, W), np.float32),
        wy=np.zeros((H, W), np.float32),
        normal=np.full((H, W), N_SKY, np.uint8),
        albedo=np.zeros((H, W, 3), np.float32),
        top=np.zeros((H, W), np.float32),
        emit=np.zeros((H, W, 3), np.float32),
        window=np.zeros((H, W), np.float32),
    )
    _ground(sc)
    for i, f in enumerate(layout.facades):
        _facade(
            sc,
            f,
            back=i > 0
            and layout.facades[i - 1].x * f.x > 0
            and abs(f.x) > abs(layout.facades[i - 1].x),
        )
    for b in layout.barriers:
        _barrier(sc, b)
    for t in layout.things:
        _thing(sc, t)
    return sc
