"""The built-in RunComfy Model API simulator: faithful enough to develop against, hostile on demand.

    from seedream_pipe.sim import Simulator, SimConfig, Faults

    with Simulator(SimConfig(latency=0.05, faults=Faults(error_rate=0.1))) as sim:
        ...  # point a client at sim.base_url; read sim.stats()

See docs/simulator.md for the protocol, every fault and the admin endpoints.

Names load lazily: the `sim` command's options need only `config`, and `seedream-pipe --help`
should not pay for aiohttp, Pillow and numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seedream_pipe._lazy import lazy_exports

if TYPE_CHECKING:
    from seedream_pipe.sim.config import FAULT_NAMES, Faults, SimConfig
    from seedream_pipe.sim.engine import body_hash
    from seedream_pipe.sim.render import image_size, render_file, render_image, render_png
    from seedream_pipe.sim.server import SimServer, Simulator

_EXPORTS: dict[str, str] = {
    "FAULT_NAMES": "seedream_pipe.sim.config",
    "Faults": "seedream_pipe.sim.config",
    "SimConfig": "seedream_pipe.sim.config",
    "SimServer": "seedream_pipe.sim.server",
    "Simulator": "seedream_pipe.sim.server",
    "body_hash": "seedream_pipe.sim.engine",
    "image_size": "seedream_pipe.sim.render",
    "render_file": "seedream_pipe.sim.render",
    "render_image": "seedream_pipe.sim.render",
    "render_png": "seedream_pipe.sim.render",
}

__all__ = [
    "FAULT_NAMES",
    "Faults",
    "SimConfig",
    "SimServer",
    "Simulator",
    "body_hash",
    "image_size",
    "render_file",
    "render_image",
    "render_png",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, __all__)
