"""Random street layouts in world coordinates (metres), independent of the output resolution.

The world: X to the right, Y up (0 = ground), Z forward from the camera. A straight road runs
along Z; sidewalks, optional front yards (terrain with a wall, fence or hedge) and a row of
building facades line both sides, a taller back row stands behind gaps. Objects (cars, people,
poles, ...) stand on the ground. Everything is drawn from ``rng_for(seed, "layout", index)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shiftlab.utils.seeding import derive_seed, rng_for

# Focal lengths in normalised image units: v (rows) spans [0, 1] over the image height and u
# (columns) [0, 1] over its width; F_U = F_V * 0.5 gives square pixels at the nominal 1:2 aspect.
F_V = 1.3
F_U = F_V * 0.5
SKY_DEPTH = 1.0e4
Z_EXTENT = 450.0  # how far the street is populated with buildings

# Cityscapes labelIds.
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 32, 33


def srgb(*rgb: float) -> np.ndarray:
    """Linear reflectance of an 8-bit sRGB colour (shading happens in linear light)."""
    return (np.asarray(rgb, dtype=np.float32) / 255.0) ** 2.2


@dataclass(frozen=True)
class Camera:
    height: float
    u_v: float  # vanishing point column
    v_h: float  # horizon row

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        return self.u_v + F_U * x / z, self.v_h + F_V * (self.height - y) / z


@dataclass
class Facade:
    """A row of buildings on the plane X = x, one entry per building along Z."""

    x: float
    z0: np.ndarray
    z1: np.ndarray
    height: np.ndarray
    color: np.ndarray  # (n, 3) linear
    floor_h: np.ndarray
    col_w: np.ndarray
    win_w: np.ndarray  # fraction of a column
    win_h: np.ndarray  # fraction of a floor
    shop: np.ndarray  # bool: glass shop front on the ground floor
    seed: int

    def index_at(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.searchsorted(self.z0, z, side="right") - 1
        idx_c = np.clip(idx, 0, len(self.z0) - 1)
        inside = (idx >= 0) & (z < self.z1[idx_c])
        return idx_c, inside

    def height_at(self, z: np.ndarray) -> np.ndarray:
        idx, inside = self.index_at(z)
        return np.where(inside, self.height[idx], 0.0).astype(np.float32)


@dataclass
class Barrier:
    """Walls, fences and hedges along the outer edge of a sidewalk (plane X = x)."""

    x: float
    z0: np.ndarray
    z1: np.ndarray
    label: np.ndarray  # WALL, FENCE or VEGETATION
    height: np.ndarray
    color: np.ndarray


@dataclass
class Thing:
    """An object standing on the ground at (x, z): z is its near end, x its centre."""

    kind: str
    x: float
    z: float
    w: float
    h: float
    length: float = 0.3
    colors: np.ndarray = field(default_factory=lambda: np.zeros((8, 3), np.float32))
    facing: int = 1  # +1: seen from behind (driving away), -1: seen from the front
    moving: bool = False
    variant: int = 0
    arm: float = 0.0  # street lamp arm length, signed towards the road
    seed: int = 0


@dataclass
class Layout:
    index: int
    seed: int
    camera: Camera
    road_left: float
    road_right: float
    lanes: list[tuple[float, int]]  # (centre x, direction)
    lane_w: float
    walk_left: float  # outer edge of the left sidewalk (x < road_left)
    walk_right: float
    facades: list[Facade]
    barriers: list[Barrier]
    things: list[Thing]
    road_color: np.ndarray
    walk_color: np.ndarray
    terrain_color: np.ndarray
    crosswalk_z: float | None
    noise_seed: int


FACADE_COLORS = [
    (196, 180, 150),
    (170, 160, 150),
    (150, 82, 62),
    (215, 210, 200),
    (122, 112, 104),
    (184, 150, 110),
    (140, 140, 148),
    (205, 190, 160),
    (110, 75, 60),
    (160, 170, 175),
]
CAR_COLORS = [
    (20, 20, 22),
    (230, 230, 232),
    (150, 152, 158),
    (170, 20, 25),
    (25, 50, 120),
    (60, 65, 70),
    (200, 200, 190),
    (30, 80, 50),
    (210, 160, 40),
    (90, 30, 30),
]
CLOTHES = [
    (30, 30, 35),
    (60, 70, 110),
    (140, 30, 30),
    (200, 200, 200),
    (90, 80, 60),
    (40, 90, 60),
    (180, 140, 60),
    (120, 60, 120),
    (70, 70, 70),
    (20, 40, 80),
]
SKIN = [(230, 190, 160), (200, 150, 110), (140, 95, 65), (90, 60, 40)]


def _pick(rng: np.random.Generator, table: list[tuple[int, int, int]], jitter: float = 12.0):
    base = np.asarray(table[int(rng.integers(len(table)))], dtype=np.float32)
    return srgb(*np.clip(base + rng.normal(0.0, jitter, 3), 0, 255))


def _facade_row(rng: np.random.Generator, x: float, back: bool, seed: int) -> Facade:
    z0s, z1s, hs, cols, fh, cw, ww, wh, shop = [], [], [], [], [], [], [], [], []
    z = float(rng.uniform(-15.0, 2.0))
    while z < Z_EXTENT:
        if not back and rng.random() < 0.22:
            z += float(rng.uniform(4.0, 14.0))  # a gap: sky, trees or the back row shows
        length = float(rng.uniform(15.0, 45.0) if back else rng.uniform(8.0, 30.0))
        z0s.append(z)
        z1s.append(z + length)
        if back:
            hs.append(float(rng.uniform(18.0, 60.0)))
        else:
            hs.append(float(rng.uniform(8.0, 28.0) if rng.random() > 0.1 else rng.uniform(30, 45)))
        cols.append(_pick(rng, FACADE_COLORS, 14.0))
        fh.append(float(rng.uniform(2.9, 3.8)))
        cw.append(float(rng.uniform(2.2, 4.0)))
        ww.append(float(rng.uniform(0.35, 0.65)))
        wh.append(float(rng.uniform(0.4, 0.65)))
        shop.append(bool(rng.random() < (0.0 if back else 0.45)))
        z += length
    return Facade(
        x=x,
        z0=np.asarray(z0s, np.float32),
        z1=np.asarray(z1s, np.float32),
        height=np.asarray(hs, np.float32),
        color=np.stack(cols).astype(np.float32),
        floor_h=np.asarray(fh, np.float32),
        col_w=np.asarray(cw, np.float32),
        win_w=np.asarray(ww, np.float32),
        win_h=np.asarray(wh, np.float32),
        shop=np.asarray(shop, bool),
        seed=seed,
    )


def _barriers(rng: np.random.Generator, x: float) -> Barrier:
    z0s, z1s, labels, hs, cols = [], [], [], [], []
    z = float(rng.uniform(-5.0, 10.0))
    while z < 160.0:
        length = float(rng.uniform(6.0, 40.0))
        kind = int(rng.choice([WALL, FENCE, VEGETATION, 0], p=[0.3, 0.3, 0.25, 0.15]))
        if kind:
            z0s.append(z)
            z1s.append(z + length)
            labels.append(kind)
            if kind == WALL:
                hs.append(float(rng.uniform(0.6, 1.8)))
                cols.append(_pick(rng, [(170, 165, 155), (140, 120, 100), (190, 185, 175)]))
            elif kind == FENCE:
                hs.append(float(rng.uniform(1.0, 2.0)))
                cols.append(_pick(rng, [(90, 90, 95), (120, 100, 70), (60, 70, 60)]))
            else:
                hs.append(float(rng.uniform(0.8, 1.6)))
                cols.append(_pick(rng, [(55, 90, 40), (45, 75, 35)], 8.0))
        z += length
    if not z0s:
        z0s, z1s, labels, hs, cols = [0.0], [0.0], [WALL], [0.0], [srgb(0, 0, 0)]
    return Barrier(
        x=x,
        z0=np.asarray(z0s, np.float32),
        z1=np.asarray(z1s, np.float32),
        label=np.asarray(labels, np.uint8),
        height=np.asarray(hs, np.float32),
        color=np.stack(cols).astype(np.float32),
    )


def _vehicle(rng: np.random.Generator, x: float, z: float, facing: int, moving: bool) -> Thing:
    r = rng.random()
    if r < 0.07:
        kind, w, h, length = "bus", 2.55, 3.2, 12.0
    elif r < 0.16:
        kind, w, h, length = "truck", 2.4, float(rng.uniform(2.8, 3.6)), float(rng.uniform(6, 9))
    else:
        kind, w, h, length = (
            "car",
            float(rng.uniform(1.7, 1.95)),
            float(rng.uniform(1.4, 1.75)),
            4.5,
        )
    colors = np.stack(
        [
            _pick(rng, CAR_COLORS, 10.0),  # 0 body
            srgb(20, 22, 26),  # 1 tyres
            srgb(35, 45, 55),  # 2 glass
            srgb(200, 30, 25) if facing > 0 else srgb(235, 235, 220),  # 3 lamps
            srgb(220, 220, 215),  # 4 plate
            srgb(30, 30, 32),  # 5 bumper / grille
            _pick(
                rng, [(235, 235, 235), (200, 60, 40), (250, 200, 40), (40, 90, 160)], 8.0
            ),  # 6 box
            srgb(120, 122, 125),  # 7 rims
        ]
    )
    return Thing(kind, x, z, w, h, length, colors, facing, moving, 0, 0.0, int(rng.integers(2**31)))


def _person(rng: np.random.Generator, x: float, z: float, kind: str = "person") -> Thing:
    h = float(rng.uniform(1.55, 1.92))
    colors = np.stack(
        [
            _pick(rng, SKIN, 8.0),  # 0 skin
            _pick(rng, CLOTHES),  # 1 top
            _pick(rng, CLOTHES),  # 2 trousers
            _pick(rng, [(30, 22, 15), (90, 60, 30), (150, 120, 70), (60, 60, 60)], 6.0),  # 3 hair
            srgb(25, 25, 25),  # 4 shoes / tyres
            _pick(rng, CAR_COLORS, 10.0),  # 5 bike frame
            srgb(120, 122, 125),  # 6 metal
            srgb(40, 40, 40),  # 7 seat
        ]
    )
    variant = int(rng.integers(4))
    w = 0.5 * h if kind == "person" else 2.0
    return Thing(
        kind,
        x,
        z,
        w,
        h,
        0.4 if kind == "person" else 1.8,
        colors,
        1,
        kind != "bicycle",
        variant,
        0.0,
        int(rng.integers(2**31)),
    )


def _traffic_light_colors(state: int) -> np.ndarray:
    """Pole, housing, then red/amber/green lenses; the lit one (``state``) is bright."""
    lit = [srgb(255, 40, 30), srgb(255, 170, 20), srgb(40, 255, 120)]
    dim = [srgb(70, 20, 18), srgb(70, 50, 15), srgb(15, 60, 35)]
    lenses = [lit[i] if i == state else dim[i] for i in range(3)]
    return np.stack([srgb(80, 82, 85), srgb(25, 25, 25), *lenses])


@dataclass(frozen=True)
class _Street:
    """The cross-section of one street: lanes, curbs and sidewalk edges (x in metres)."""

    road_left: float
    road_right: float
    lanes: list[tuple[float, int]]  # (lane centre x, direction)
    lane_w: float
    walk_left: float
    walk_right: float


def _street(rng: np.random.Generator) -> _Street:
    n_lanes = int(rng.choice([2, 2, 3, 4]))
    lane_w = float(rng.uniform(3.0, 3.6))
    one_way = rng.random() < 0.25
    directions = (
        [1] * n_lanes if one_way else [-1] * (n_lanes // 2) + [1] * (n_lanes - n_lanes // 2)
    )
    own = [i for i, d in enumerate(directions) if d > 0]
    cam_lane = int(rng.choice(own))
    road_left = -(cam_lane + 0.5) * lane_w + float(rng.normal(0.0, 0.25))
    road_right = road_left + n_lanes * lane_w
    lanes = [(road_left + (i + 0.5) * lane_w, directions[i]) for i in range(n_lanes)]
    walk_left = road_left - float(rng.uniform(2.0, 4.5))
    walk_right = road_right + float(rng.uniform(2.0, 4.5))
    return _Street(road_left, road_right, lanes, lane_w, walk_left, walk_right)


def _buildings(
    rng: np.random.Generator, st: _Street, seed: int, layout_index: int
) -> tuple[list[Facade], list[Barrier], list[tuple[float, float]]]:
    """Facade rows (front and, often, back), and front-yard barriers and terrain strips."""
    facades: list[Facade] = []
    barriers: list[Barrier] = []
    yards: list[tuple[float, float]] = []  # (inner x, outer x) of the terrain strip per side
    for side, walk in ((-1, st.walk_left), (1, st.walk_right)):
        setback = 0.0 if rng.random() < 0.5 else float(rng.uniform(2.5, 9.0))
        front_x = walk + side * setback
        facades.append(_facade_row(rng, front_x, False, derive_seed(seed, layout_index, side)))
        if rng.random() < 0.75:
            back_x = front_x + side * float(rng.uniform(12.0, 30.0))
            facades.append(_facade_row(rng, back_x, True, derive_seed(seed, layout_index, side, 2)))
        if setback > 0:
            barriers.append(_barriers(rng, walk))
            yards.append((walk, front_x))
    return facades, barriers, yards


def _traffic(rng: np.random.Generator, st: _Street) -> list[Thing]:
    """Moving vehicles in every lane, and cars parked along the curbs."""
    things: list[Thing] = []
    for x_c, d in st.lanes:
        z = float(rng.uniform(7.0, 20.0))
        if abs(x_c) < 0.5 * st.lane_w:  # our own lane: keep the first car some way ahead
            z += 6.0
        while z < 160.0:
            things.append(_vehicle(rng, x_c + float(rng.normal(0, 0.25)), z, d, True))
            z += things[-1].length + float(rng.uniform(6.0, 45.0))
    for side, edge in ((-1, st.road_left), (1, st.road_right)):
        if rng.random() < 0.7:
            z = float(rng.uniform(3.0, 12.0))
            while z < 90.0:
                if rng.random() < 0.8:
                    x = edge - side * float(rng.uniform(1.05, 1.3))
                    things.append(
                        _vehicle(rng, x, z, 1 if side > 0 else int(rng.choice([-1, 1])), False)
                    )
                    z += things[-1].length + float(rng.uniform(0.8, 2.5))
                else:
                    z += float(rng.uniform(5.0, 15.0))
    return things


def _people(rng: np.random.Generator, st: _Street) -> list[Thing]:
    """Pedestrians on the sidewalks, riders and motorcycles on the road, cyclists."""
    things: list[Thing] = []
    for _ in range(int(rng.integers(3, 12))):
        side = int(rng.choice([-1, 1]))
        lo, hi = (st.walk_left, st.road_left) if side < 0 else (st.road_right, st.walk_right)
        things.append(
            _person(rng, float(rng.uniform(lo + 0.4, hi - 0.4)), float(rng.uniform(4, 70)))
        )
    for _ in range(int(rng.integers(0, 3))):
        x = (
            st.road_right - float(rng.uniform(0.6, 1.5))
            if rng.random() < 0.7
            else float(rng.uniform(st.road_left + 1, st.road_right - 1))
        )
        kind = "motorcycle" if rng.random() < 0.35 else "rider"
        things.append(_person(rng, x, float(rng.uniform(6, 50)), kind))
    for _ in range(int(rng.integers(0, 3))):
        side = int(rng.choice([-1, 1]))
        lo, hi = (st.walk_left, st.road_left) if side < 0 else (st.road_right, st.walk_right)
        things.append(
            _person(
                rng, float(rng.uniform(lo + 0.8, hi - 0.8)), float(rng.uniform(4, 40)), "bicycle"
            )
        )
    return things


def _street_furniture(rng: np.random.Generator, st: _Street) -> tuple[list[Thing], float | None]:
    """Street lamps (arms over the road), signs, and traffic lights at a crosswalk (its z)."""
    things: list[Thing] = []
    for side, edge in ((-1, st.road_left), (1, st.road_right)):
        if rng.random() < 0.8:
            z = float(rng.uniform(4.0, 18.0))
            spacing = float(rng.uniform(18.0, 32.0))
            height = float(rng.uniform(6.5, 9.0))
            while z < 220.0:
                things.append(
                    Thing(
                        "lamp",
                        edge - side * 0.6,
                        z,
                        0.3,
                        height,
                        0.3,
                        np.stack([srgb(95, 98, 102), srgb(240, 235, 210)]),
                        arm=-side * 1.6,
                    )
                )
                z += spacing
    for _ in range(int(rng.integers(1, 5))):
        side = int(rng.choice([-1, 1]))
        edge = st.road_left if side < 0 else st.road_right
        variant = int(rng.integers(4))
        plate = [(200, 30, 30), (30, 70, 160), (240, 190, 30), (30, 110, 60)][variant]
        things.append(
            Thing(
                "sign",
                edge - side * float(rng.uniform(0.4, 1.0)),
                float(rng.uniform(5, 60)),
                0.75,
                float(rng.uniform(2.2, 3.0)),
                0.1,
                np.stack([srgb(110, 112, 115), srgb(*plate), srgb(240, 240, 240)]),
                variant=variant,
            )
        )
    crosswalk_z = None
    if rng.random() < 0.65:
        crosswalk_z = float(rng.uniform(12.0, 38.0))
        state = int(rng.integers(3))
        for side, edge in ((-1, st.road_left), (1, st.road_right)):
            things.append(
                Thing(
                    "traffic_light",
                    edge - side * 0.5,
                    crosswalk_z + 4.0,
                    0.4,
                    float(rng.uniform(3.2, 4.5)),
                    0.3,
                    _traffic_light_colors(state),
                    variant=state,
                )
            )
    return things, crosswalk_z


def _trees(rng: np.random.Generator, st: _Street, yards: list[tuple[float, float]]) -> list[Thing]:
    """Trees in the front yards, or on the sidewalk near the curb."""
    things: list[Thing] = []
    for side in (-1, 1):
        if rng.random() >= 0.7:
            continue
        edge = st.road_left if side < 0 else st.road_right
        yard = [y for y in yards if np.sign(y[0]) == side]
        z = float(rng.uniform(2.0, 14.0))
        spacing = float(rng.uniform(7.0, 16.0))
        while z < 200.0:
            x = (
                float(rng.uniform(min(yard[0]), max(yard[0])))
                if yard
                else edge - side * float(rng.uniform(1.0, 1.6))
            )
            r = float(rng.uniform(1.6, 3.4))
            things.append(
                Thing(
                    "tree",
                    x,
                    z,
                    2 * r,
                    float(rng.uniform(2.0, 3.5)) + 2 * r,
                    0.4,
                    np.stack(
                        [
                            _pick(rng, [(60, 90, 35), (45, 80, 40), (85, 105, 40)], 10),
                            srgb(70, 55, 40),
                        ]
                    ),
                    seed=int(rng.integers(2**31)),
                )
            )
            z += spacing * float(rng.uniform(0.7, 1.3))
    return things


def sample_layout(layout_index: int, seed: int) -> Layout:
    """One street scene; every draw comes from one generator, in a fixed order (the parts
    below are drawn in sequence), so a layout index always gives the same scene."""
    rng = rng_for(seed, "layout", layout_index)
    cam = Camera(
        float(rng.uniform(1.3, 1.8)), float(rng.uniform(0.38, 0.62)), float(rng.uniform(0.36, 0.47))
    )
    st = _street(rng)
    facades, barriers, yards = _buildings(rng, st, seed, layout_index)
    things = _traffic(rng, st) + _people(rng, st)
    furniture, crosswalk_z = _street_furniture(rng, st)
    things += furniture + _trees(rng, st, yards)
    road_left, road_right, lanes, lane_w = st.road_left, st.road_right, st.lanes, st.lane_w
    walk_left, walk_right = st.walk_left, st.walk_right
    return Layout(
        index=layout_index,
        seed=seed,
        camera=cam,
        road_left=road_left,
        road_right=road_right,
        lanes=lanes,
        lane_w=lane_w,
        walk_left=walk_left,
        walk_right=walk_right,
        facades=facades,
        barriers=barriers,
        things=things,
        road_color=_pick(rng, [(78, 78, 82), (95, 92, 90), (66, 68, 72)], 5.0),
        walk_color=_pick(rng, [(165, 160, 150), (150, 140, 135), (180, 170, 160)], 6.0),
        terrain_color=_pick(rng, [(95, 120, 55), (120, 125, 65), (105, 100, 70)], 8.0),
        crosswalk_z=crosswalk_z,
        noise_seed=derive_seed(seed, "noise", layout_index) & 0x7FFFFFFF,
    )
