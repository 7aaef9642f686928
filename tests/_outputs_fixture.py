"""Output folders for the outputs' tests, made the way the runner leaves them.

`make_folder()` fills a StateStore with a small sweep (subject x style x resolution) whose jobs
are in every interesting state, writes solid-colour PNGs (so a test can sample a cell's colour)
and their thumbnails, and records the recipe meta and a run, with a fake clock so every
timestamp and duration is known.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from seedream_pipe.images import save_thumbnail, thumb_name
from seedream_pipe.jobs import Job
from seedream_pipe.paths import IMAGES_DIR, THUMBS_DIR, image_file_name
from seedream_pipe.state import StateStore

MODEL = "bytedance/seedream-4-0/text-to-image"
T0 = 1_790_000_000.0  # 2026-09-21T...Z, a fixed start for the fake clock

SUBJECTS = {"cat": "a grey cat", "tea": "an old tea house"}
STYLES = {"watercolor": "soft watercolor", "photo": "ultra detailed photo"}
RESOLUTIONS = {"1:1": "2048x2048 (1:1)", "16:9": "2560x1440 (16:9)"}
# Image sizes per resolution label (small, so tests are fast; the aspect ratio is what matters).
SIZES = {"1:1": (64, 64), "16:9": (128, 72)}

# Plan order (last axis fastest): index -> (subject, style, resolution)
#  1 cat/watercolor/1:1    2 cat/watercolor/16:9   3 cat/photo/1:1    4 cat/photo/16:9
#  5 tea/watercolor/1:1    6 tea/watercolor/16:9   7 tea/photo/1:1    8 tea/photo/16:9
COLOURS = {
    1: (255, 0, 0),
    2: (0, 200, 0),
    3: (0, 0, 255),
    4: (255, 255, 0),
    5: (255, 0, 255),
    6: (0, 255, 255),
    7: (255, 128, 0),
    8: (128, 0, 255),
}


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Folder:
    path: Path
    jobs: list[Job]
    by_index: dict[int, Job] = field(default_factory=dict)

    def image(self, index: int) -> Path:
        job = self.by_index[index]
        return (
            self.path / IMAGES_DIR / image_file_name(job.index, job.job_id, list(job.axes.values()))
        )

    def thumb(self, index: int) -> Path:
        return self.path / THUMBS_DIR / thumb_name(self.image(index).name)


def plan_jobs(
    subjects: Mapping[str, str] = SUBJECTS,
    styles: Mapping[str, str] = STYLES,
    resolutions: Mapping[str, str] = RESOLUTIONS,
    repeats: int = 1,
    prompt_prefix: str = "",
) -> list[Job]:
    jobs = []
    combos = itertools.product(
        subjects.items(), styles.items(), resolutions.items(), range(repeats)
    )
    for index, ((s, sv), (st, stv), (r, rv), rep) in enumerate(combos, start=1):
        axes = {"subject": s, "style": st, "resolution": r}
        values: dict[str, Any] = {"subject": sv, "style": stv, "resolution": rv}
        if repeats > 1:
            axes["repeat"] = str(rep + 1)
            values["repeat"] = rep
        jobs.append(
            Job(
                job_id=f"j{index:03d}",
                index=index,
                axes=axes,
                values=values,
                inputs={"prompt": f"{prompt_prefix}{sv}, {stv}", "resolution": rv},
                model=MODEL,
                repeat=rep,
            )
        )
    return jobs


def finish(
    store: StateStore,
    clock: FakeClock,
    folder: Path,
    job: Job,
    colour: tuple[int, int, int],
    size: tuple[int, int],
    *,
    thumbnail: bool = True,
    queue_s: float = 2.0,
    generation_s: float = 10.0,
) -> None:
    """Take a job through submit -> downloaded, with a solid-colour image (and its thumbnail)."""
    name = image_file_name(job.index, job.job_id, list(job.axes.values()))
    image_path = folder / IMAGES_DIR / name
    image_path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.save(image_path)
    thumb_rel = None
    if thumbnail:
        thumb_rel = f"{THUMBS_DIR}/{thumb_name(name)}"
        save_thumbnail(image, folder / thumb_rel)
    store.transition(job.job_id, "submitting", attempts=1)
    store.transition(job.job_id, "submitted", request_id=f"req-{job.job_id}")
    clock.now += queue_s
    store.transition(job.job_id, "in_progress")
    clock.now += generation_s
    store.transition(job.job_id, "completed", image_url=f"https://cdn.runcomfy.net/{name}")
    for _ in range(3):
        store.update(job.job_id, bump=("polls",))
    clock.now += 0.5
    store.transition(
        job.job_id,
        "downloaded",
        image_path=f"{IMAGES_DIR}/{name}",
        thumb_path=thumb_rel,
        sha256="ab" * 32,
        width=size[0],
        height=size[1],
        bytes=image_path.stat().st_size,
    )


def make_folder(
    root: Path,
    *,
    states: Mapping[int, str] | None = None,
    no_thumbs: Iterable[int] = (),
    recipe_meta: Mapping[str, Any] | None = None,
    jobs: list[Job] | None = None,
    with_run: bool = True,
) -> Folder:
    """An output folder. By default: job 3 failed, 6 cancelled, 8 still in_queue, others done.

    `states` overrides per index ("downloaded", "failed", "cancelled", "in_queue", "planned").
    """
    wanted = {3: "failed", 6: "cancelled", 8: "in_queue"} if states is None else dict(states)
    jobs = jobs if jobs is not None else plan_jobs()
    clock = FakeClock()
    root.mkdir(parents=True, exist_ok=True)
    store = StateStore.for_output_dir(root, clock=clock)
    store.sync_plan(jobs)
    if with_run:
        store.start_run(
            recipe_path="recipes/sweep.yaml",
            recipe_hash="f" * 64,
            api_host="http://127.0.0.1:8765/v1",
            tool_version="0.1.0",
        )
    store.set_meta(
        "recipe",
        dict(
            recipe_meta
            if recipe_meta is not None
            else {
                "path": "recipes/sweep.yaml",
                "name": "sweep",
                "model": MODEL,
                "hash": "f" * 64,
                "source_text": "name: sweep\n",
                "resolved": {"name": "sweep"},
                "sheet": {
                    "rows": None,
                    "cols": None,
                    "page_by": None,
                    "cell": 256,
                    "max_cells": 100,
                    "repeats": "inline",
                },
                "price_per_image": 0.03,
            }
        ),
    )
    skip = set(no_thumbs)
    for job in jobs:
        state = wanted.get(job.index, "downloaded")
        colour = COLOURS.get(job.index, (90, 90, 90))
        size = SIZES.get(job.axes["resolution"], (64, 64))
        clock.now += 1.0
        if state == "downloaded":
            finish(store, clock, root, job, colour, size, thumbnail=job.index not in skip)
        elif state == "failed":
            store.transition(job.job_id, "submitting", attempts=1)
            store.transition(job.job_id, "submitted", request_id=f"req-{job.job_id}")
            clock.now += 3.0
            store.transition(job.job_id, "failed", error="content policy: the prompt was rejected")
        elif state == "cancelled":
            store.transition(job.job_id, "submitting", attempts=1)
            store.transition(job.job_id, "submitted", request_id=f"req-{job.job_id}")
            clock.now += 1.0
            store.transition(job.job_id, "cancelled")
        elif state != "planned":
            store.transition(job.job_id, "submitting", attempts=1)
            store.transition(job.job_id, "submitted", request_id=f"req-{job.job_id}")
            store.transition(job.job_id, state)
    if with_run:
        clock.now += 1.0
        store.finish_run(
            exit_code=1, summary={"rate_limited": 2, "retries": 3, "http_requests": 40}
        )
    store.close()
    return Folder(root, jobs, {job.index: job for job in jobs})
