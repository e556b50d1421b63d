"""Light transport helpers shared by the appearances: sun and shadows, point lights, glows,
sky gradients, participating media and tone mapping. All work in linear radiance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import F_V, SKY_DEPTH, Thing
from .noise import fbm
from .raster import N_GROUND, N_SKY, Light, Scene

# Unit normals per orientation code (ground, +X, -X, towards camera, sky).
NORMALS = np.array([[0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, -1], [0, 0, 0]], np.float32)


@dataclass(frozen=True)
class Sun:
    elevation: float  # radians
    cx: float  # horizontal direction towards the sun (unit with cz)
    cz: float
    color: np.ndarray  # linear rgb irradiance

    @property
    def direction(self) -> np.ndarray:
        ce = np.cos(self.elevation)
        return np.array([self.cx * ce, np.sin(self.elevation), self.cz * ce], np.float32)


def make_sun(
    rng: np.random.Generator, elev_deg: tuple[float, float], ahead: bool, color: np.ndarray
) -> Sun:
    """A sun from one side of the street; ``ahead`` puts it in front of the camera (backlight)."""
    elev = np.deg2rad(rng.uniform(*elev_deg))
    # Never straight along the street: the facades would shadow nothing and tell nothing.
    cz = float(rng.uniform(0.55, 0.85)) if ahead else float(rng.uniform(-0.7, 0.7))
    cx = float(np.sqrt(1.0 - cz * cz)) * (1.0 if rng.random() < 0.5 else -1.0)
    return Sun(float(elev), cx, cz, color)


def sun_visibility(sc: Scene, sun: Sun, occluder_scale: float = 1.0) -> np.ndarray:
    """1 where the sun is seen, 0 in shadow: facade rows on the sun side and objects' shadows.

    ``occluder_scale`` < 1 lowers the sun-side facades for this test only: a low sun then
    still reaches the street (as through cross streets and low blocks), which is what gives
    sunset scenes their long shadows instead of a street entirely in shade.
    """
    vis = np.ones(sc.size, np.float32)
    solid = ~sc.sky
    X, Y, Z = sc.wx[solid], sc.wy[solid], sc.depth[solid]
    tan_e = np.tan(sun.elevation)
    shadow = np.zeros(X.shape, bool)
    for f in sc.layout.facades:
        if f.x * sun.cx <= 0:
            continue
        s = (f.x - X) / sun.cx
        ok = s > 0.05
        z_at = Z + s * sun.cz
        shadow |= ok & (occluder_scale * f.height_at(z_at) > Y + s * tan_e)
    vis[solid] = np.where(shadow, 0.0, 1.0)
    ground = sc.normal == N_GROUND
    length_cap = 70.0
    for t in sc.layout.things:
        _object_shadow(sc, t, sun, vis, ground, min(t.h / max(tan_e, 1e-3), length_cap))
    return vis


def _footprint(t: Thing) -> tuple[float, float, float, float]:
    if t.kind in ("car", "truck", "bus"):
        return t.x - 0.5 * t.w, t.x + 0.5 * t.w, t.z, t.z + t.length
    if t.kind in ("rider", "motorcycle", "bicycle"):
        return t.x - 0.9, t.x + 0.9, t.z, t.z + 0.3
    if t.kind == "person":
        return t.x - 0.18, t.x + 0.18, t.z, t.z + 0.3
    return t.x - 0.08, t.x + 0.08, t.z, t.z + 0.16  # poles, tree trunks, signs


def _ground_block(sc: Scene, pts: list[tuple[float, float]]) -> tuple[slice, slice] | None:
    cam = sc.layout.camera
    H, W = sc.size
    us, vs = [], []
    for x, z in pts:
        z = max(z, 0.8)
        u, v = cam.project(x, 0.0, z)
        us.append(u)
        vs.append(v)
    c0, c1 = (
        int(np.clip(np.floor(min(us) * W) - 1, 0, W)),
        int(np.clip(np.ceil(max(us) * W) + 1, 0, W)),
    )
    r0, r1 = (
        int(np.clip(np.floor(min(vs) * H) - 1, 0, H)),
        int(np.clip(np.ceil(max(vs) * H) + 1, 0, H)),
    )
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def _object_shadow(
    sc: Scene, t: Thing, sun: Sun, vis: np.ndarray, ground: np.ndarray, length: float
) -> None:
    dx, dz = -sun.cx, -sun.cz  # shadows fall away from the sun
    x0, x1, z0, z1 = _footprint(t)
    corners = [(x0, z0), (x1, z0), (x0, z1), (x1, z1)]
    tip = [(x + dx * length, z + dz * length) for x, z in corners]
    block = _ground_block(sc, corners + tip)
    if block is None:
        return
    rows, cols = block
    g = ground[rows, cols]
    if not g.any():
        return
    qx, qz = sc.wx[rows, cols], sc.depth[rows, cols]
    lo = np.zeros(qx.shape, np.float32)
    hi = np.full(qx.shape, length, np.float32)
    for q, a, b, d in ((qx, x0, x1, dx), (qz, z0, z1, dz)):
        if abs(d) < 1e-6:
            inside = (q >= a) & (q <= b)
            hi = np.where(inside, hi, -1.0)
        else:
            t1, t2 = (q - b) / d, (q - a) / d
            lo = np.maximum(lo, np.minimum(t1, t2))
            hi = np.minimum(hi, np.maximum(t1, t2))
    hit = (lo <= hi) & g
    vis[rows, cols][hit] = 0.0
    if t.kind == "tree":
        _canopy_shadow(sc, t, sun, vis, ground)


def _canopy_shadow(sc: Scene, t: Thing, sun: Sun, vis: np.ndarray, ground: np.ndarray) -> None:
    """A round crown casts an ellipse, stretched along the sun direction when the sun is low."""
    dx, dz = -sun.cx, -sun.cz
    r = 0.5 * t.w
    centre = min((t.h - r) / max(np.tan(sun.elevation), 1e-3), 60.0)
    cx, cz = t.x + dx * centre, t.z + dz * centre
    stretch = min(1.0 / max(np.sin(sun.elevation), 1e-3), 6.0)
    ext = r * stretch
    block = _ground_block(
        sc, [(cx - ext, cz - ext), (cx + ext, cz - ext), (cx - ext, cz + ext), (cx + ext, cz + ext)]
    )
    if block is None:
        return
    rows, cols = block
    qx, qz = sc.wx[rows, cols], sc.depth[rows, cols]
    along = (qx - cx) * dx + (qz - cz) * dz
    across = -(qx - cx) * dz + (qz - cz) * dx
    canopy = np.hypot(along / (0.85 * ext), across / (0.85 * r)) < 1.0
    vis[rows, cols][canopy & ground[rows, cols]] = 0.0


def cos_incidence(sc: Scene, direction: np.ndarray) -> np.ndarray:
    """max(0, n . l) per pixel for a distant light in ``direction``."""
    per_code = np.clip(NORMALS @ direction, 0.0, None)
    return per_code[sc.normal]


def ambient_occlusion(sc: Scene) -> np.ndarray:
    """Cheap occlusion: dark contact patches under vehicles, darker bases of walls and objects."""
    ao = np.ones(sc.size, np.float32)
    vertical = (sc.normal != N_GROUND) & (sc.normal != N_SKY)
    ao[vertical] = 0.65 + 0.35 * np.clip(sc.wy[vertical] / 2.5, 0.0, 1.0)
    ground = sc.normal == N_GROUND
    for t in sc.layout.things:
        if t.kind not in ("car", "truck", "bus"):
            continue
        x0, x1, z0, z1 = _footprint(t)
        block = _ground_block(
            sc, [(x0 - 0.6, z0 - 0.6), (x1 + 0.6, z0 - 0.6), (x0 - 0.6, z1), (x1 + 0.6, z1)]
        )
        if block is None:
            continue
        rows, cols = block
        qx, qz = sc.wx[rows, cols], sc.depth[rows, cols]
        ddx = np.maximum(np.maximum(x0 - qx, qx - x1), 0.0)
        ddz = np.maximum(np.maximum(z0 - qz, qz - z1), 0.0)
        occ = 0.65 * np.exp(-np.hypot(ddx, ddz) / 0.35)
        sub = ao[rows, cols]
        g = ground[rows, cols]
        sub[g] = np.minimum(sub[g], 1.0 - occ[g])
    return ao


def point_light(
    sc: Scene,
    light: Light,
    intensity: float,
    reach: float,
    cone: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Add the irradiance of a point light (inverse square, Lambert, optional spot cone)."""
    H, W = sc.size
    if out is None:
        out = np.zeros((H, W, 3), np.float32)
    cam = sc.layout.camera
    zs = [max(light.z - reach, 0.8), light.z + reach]
    us, vs = [], []
    for x in (light.x - reach, light.x + reach):
        for z in zs:
            for y in (0.0, light.y + 1.0):
                u, v = cam.project(x, y, z)
                us.append(u)
                vs.append(v)
    c0, c1 = int(np.clip(np.floor(min(us) * W), 0, W)), int(np.clip(np.ceil(max(us) * W), 0, W))
    r0, r1 = int(np.clip(np.floor(min(vs) * H), 0, H)), int(np.clip(np.ceil(max(vs) * H), 0, H))
    if c1 <= c0 or r1 <= r0:
        return out
    rows, cols = slice(r0, r1), slice(c0, c1)
    solid = sc.depth[rows, cols] < SKY_DEPTH
    dx = light.x - sc.wx[rows, cols]
    dy = light.y - sc.wy[rows, cols]
    dz = light.z - sc.depth[rows, cols]
    dist2 = dx * dx + dy * dy + dz * dz + 2.0  # softened: nothing sits inside the lamp
    dist = np.sqrt(dist2)
    n = NORMALS[sc.normal[rows, cols]]
    ndotl = np.clip((n[..., 0] * dx + n[..., 1] * dy + n[..., 2] * dz) / dist, 0.0, None)
    fall = np.clip(1.0 - dist2 / (reach * reach), 0.0, 1.0) ** 2
    e = intensity * ndotl * fall / dist2
    if cone is not None:
        cosang = -(dx * cone[0] + dy * cone[1] + dz * cone[2]) / dist
        e = e * np.clip((cosang - 0.82) / 0.15, 0.0, 1.0) ** 2
    out[rows, cols] += (e * solid)[..., None] * light.color
    return out


def add_glows(
    sc: Scene,
    img: np.ndarray,
    lights: list[Light],
    gain: float,
    halo: float,
    halo_width: float = 6.0,
) -> None:
    """Bloom around visible light sources: a bright core plus a wide, faint halo."""
    H, W = sc.size
    cam = sc.layout.camera
    for light in lights:
        if light.z < 1.0:
            continue
        u, v = cam.project(light.x, light.y, light.z)
        px, py = u * W - 0.5, v * H - 0.5
        if not (-20 <= px < W + 20 and -20 <= py < H + 20):
            continue
        ix, iy = int(np.clip(round(px), 0, W - 1)), int(np.clip(round(py), 0, H - 1))
        if 0 <= px < W and 0 <= py < H and sc.depth[iy, ix] < light.z * 0.97 - 0.3:
            continue  # hidden behind something nearer
        core = max(light.size * F_V * H / light.z, 0.6)
        wide = core * halo_width + 1.5 * H / 256.0
        rad = int(np.ceil(3.0 * wide))
        rows = slice(max(iy - rad, 0), min(iy + rad + 1, H))
        cols = slice(max(ix - rad, 0), min(ix + rad + 1, W))
        yy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - py
        xx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - px
        r2 = xx * xx + yy * yy
        # Apparent brightness falls with distance more slowly than 1/z^2 (core size shrinks).
        level = gain * light.intensity * min(1.0, 12.0 / light.z) ** 0.5
        g = np.exp(-r2 / (2 * core * core)) * 2.0 + halo * np.exp(-r2 / (2 * wide * wide))
        img[rows, cols] += (level * g)[..., None] * light.color


def sky_gradient(sc: Scene, stops: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """Sky colour by elevation: ``stops`` are (t, rgb), t = 0 at the horizon, 1 at the top."""
    cam = sc.layout.camera
    t = np.clip((cam.v_h - sc.v[:, 0]) / max(cam.v_h, 1e-3), 0.0, 1.0)
    ts = np.array([s[0] for s in stops], np.float32)
    cols = np.stack([s[1] for s in stops]).astype(np.float32)
    rgb = np.stack([np.interp(t, ts, cols[:, c]) for c in range(3)], axis=-1)
    return np.broadcast_to(rgb[:, None, :], (*sc.size, 3)).astype(np.float32)


def clouds(sc: Scene, seed: int, scale: float = 1.0) -> np.ndarray:
    """Cloud density on a plane above the camera, so clouds shrink towards the horizon.

    Evaluated on sky pixels only (elsewhere 0.5): the sky is often a small part of a street.
    """
    cam = sc.layout.camera
    out = np.full(sc.size, 0.5, np.float32)
    sky = sc.sky
    if not sky.any():
        return out
    e = (np.maximum(cam.v_h - sc.v, 0.0) + 0.03) * np.ones((1, sc.size[1]), np.float32)
    e = e[sky]
    cx = (np.broadcast_to(sc.u, sc.size)[sky] - cam.u_v) / e
    cz = 1.0 / e
    footprint = 1.0 / (sc.size[0] * e * e)
    k = 0.6 * scale
    out[sky] = fbm(cx * k, cz * k, seed, octaves=5, footprint=footprint * k)
    return out


def koschmieder(sc: Scene, img: np.ndarray, beta: float, airlight: np.ndarray) -> np.ndarray:
    """I = J t + A (1 - t), t = exp(-beta d), d the per-pixel distance (sky: infinite)."""
    t = np.exp(-beta * sc.depth)[..., None]
    return img * t + airlight * (1.0 - t)


def tone_map(rad: np.ndarray, exposure: float) -> np.ndarray:
    """Soft-shoulder exposure then sRGB-like gamma, in [0, 1]."""
    x = 1.0 - np.exp(-exposure * np.maximum(rad, 0.0))
    return x ** (1.0 / 2.2)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
