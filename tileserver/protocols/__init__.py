"""Pure request geometry for the viewer protocols (Deep Zoom, IIIF Image API 3.0).

Nothing here does I/O: each module turns protocol coordinates and strings into frozen
values in the project's frames (``l0_``, ``l_``, ``z_``, ``t_``), and raises a
protocol-specific error the server maps to an HTTP status.
"""

from __future__ import annotations
