"""The manifest: enough to re-run the same experiment later and to know what produced each file.

`manifest.json` holds the recipe as written and as resolved (after `extends`) and its hash, as
the runner recorded it (a recipe file given to `sheet` or `report` may have been edited since,
and never ran), the tool's version, the model id, the API host, the start and end of the runs,
the counts, and for every image on disk the job that made it (job_id, path, sha256); a done job's image no longer
on disk as downloaded (a stat: gone, or another size) is in `missing_files` instead. It never holds a token: the host
is the host name the runs recorded (the runner records no port: a folder is bound to a host, and
`run --sim` serves on a new port each time); `safe_host` still strips anything but `host[:port]`
from a value written otherwise. Run summaries keep only numbers.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from seedream_pipe import __version__
from seedream_pipe.outputs._folder import (
    GALLERY_NAME,
    IMAGE_PRESENT,
    MANIFEST_NAME,
    REPORT_STEM,
    SHEET_STEM,
    OutputFolder,
    iso_utc,
    keeps_unchanged,
    write_text,
)
from seedream_pipe.outputs.summary import summarize_jobs

MANIFEST_VERSION = 1


def safe_host(value: Any) -> str | None:
    """`host[:port]` of a URL or host string: no scheme, credentials, path or query survive."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        parts = urlsplit(text if "://" in text else f"//{text}")
        host = parts.hostname
        port = parts.port
    except ValueError:  # a malformed port: keep nothing rather than something odd
        return None
    if not host:
        return None
    return f"{host}:{port}" if port else host


def _numbers_only(summary: Any) -> dict[str, Any]:
    """A run summary reduced to numbers and booleans: no free text that could echo a secret."""
    if not isinstance(summary, Mapping):
        return {}
    return {
        str(k): v for k, v in summary.items() if isinstance(v, int | float | bool) and v is not None
    }


def _run_entry(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": run.get("id"),
        "started_at": iso_utc(run.get("started_at")),
        "finished_at": iso_utc(run.get("finished_at")),
        "recipe_hash": run.get("recipe_hash"),
        "api_host": safe_host(run.get("api_host")),
        "tool_version": run.get("tool_version"),
        "exit_code": run.get("exit_code"),
        "summary": _numbers_only(run.get("summary")),
    }


def build_manifest(folder: OutputFolder, *, outputs: Sequence[Path] = ()) -> dict[str, Any]:
    """The manifest as a dict; `outputs` are other files just written (sheet, report, gallery)."""
    # The recipe the folder's jobs follow, as the runner recorded it, even when a recipe file is
    # given: edited since, it never ran, and the manifest would credit it with files it did not make.
    meta = folder.recipe_meta
    recipe_part: dict[str, Any] = {
        "name": meta.get("name") or folder.name,
        "path": meta.get("path"),
        "hash": meta.get("hash"),
        "source_text": meta.get("source_text"),
        "resolved": meta.get("resolved"),
    }
    models = sorted({job.model for job in folder.jobs})
    model = meta.get("model") or (models[0] if models else None)
    runs = [_run_entry(run) for run in folder.runs]
    hosts = [run["api_host"] for run in runs if run["api_host"]]
    starts = [run["started_at"] for run in folder.runs if run.get("started_at") is not None]
    ends = [run["finished_at"] for run in folder.runs if run.get("finished_at") is not None]
    summary = summarize_jobs(folder.jobs, runs=folder.runs, price_per_image=folder.price_per_image)

    files = []
    missing = []
    for job in folder.jobs:
        if not job.image_path:
            continue
        on_disk = folder.image_files.get(job.job_id)
        if on_disk != IMAGE_PRESENT:
            where = {"path": job.image_path, "job_id": job.job_id, "index": job.job_index}
            missing.append({**where, "image_file": on_disk})
            continue
        files.append(
            {
                "path": job.image_path,
                "job_id": job.job_id,
                "index": job.job_index,
                "sha256": job.sha256,
                "bytes": job.bytes,
                "width": job.width,
                "height": job.height,
                "thumb_path": job.thumb_path,
                "request_id": job.request_id,
                "axes": dict(job.axes),
            }
        )
    return {
        "manifest_version": MANIFEST_VERSION,
        "tool": {"name": "seedream-pipe", "version": __version__},
        "generated_at": iso_utc(time.time()),
        "recipe": recipe_part,
        "model": model,
        "models": models,
        "api_host": hosts[-1] if hosts else None,
        "started_at": iso_utc(min(starts)) if starts else None,
        "finished_at": iso_utc(max(ends)) if ends else None,
        "runs": runs,
        "counts": {
            "jobs": summary.jobs,
            "done": summary.done,
            "failed": summary.failed,
            "cancelled": summary.cancelled,
            "pending": summary.pending,
            "by_state": {state: n for state, n in summary.counts.items() if n},
        },
        "files": files,
        "missing_files": missing,
        "outputs": [_relative(path, folder.path) for path in outputs],
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def write_manifest(folder: OutputFolder, *, outputs: Sequence[Path] = ()) -> Path:
    dest = folder.path / MANIFEST_NAME
    manifest = build_manifest(folder, outputs=outputs)
    if keeps_unchanged():
        # drawn again with nothing else changed: the time it was made stays, and so does the file
        manifest = json.loads(json.dumps(manifest, default=str))  # as it reads back
        earlier = _earlier(dest)
        if earlier.get("generated_at") and {**earlier, "generated_at": None} == {**manifest, "generated_at": None}:
            manifest["generated_at"] = earlier["generated_at"]
    text = json.dumps(manifest, ensure_ascii=False, indent=2, default=str) + "\n"
    return write_text(dest, text)


def _earlier(path: Path) -> dict[str, Any]:
    """The manifest already in the folder, as plain JSON; {} when there is none to read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _output_rank(name: str) -> tuple[int, str]:
    """The order `run` lists its outputs in: report, sheet pages, gallery, anything else."""
    if re.fullmatch(rf"{REPORT_STEM}\.\w+", name):
        return (0, "")
    if re.fullmatch(rf"{SHEET_STEM}(-\d+)?\.(png|jpg)", name):
        return (1, name)
    if name == GALLERY_NAME:
        return (2, "")
    return (3, "")


def refresh_manifest(folder: OutputFolder, *, written: Sequence[Path]) -> Path | None:
    """The folder's manifest again after `sheet` or `gallery` rewrote `written`, its `outputs`
    naming the files as they are now (a sheet in another format or with other pages removes
    the old ones); None, and nothing written, when the folder has no manifest yet.

    What it listed and is still on disk stays listed, `written` joins it; unchanged, the file
    is left as it is inside `keeping_unchanged()`, as `write_manifest` leaves it.
    """
    earlier = _earlier(folder.path / MANIFEST_NAME)
    if not earlier:
        return None
    listed = earlier.get("outputs")
    names = [
        name
        for name in (listed if isinstance(listed, list) else [])
        if isinstance(name, str) and (folder.path / name).is_file()
    ]
    for path in written:
        name = _relative(path, folder.path)
        if name not in names:
            names.append(name)
    names.sort(key=_output_rank)  # (stable: what the manifest held keeps its order)
    return write_manifest(folder, outputs=[folder.path / name for name in names])
