"""A job: one request body the planner built from a recipe, and the labels that place it on a sheet.

This is the contract between the planner (which makes jobs), the runner (which sends them and
records them by `job_id` in the state store) and the outputs (which lay them out by `axes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Job:
    """One request of a sweep.

    - `job_id`: short stable hash of (model, canonical request body, repeat): the identity of a
      job across runs, machines and Python versions. The state store is keyed by it.
    - `index`: 1-based position in the plan (after exclude/include/sample/repeats), used in file
      names and reports. It may change when a recipe is edited; `job_id` does not.
    - `axes`: axis name -> short label, in axis order ("template", the vars, "resolution",
      params, "repeat" when repeats > 1). Labels are what sheets and file names show.
    - `values`: axis name -> full value (the text that went into the template), same keys.
    - `inputs`: the exact JSON request body sent to the model.
    - `model`: the model id, e.g. "bytedance/seedream-4-0/text-to-image".
    - `repeat`: 0-based repeat number.
    """

    job_id: str
    index: int
    axes: Mapping[str, str]
    values: Mapping[str, Any]
    inputs: Mapping[str, Any]
    model: str
    repeat: int = 0

    @property
    def prompt(self) -> str:
        return str(self.inputs.get("prompt", ""))

    @property
    def resolution(self) -> str | None:
        value = self.inputs.get("resolution")
        return None if value is None else str(value)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used by `plan --format json`."""
        return {
            "job_id": self.job_id,
            "index": self.index,
            "axes": dict(self.axes),
            "values": dict(self.values),
            "inputs": dict(self.inputs),
            "model": self.model,
            "repeat": self.repeat,
        }
