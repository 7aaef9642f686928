"""The built-in RunComfy Model API simulator: faithful enough to develop against, hostile on demand.

    from seedream_pipe.sim import Simulator, SimConfig, Faults

    with Simulator(SimConfig(latency=0.05, faults=Faults(error_rate=0.1))) as sim:
        ...  # point a client at sim.base_url; read sim.stats()

See docs/simulator.md for the protocol, every fault and the admin endpoints.
"""

from __future__ import annotations

from seedream_pipe.sim.config import FAULT_NAMES, Faults, SimConfig
from seedream_pipe.sim.engine import body_hash
from seedream_pipe.sim.render import image_size, render_image, render_png
from seedream_pipe.sim.server import SimServer, Simulator

__all__ = [
    "FAULT_NAMES",
    "Faults",
    "SimConfig",
    "SimServer",
    "Simulator",
    "body_hash",
    "image_size",
    "render_image",
    "render_png",
]
