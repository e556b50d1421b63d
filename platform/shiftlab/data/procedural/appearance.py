"""The six appearances: each is a light transport recipe on top of the same rasterised scene.

They differ the way real conditions differ (not as one colour transform of noon): where the
light comes from and what it leaves in shadow, which light sources are on, what the air does
with distance (Koschmieder), what falls through the air (rain streaks, snow flakes) and what
lies on the surfaces (wet mirrors, snow on everything facing up).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .layout import ROAD, SIDEWALK, TERRAIN, VEGETATION, srgb
from .lighting import (
    Sun,
    add_glows,
    ambient_occlusion,
    clouds,
    cos_incidence,
    koschmieder,
    make_sun,
    point_light,
    sky_gradient,
    sun_visibility,
    to_uint8,
    tone_map,
)
from .noise import fbm
from .raster import N_GROUND, Light, Scene

APPEARANCES: tuple[str, ...] = ("noon", "sunset", "night", "fog", "rain", "snow")

Renderer = Callable[[Scene, np.random.Generator], np.ndarray]

# Sensor noise (std, display units): one camera, so the same by day; gain raises it at night.
DAY_NOISE = 0.008
NIGHT_NOISE = 0.018


# ---------------------------------------------------------------- shared pieces


def _sky_view(sc: Scene) -> np.ndarray:
    """How much sky each surface sees: the ground most, walls and objects about half."""
    if "sky_view" not in sc.cache:
        f = np.where(sc.normal == N_GROUND, 1.0, 0.55).astype(np.float32)
        sc.cache["sky_view"] = f * ambient_occlusion(sc)
    return sc.cache["sky_view"]


def _sunlit(
    sc: Scene, albedo: np.ndarray, sun: Sun, ambient: np.ndarray, occluder_scale: float = 1.0
) -> np.ndarray:
    vis = sun_visibility(sc, sun, occluder_scale)
    direct = cos_incidence(sc, sun.direction) * vis
    # Light bounced off the sunlit ground reaches walls and objects from below.
    bounce = np.where(sc.normal == N_GROUND, 0.0, 0.12 * np.sin(sun.elevation) + 0.04)
    irr = ambient * _sky_view(sc)[..., None] + sun.color * (direct + bounce)[..., None]
    return albedo * irr


def _overcast(sc: Scene, albedo: np.ndarray, ambient: np.ndarray) -> np.ndarray:
    """Diffuse light from a uniform sky: no cast shadows, soft contact shadows only."""
    return albedo * (ambient * _sky_view(sc)[..., None])


def _composite_sky(sc: Scene, rad: np.ndarray, sky: np.ndarray) -> np.ndarray:
    return np.where(sc.sky[..., None], sky, rad)


def _lamp_lights(sc: Scene) -> list[Light]:
    return [light for light in sc.lights if light.kind == "lamp"]


def _vehicle_lights(sc: Scene) -> list[Light]:
    return [light for light in sc.lights if light.kind in ("head", "tail")]


def _artificial(sc: Scene, lamp_gain: float, car_gain: float) -> np.ndarray:
    """Irradiance from street lamps (pools under them) and headlights (beams on the road)."""
    if "lamps" not in sc.cache:
        lamps = np.zeros((*sc.size, 3), np.float32)
        cars = np.zeros((*sc.size, 3), np.float32)
        cone = np.array([0.0, -0.08, -1.0], np.float32)
        cone /= np.linalg.norm(cone)  # oncoming cars aim down the road, towards the camera
        for light in sc.lights:
            if light.kind == "lamp":
                point_light(sc, light, 22.0, reach=3.0 * light.y, out=lamps)
            elif light.kind == "head":
                point_light(sc, light, 40.0, reach=30.0, cone=cone, out=cars)
            elif light.kind == "tail":
                point_light(sc, light, 0.6, reach=3.0, out=cars)
        sc.cache["lamps"], sc.cache["cars"] = lamps, cars
    return lamp_gain * sc.cache["lamps"] + car_gain * sc.cache["cars"]


def _fbm_on(
    mask: np.ndarray, x: np.ndarray, y: np.ndarray, seed: int, octaves: int = 4, fill: float = 0.5
) -> np.ndarray:
    """Noise evaluated only where ``mask`` is set (the rest is ``fill``): saves most of the work."""
    out = np.full(mask.shape, fill, np.float32)
    if mask.any():
        out[mask] = fbm(
            np.broadcast_to(x, mask.shape)[mask],
            np.broadcast_to(y, mask.shape)[mask],
            seed,
            octaves=octaves,
        )
    return out


def _saturation(img: np.ndarray, amount: float) -> np.ndarray:
    lum = img @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    return lum[..., None] + amount * (img - lum[..., None])


def _finish(
    sc: Scene,
    rad: np.ndarray,
    rng: np.random.Generator,
    exposure: float,
    noise: float,
    white: np.ndarray | None = None,
) -> np.ndarray:
    if white is not None:
        rad = rad * white
    img = tone_map(rad, exposure)
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return to_uint8(img)


def _blue_sky(sc: Scene, seed: int) -> np.ndarray:
    sky = sky_gradient(
        sc, [(0.0, srgb(200, 222, 240)), (0.35, srgb(130, 178, 230)), (1.0, srgb(62, 120, 205))]
    )
    c = clouds(sc, seed)
    cover = np.clip((c - 0.52) / 0.15, 0.0, 1.0)[..., None]
    return (sky * (1 - cover) + srgb(248, 248, 250) * cover) * 1.35


# ---------------------------------------------------------------- appearances


def noon(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    sun = make_sun(rng, (45.0, 65.0), ahead=False, color=srgb(255, 248, 235) * 2.6)
    rad = _sunlit(sc, sc.albedo, sun, srgb(150, 175, 215) * 0.75)
    rad = _composite_sky(sc, rad, _blue_sky(sc, sc.layout.noise_seed + 101))
    rad = koschmieder(sc, rad, 0.0015, srgb(200, 220, 240))  # a little aerial perspective
    return _finish(sc, rad, rng, 1.0, DAY_NOISE)


def sunset(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    sun = make_sun(rng, (4.0, 11.0), ahead=True, color=srgb(255, 150, 60) * 4.5)
    # The glowing sky lights the shadowed parts pink-violet; the low sun rakes across the
    # street and stretches every shadow towards the camera.
    rad = _sunlit(sc, sc.albedo, sun, srgb(200, 150, 170) * 0.38, occluder_scale=0.12)
    # A few lamps come on at dusk.
    rad += sc.albedo * _artificial(sc, 0.25, 0.3)
    rad += sc.emit * 0.4
    cam = sc.layout.camera
    H, W = sc.size
    sky = (
        sky_gradient(
            sc,
            [
                (0.0, srgb(255, 185, 95)),
                (0.2, srgb(250, 130, 80)),
                (0.5, srgb(190, 95, 110)),
                (1.0, srgb(55, 55, 115)),
            ],
        )
        * 1.3
    )
    # The sun disc and its glow where the sun is in (or near) the frame.
    su = cam.u_v + 0.5 * 1.3 * sun.cx / sun.cz
    sv = cam.v_h - 1.3 * np.tan(sun.elevation) / sun.cz
    d = np.hypot((sc.u - su) * W / H, sc.v - sv)
    glow = 6.0 * np.exp(-((d / 0.025) ** 2)) + 1.6 * np.exp(-((d / 0.18) ** 2))
    c = clouds(sc, sc.layout.noise_seed + 202, 0.7)
    cover = np.clip((c - 0.5) / 0.2, 0.0, 1.0)[..., None]
    cloud_col = (
        srgb(250, 120, 100) * 0.9 + srgb(255, 200, 120) * np.exp(-((d / 0.3) ** 2))[..., None]
    )
    sky = sky * (1 - cover) + cloud_col * cover + (glow[..., None] * srgb(255, 210, 130))
    rad = _composite_sky(sc, rad, sky)
    # Warm haze: orange air light, stronger with distance; warmer higher up in the image.
    rad = koschmieder(sc, rad, 0.0035, srgb(240, 150, 90) * 0.9)
    height = np.clip((cam.v_h + 0.15 - sc.v) / 0.6, 0.0, 1.0)[..., None]
    rad = rad * (1.0 + height * np.array([0.25, 0.05, -0.2], np.float32))
    lights = [light for light in sc.lights if light.kind in ("head", "tail", "signal")]
    add_glows(sc, rad, lights, 0.25, 0.2)
    return _finish(sc, rad, rng, 1.25, DAY_NOISE)


def night(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    moon = srgb(70, 85, 120) * 0.035
    rad = _overcast(sc, sc.albedo, moon)
    rad += sc.albedo * _artificial(sc, 1.0, 1.0)
    rad = _saturation(rad, 0.45)  # rods, not cones: the unlit scene loses its colour
    H, W = sc.size
    window_col = np.where(
        (_fbm_on(sc.window > 0, sc.wy * 0.3, sc.depth * 0.05, sc.layout.noise_seed + 5, 2) > 0.5)[
            ..., None
        ],
        srgb(255, 200, 130),
        srgb(220, 225, 255),
    )
    rad += sc.window[..., None] * window_col * 0.6
    rad += sc.emit
    sky = sky_gradient(
        sc, [(0.0, srgb(60, 48, 45)), (0.25, srgb(22, 22, 35)), (1.0, srgb(4, 6, 14))]
    )
    # Stars: sparse points at normalised positions (the same sky at every resolution).
    n_stars = 160
    su, sv = rng.uniform(0, 1, n_stars), rng.uniform(0, 1, n_stars)
    bright = rng.uniform(0.05, 0.4, n_stars)
    xs = np.clip((su * W).astype(int), 0, W - 1)
    ys = np.clip((sv * H).astype(int), 0, H - 1)
    sky = sky.copy()
    sky[ys, xs] += bright[:, None]
    rad = _composite_sky(sc, rad, sky)
    add_glows(sc, rad, sc.lights, 0.6, 0.1)
    return _finish(sc, rad, rng, 1.25, NIGHT_NOISE)


def fog(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    airlight = srgb(205, 208, 212) * 1.0
    rad = _overcast(sc, sc.albedo, srgb(215, 220, 225) * 1.1)
    rad += sc.emit * 0.3
    rad = _composite_sky(sc, rad, np.broadcast_to(airlight, (*sc.size, 3)))
    visibility = float(rng.uniform(35.0, 90.0))  # metres; Koschmieder: V = 3.912 / beta
    rad = koschmieder(sc, rad, 3.912 / visibility, airlight)
    # Light sources scatter into wide halos in fog.
    lights = [light for light in sc.lights if light.kind in ("head", "tail", "signal", "lamp")]
    add_glows(sc, rad, lights, 0.15, 0.35, halo_width=10.0)
    return _finish(sc, rad, rng, 1.1, DAY_NOISE)


def _streaks(sc: Scene, rng: np.random.Generator, angle: float) -> np.ndarray:
    """Rain: random drops smeared into slanted lines (the camera's exposure time)."""
    # scipy is imported where rain and snow need it: rendering noon or night does not.
    from scipy import ndimage, signal

    H, W = sc.size
    layer = np.zeros((H, W), np.float32)
    for density, length, weight in ((0.006, 0.035, 0.8), (0.0012, 0.1, 1.0)):
        n = int(density * H * W)
        ys = rng.integers(0, H, n)
        xs = rng.integers(0, W, n)
        imp = np.zeros((H, W), np.float32)
        np.add.at(imp, (ys, xs), rng.uniform(0.4, 1.0, n).astype(np.float32))
        L = max(int(length * H), 3)
        k = np.zeros((L * 2 + 1, L * 2 + 1), np.float32)
        for s in np.linspace(-0.5, 0.5, 4 * L):
            k[int(round(L + s * L * np.cos(angle))), int(round(L + s * L * np.sin(angle)))] = 1.0
        layer += weight * signal.fftconvolve(imp, k, mode="same").astype(np.float32)
    layer = ndimage.gaussian_filter(layer, 0.5 * H / 256.0)
    return np.clip(layer, 0.0, 1.0)


def _mirror(sc: Scene, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planar reflection on the ground: each road pixel mirrors the scene about the foot of
    the nearest upright surface above it in its column (where that surface meets the road)."""
    H, W = sc.size
    upright = sc.normal != N_GROUND
    rows = np.arange(H)[:, None]
    last = np.where(upright, rows, -1)
    foot = np.maximum.accumulate(last, axis=0)  # lowest upright row at or above each pixel
    src = np.clip(2 * foot - rows, 0, H - 1)
    src = np.where(foot < 0, 0, src)
    refl = np.take_along_axis(img, np.broadcast_to(src[..., None], (H, W, 3)), axis=0)
    gap = np.where(foot < 0, H, rows - foot).astype(np.float32)
    return refl, gap


def rain(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    H, W = sc.size
    wet = np.ones(sc.size, np.float32)
    wet[sc.label == ROAD] = 0.5
    wet[sc.label == SIDEWALK] = 0.65
    wet[(sc.label != ROAD) & (sc.label != SIDEWALK)] = 0.85
    albedo = sc.albedo * wet[..., None]
    rad = _overcast(sc, albedo, srgb(165, 172, 182) * 0.75)
    rad += albedo * _artificial(sc, 0.4, 0.7)
    rad += sc.emit * 0.6
    sky = sky_gradient(sc, [(0.0, srgb(165, 170, 176)), (1.0, srgb(110, 115, 124))])
    c = clouds(sc, sc.layout.noise_seed + 303, 1.5)[..., None]
    sky = sky * (0.75 + 0.5 * c) * 0.9
    rad = _composite_sky(sc, rad, sky)
    add_glows(sc, rad, _vehicle_lights(sc) + _lamp_lights(sc), 0.35, 0.25, halo_width=7.0)
    # Wet ground mirrors the scene; more at grazing angles (Fresnel) and in puddles.
    refl, gap = _mirror(sc, rad)
    refl = ndimage.uniform_filter1d(refl, size=max(int(0.02 * H), 1), axis=0)
    cam = sc.layout.camera
    grazing = np.broadcast_to(
        np.clip(1.0 - (sc.v - cam.v_h) / (1.0 - cam.v_h), 0.0, 1.0) ** 2, sc.size
    )
    puddle = np.clip(
        (_fbm_on(sc.label == ROAD, sc.wx * 0.4, sc.depth * 0.4, sc.layout.noise_seed + 9) - 0.55)
        / 0.08,
        0.0,
        1.0,
    )
    k = np.zeros(sc.size, np.float32)
    road = sc.label == ROAD
    k[road] = (0.08 + 0.6 * grazing + 0.35 * puddle)[road]
    walk = sc.label == SIDEWALK
    k[walk] = (0.1 + 0.2 * grazing)[walk]
    # Far below its source a reflection is from something the simple mirror does not know.
    k = k * np.exp(-gap / (0.3 * H))
    k = np.clip(k, 0.0, 0.85)[..., None]
    rad = rad * (1 - k) + refl * k
    rad = koschmieder(sc, rad, 3.912 / float(rng.uniform(250.0, 450.0)), srgb(160, 165, 172))
    img = tone_map(rad, 1.15)
    s = _streaks(sc, rng, np.deg2rad(rng.uniform(-22.0, 22.0)))[..., None]
    img = img * (1 - 0.6 * s) + 0.88 * 0.6 * s
    img = img + rng.normal(0.0, DAY_NOISE, img.shape).astype(np.float32)
    return to_uint8(img)


def _flakes(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    """Snow: flakes of three sizes; the large near ones are soft (out of focus)."""
    from scipy import ndimage

    H, W = sc.size
    scale = H / 256.0
    layer = np.zeros((H, W), np.float32)
    for density, sigma, alpha in ((0.024, 0.55, 0.9), (0.005, 1.1, 0.95), (0.0003, 3.0, 0.6)):
        n = max(int(density * H * W), 1)
        imp = np.zeros((H, W), np.float32)
        np.add.at(
            imp,
            (rng.integers(0, H, n), rng.integers(0, W, n)),
            rng.uniform(0.6, 1.0, n).astype(np.float32),
        )
        s = sigma * scale
        blurred = ndimage.gaussian_filter(imp, s) * (2 * np.pi * s * s)
        layer = np.maximum(layer, alpha * np.clip(blurred, 0.0, 1.0))
    return layer


def snow(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    lay = sc.layout
    n = _fbm_on(~sc.sky, sc.wx * 0.9 + sc.wy, sc.depth * 0.9 + sc.wy, lay.noise_seed + 404, 3)
    cover = np.zeros(sc.size, np.float32)
    cover[sc.label == SIDEWALK] = 0.9
    cover[sc.label == TERRAIN] = 0.97
    road = sc.label == ROAD
    # Road: white along the kerbs and between lanes, slush in the wheel tracks.
    x = sc.wx
    edge = np.minimum(np.abs(x - lay.road_left), np.abs(x - lay.road_right))
    track = np.full(sc.size, 9.0, np.float32)
    for xc, _ in lay.lanes:
        for off in (-0.8, 0.8):
            track = np.minimum(track, np.abs(x - xc - off))
    road_cover = np.clip(
        0.35 + 0.6 * np.clip(1.2 - edge, 0, 1) - 0.5 * np.clip(0.45 - track, 0, 1) / 0.45, 0.0, 1.0
    )
    cover[road] = road_cover[road]
    cover = np.maximum(cover, sc.top * 0.95)
    cover[sc.label == VEGETATION] = np.maximum(cover, 0.5 * sc.top)[sc.label == VEGETATION]
    cover = np.clip(cover * (0.55 + 0.9 * n), 0.0, 1.0) * (sc.normal != 4)
    slush = road & (track < 0.45)
    albedo = sc.albedo * np.where(slush, 0.6, 1.0)[..., None]
    # Fresh snow is not flat white: footprints, drifts and sparkle give it a fine grain.
    fp = sc.depth / (1.3 * sc.size[0])
    grain = fbm(
        sc.wx * 6.0 + sc.wy * 3.0,
        sc.depth * 6.0,
        lay.noise_seed + 405,
        octaves=3,
        footprint=fp * 6.0,
    )
    snow_white = srgb(238, 240, 246) * (0.78 + 0.4 * grain)[..., None]
    albedo = albedo * (1 - cover[..., None]) + snow_white * cover[..., None]
    rad = _overcast(sc, albedo, srgb(215, 222, 235) * 1.15)
    rad += sc.emit * 0.5
    sky = sky_gradient(sc, [(0.0, srgb(190, 194, 200)), (1.0, srgb(140, 146, 160))])
    rad = _composite_sky(sc, rad, sky)
    rad = koschmieder(sc, rad, 3.912 / float(rng.uniform(220.0, 450.0)), srgb(190, 195, 204))
    add_glows(sc, rad, _vehicle_lights(sc), 0.2, 0.25, halo_width=8.0)
    img = tone_map(rad * np.array([0.95, 0.98, 1.05], np.float32), 1.1)
    f = _flakes(sc, rng)[..., None]
    img = img * (1 - f) + 0.97 * f
    img = img + rng.normal(0.0, DAY_NOISE, img.shape).astype(np.float32)
    return to_uint8(img)


RENDERERS: dict[str, Renderer] = {
    "noon": noon,
    "sunset": sunset,
    "night": night,
    "fog": fog,
    "rain": rain,
    "snow": snow,
}
