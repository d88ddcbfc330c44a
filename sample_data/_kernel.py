"""Numba kernel that renders the synthetic H&E texture from absolute level-0 coordinates.

Everything is a pure function of the (level-0) pixel position and a 31-bit salt derived from
the seed, so any tile of any level can be rendered independently and tiles are seamless.
"""

from __future__ import annotations

import numpy as np
from numba import njit

CELL: float = 18.0  # nucleus grid cell (level-0 px); at most one nucleus centred in each cell
MEAN_NUCLEUS_AREA: float = 0.299  # E[pi * rx * ry] / CELL**2 for r in U(4, 8), e in U(.65, 1)
THRESHOLD: float = 0.535  # 60% quantile of the mask over many seeds -> ~40% tissue
EDGE_WIDTH: float = 0.012  # mask units over which tissue fades into background


@njit(nogil=True, cache=False, inline="always")
def _hash(ix: int, iy: int, salt: int) -> int:
    """32-bit integer hash of a lattice point (all products stay inside int64)."""
    h = (ix * 0x27D4EB2D + iy * 0x165667B1 + salt * 0x3C6EF35F + 0x7F4A7C15) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x68E31DA5) & 0xFFFFFFFF
    h ^= h >> 16
    return h


@njit(nogil=True, cache=False)
def _axis(coords: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Lattice index (relative to i0) and smoothstep weight of each coordinate."""
    n = coords.shape[0]
    idx = np.empty(n, np.int64)
    wt = np.empty(n, np.float64)
    i0 = int(np.floor(coords[0] / period))
    imax = i0
    for k in range(n):
        f = coords[k] / period
        i = int(np.floor(f))
        t = f - i
        idx[k] = i - i0
        wt[k] = t * t * (3.0 - 2.0 * t)
        imax = max(imax, i)
    return idx, wt, i0, imax - i0 + 2


@njit(nogil=True, cache=False)
def _lattice(i0: int, ni: int, j0: int, nj: int, salt: int) -> np.ndarray:
    table = np.empty((nj, ni), np.float64)
    for j in range(nj):
        for i in range(ni):
            table[j, i] = _hash(i0 + i, j0 + j, salt) * (1.0 / 4294967296.0)
    return table


@njit(nogil=True, cache=False)
def _field_direct(
    out: np.ndarray,
    ci: np.ndarray,
    sx: np.ndarray,
    i0: int,
    rj: np.ndarray,
    sy: np.ndarray,
    j0: int,
    salt: int,
    weight: float,
) -> None:
    scale = 1.0 / 4294967296.0
    for r in range(rj.shape[0]):
        j = rj[r] + j0
        b = sy[r]
        for c in range(ci.shape[0]):
            i = ci[c] + i0
            a = sx[c]
            v00 = _hash(i, j, salt) * scale
            v10 = _hash(i + 1, j, salt) * scale
            v01 = _hash(i, j + 1, salt) * scale
            v11 = _hash(i + 1, j + 1, salt) * scale
            top = v00 + (v10 - v00) * a
            bot = v01 + (v11 - v01) * a
            out[r, c] += weight * (top + (bot - top) * b)


@njit(nogil=True, cache=False)
def _field_acc(
    out: np.ndarray, us: np.ndarray, vs: np.ndarray, px: float, py: float, salt: int, weight: float
) -> None:
    """Add ``weight`` x smooth value noise in [0, 1) sampled on the grid us x vs to ``out``."""
    ci, sx, i0, ni = _axis(us, px)
    rj, sy, j0, nj = _axis(vs, py)
    if ni * nj > 4 * us.shape[0] * vs.shape[0]:
        # period below the sampling step: hash the corners directly instead of tabulating a
        # lattice far larger than the output (same values, so tiles stay seamless)
        _field_direct(out, ci, sx, i0, rj, sy, j0, salt, weight)
        return
    table = _lattice(i0, ni, j0, nj, salt)
    for r in range(vs.shape[0]):
        j = rj[r]
        b = sy[r]
        for c in range(us.shape[0]):
            i = ci[c]
            a = sx[c]
            top = table[j, i] + (table[j, i + 1] - table[j, i]) * a
            bot = table[j + 1, i] + (table[j + 1, i + 1] - table[j + 1, i]) * a
            out[r, c] += weight * (top + (bot - top) * b)


@njit(nogil=True, cache=False)
def _field(us: np.ndarray, vs: np.ndarray, px: float, py: float, salt: int) -> np.ndarray:
    out = np.zeros((vs.shape[0], us.shape[0]), np.float64)
    _field_acc(out, us, vs, px, py, salt, 1.0)
    return out


@njit(nogil=True, cache=False)
def tissue_mask(us: np.ndarray, vs: np.ndarray, salt: int) -> np.ndarray:
    """Low-frequency fractal value noise; tissue where it exceeds the calibrated threshold."""
    m = np.zeros((vs.shape[0], us.shape[0]), np.float64)
    _field_acc(m, us, vs, 3200.0, 3200.0, salt + 1, 0.58)
    _field_acc(m, us, vs, 1100.0, 1100.0, salt + 2, 0.28)
    _field_acc(m, us, vs, 300.0, 300.0, salt + 3, 0.14)
    return m


@njit(nogil=True, cache=False, inline="always")
def _nuclei(u: float, v: float, ds: float, p: float, salt: int) -> float:
    """Coverage in [0, 1] of pixel (u, v) by elliptical nuclei (radius 4-8 px at level 0).

    Each grid cell holds a nucleus with probability ``p``, centred anywhere in the cell; as
    radii are <= CELL / 2 only the 2 x 2 cells nearest to the pixel can reach it.
    """
    fu = u / CELL
    fv = v / CELL
    ci = int(np.floor(fu))
    cj = int(np.floor(fv))
    di = -1 if fu - ci < 0.5 else 1
    dj = -1 if fv - cj < 0.5 else 1
    cov = 0.0
    for k in range(4):
        i = ci + (di if k & 1 else 0)
        j = cj + (dj if k & 2 else 0)
        hh = _hash(i, j, salt)
        if (hh & 0xFFFF) * (1.0 / 65536.0) >= p:
            continue
        h2 = _hash(hh, i ^ j, salt + 1)
        rad = 4.0 + 4.0 * ((h2 & 0xFF) / 255.0)
        ecc = 0.65 + 0.35 * (((h2 >> 8) & 0xFF) / 255.0)
        cx = (i + ((h2 >> 16) & 0xFF) / 256.0) * CELL
        cy = (j + ((h2 >> 24) & 0xFF) / 256.0) * CELL
        rx, ry = (rad, rad * ecc) if (hh >> 16) & 1 else (rad * ecc, rad)
        dx = (u - cx) / rx
        dy = (v - cy) / ry
        dn = np.sqrt(dx * dx + dy * dy)
        cov = max(cov, min(1.0, max(0.0, (1.0 - dn) * min(rx, ry) / ds + 0.5)))
    return cov


@njit(nogil=True, cache=False)
def render_kernel(
    out: np.ndarray, x0: int, y0: int, ds: float, salt: int, threshold: float
) -> None:
    """Fill ``out`` (h, w, 3) uint8 with the slide at downsample ``ds``, origin (x0, y0)."""
    h, w = out.shape[0], out.shape[1]
    us = np.empty(w, np.float64)
    vs = np.empty(h, np.float64)
    for c in range(w):
        us[c] = (x0 + c + 0.5) * ds
    for r in range(h):
        vs[r] = (y0 + r + 0.5) * ds
    mask = tissue_mask(us, vs, salt)
    if mask.max() <= threshold:  # pure background: skip the texture fields entirely
        out[:] = 255
        return
    density = _field(us, vs, 420.0, 420.0, salt + 4)
    fibres = _field(us, vs, 56.0, 14.0, salt + 5)
    grain = _field(us, vs, 6.0, 6.0, salt + 6)
    f1 = min(1.0, 14.0 / ds)
    f2 = min(1.0, 6.0 / ds)
    blend = min(1.0, max(0.0, (ds - 3.0) / 9.0))  # point-sampled nuclei -> mean coverage
    nsalt = salt + 7
    for r in range(h):
        v = vs[r]
        for c in range(w):
            a = (mask[r, c] - threshold) / EDGE_WIDTH
            if a <= 0.0:
                out[r, c, 0] = 255
                out[r, c, 1] = 255
                out[r, c, 2] = 255
                continue
            a = min(a, 1.0)
            u = us[c]
            g = grain[r, c] - 0.5
            tex = 0.5 + (fibres[r, c] - 0.5) * f1 * 1.1 + g * f2 * 0.6
            tex = min(1.0, max(0.0, tex))
            sr = 244.0 - 40.0 * tex
            sg = 188.0 - 85.0 * tex
            sb = 216.0 - 58.0 * tex
            p = min(0.6, max(0.03, 1.1 * density[r, c] - 0.25))
            cov = 0.0
            if blend < 1.0:
                cov = _nuclei(u, v, ds, p, nsalt)
            cov = (1.0 - blend) * cov + blend * p * MEAN_NUCLEUS_AREA
            nr = 72.0 + 50.0 * g
            ng = 44.0 + 36.0 * g
            nb = 128.0 + 40.0 * g
            cr = sr + (nr - sr) * cov
            cg = sg + (ng - sg) * cov
            cb = sb + (nb - sb) * cov
            out[r, c, 0] = np.uint8(min(255.0, 255.0 + (cr - 255.0) * a + 0.5))
            out[r, c, 1] = np.uint8(min(255.0, 255.0 + (cg - 255.0) * a + 0.5))
            out[r, c, 2] = np.uint8(min(255.0, 255.0 + (cb - 255.0) * a + 0.5))
