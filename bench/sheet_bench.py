"""Contact-sheet speed and memory against ImageMagick's montage, over the same files in one run.

Inputs: 100 PNGs of 2048x2048 with photographic noise (about 6 MB each, like real outputs),
made once by the simulator's renderer plus noise into bench/_work/ (gitignored) and reused.

Measured, each in its own process so that its memory is its own:

1. `montage -geometry 256x256+4+4 -tile 10x 'DIR/*.png[256x256]' out.png` (ImageMagick used
   well: the read-time resize keeps its cache small);
2. our sheet of the same 100 images when every thumbnail must be made (one worker per core);
3. our sheet again, from the thumbnails that run saved (what `sheet` does after a run);
4. a 1,000-image sheet from thumbnails, paged (10 pages of 100 cells).

Memory is the peak of the sum of the proportional set sizes (PSS) of a process and all its
children, sampled every 5 ms from /proc, so a worker's pages shared with its parent count once;
the kernel's max RSS (which for several processes can only give an upper bound, main + each
worker's max) is printed beside it.

Goals (issue 5): with thumbnails to make, under 1/4 of montage's time and under 1/2 of its peak
memory; from thumbnails, under 1 s; 1,000 images paged, under 10 s.

Run: .venv/bin/python bench/sheet_bench.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seedream_pipe.jobs import Job  # noqa: E402
from seedream_pipe.paths import IMAGES_DIR, THUMBS_DIR, image_file_name  # noqa: E402
from seedream_pipe.state import StateStore  # noqa: E402

WORK = ROOT / "bench" / "_work"
SOURCE = WORK / "png"  # the 100 generated images
MONTAGE = "/usr/bin/montage"  # by full path: /usr/local/bin/convert is a stand-in
SIDE = 2048
N_IMAGES = 100
SUBJECTS = [
    "a lighthouse on a rocky coast", "terraced rice fields", "an old tea house", "a paper boat on a pond",
    "a fox in the snow", "a desert canyon", "a city street in rain", "a mountain lake", "a lavender field",
    "a harbour at dusk",
]  # fmt: skip
STYLES = [
    "watercolor", "35mm film photo", "oil painting", "ink sketch", "ultra detailed", "pastel",
    "cinematic lighting", "isometric", "low poly", "ukiyo-e",
]  # fmt: skip
# Photographic noise: luminance grain plus a little chroma noise. With these the PNGs come out at
# about 6.5 MB, like Seedream's 2048x2048 outputs.
LUMA_SIGMA = 3.0
ROUNDS = 2
CHROMA_SIGMA = 1.5


# --- inputs ------------------------------------------------------------------------------------


def _render(prompt: str) -> Image.Image:
    try:
        from seedream_pipe.sim.render import render_image

        return render_image(prompt, f"{SIDE}x{SIDE} (1:1)")
    except ImportError:  # the simulator not there: a plain gradient
        ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
        pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128.0), axis=-1)
        return Image.fromarray(pixels.astype(np.uint8), "RGB")


def with_grain(image: Image.Image, *, seed: int) -> Image.Image:
    """`image` with photographic noise (luminance grain and a little chroma noise), seeded: the
    simulator's pictures are flat, and a photograph carries more detail for a decoder to read."""
    base = np.asarray(image.convert("RGB"), dtype=np.int16)
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, LUMA_SIGMA, size=(*base.shape[:2], 1)).astype(np.int16)
    chroma = rng.normal(0, CHROMA_SIGMA, size=base.shape).astype(np.int16)
    return Image.fromarray(np.clip(base + grain + chroma, 0, 255).astype(np.uint8), "RGB")


def make_source_image(index: int) -> str:
    dest = SOURCE / f"{index:03d}.png"
    if dest.is_file():
        return str(dest)
    prompt = f"{SUBJECTS[index // 10]}, {STYLES[index % 10]}"
    tmp = dest.with_suffix(".tmp")
    with_grain(_render(prompt), seed=index).save(tmp, "PNG")  # default zlib level, as real files are
    os.replace(tmp, dest)
    return str(dest)


def ensure_sources() -> list[Path]:
    SOURCE.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(N_IMAGES) if not (SOURCE / f"{i:03d}.png").is_file()]
    if missing:
        print(
            f"making {len(missing)} source PNGs of {SIDE}x{SIDE} in {SOURCE} (once) ...", flush=True
        )
        started = time.perf_counter()
        with ProcessPoolExecutor() as pool:
            list(pool.map(make_source_image, missing))
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return [SOURCE / f"{i:03d}.png" for i in range(N_IMAGES)]


def build_folder(dest: Path, n_jobs: int, sources: list[Path], thumbs_from: Path | None) -> Path:
    """An output folder of `n_jobs` downloaded jobs; images (and thumbnails) are hard links."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / IMAGES_DIR).mkdir(parents=True)
    jobs = []
    rows = n_jobs // len(STYLES)
    for i in range(n_jobs):
        subject = (
            SUBJECTS[i // 10]
            if rows == len(SUBJECTS)
            else f"{SUBJECTS[(i // 10) % 10]} #{i // 10 + 1:03d}"
        )
        style = STYLES[i % 10]
        jobs.append(
            Job(
                job_id=f"b{i:05d}",
                index=i + 1,
                axes={"subject": subject, "style": style, "resolution": "2K"},
                values={"subject": subject, "style": style, "resolution": "2K"},
                inputs={"prompt": f"{subject}, {style}", "resolution": "2K"},
                model="bytedance/seedream-4-0/text-to-image",
            )
        )
    with StateStore.for_output_dir(dest) as store:
        store.sync_plan(jobs)
        store.set_meta(
            "recipe", {"name": dest.name, "sheet": {"rows": ["subject"], "cols": ["style"]}}
        )
        for i, job in enumerate(jobs):
            source = sources[i % len(sources)]
            name = image_file_name(job.index, job.job_id, list(job.axes.values()))
            os.link(source, dest / IMAGES_DIR / name)
            thumb_rel = None
            if thumbs_from is not None:
                (dest / THUMBS_DIR).mkdir(exist_ok=True)
                thumb_rel = f"{THUMBS_DIR}/{Path(name).stem}.jpg"
                os.link(thumbs_from / f"{i % len(sources):03d}.jpg", dest / thumb_rel)
            store.transition(
                job.job_id, "downloaded", image_path=f"{IMAGES_DIR}/{name}", thumb_path=thumb_rel,
                width=SIDE, height=SIDE, bytes=source.stat().st_size,
            )  # fmt: skip
    return dest


# --- measuring ---------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Measured:
    wall_s: float
    peak_pss_mb: float  # peak of the sum over the process tree, sampled
    maxrss_mb: float  # the kernel's max RSS of the process (and, by max, its children)
    cpu_s: float  # user + system time of the process and every child it waited for
    load: float  # the 1-minute load average when it ended: other work on the machine shows here
    output: str


def measure(cmd: list[str]) -> Measured:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, sum(_pss_kb(p) for p in _tree(proc.pid)))
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{output}")
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(wall, peak / 1024, usage.ru_maxrss / 1024, cpu, os.getloadavg()[0], output)


SHEET_SCRIPT = """
import json, resource, sys, time
started = time.perf_counter()
from seedream_pipe.outputs import open_output
from seedream_pipe.outputs.sheet import make_sheet
imported = time.perf_counter()
result = make_sheet(open_output(sys.argv[1]), cell=256, max_cells=100)
done = time.perf_counter()
print(json.dumps({
    "pages": len(result.paths), "made": result.made_thumbnails, "warnings": len(result.warnings),
    "import_s": imported - started, "sheet_s": done - imported,
    "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "workers_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def our_sheet(folder: Path) -> tuple[Measured, dict[str, float]]:
    measured = measure([sys.executable, "-c", SHEET_SCRIPT, str(folder)])
    figures = json.loads(measured.output.strip().splitlines()[-1])
    return measured, figures


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    if not Path(MONTAGE).exists():
        raise SystemExit(f"{MONTAGE} is missing: apt-get install -y imagemagick")
    sources = ensure_sources()
    mean_mb = sum(p.stat().st_size for p in sources) / len(sources) / 1e6
    cores = os.cpu_count() or 1
    print(
        f"inputs: {len(sources)} PNGs, {SIDE}x{SIDE}, {mean_mb:.1f} MB each on average; {cores} cores"
    )

    sweep = build_folder(WORK / "sweep100", N_IMAGES, sources, thumbs_from=None)
    print(
        f"load average before: {os.getloadavg()[0]:.1f} (other work on the machine slows every figure)"
    )

    # 1 and 2, alternated ROUNDS times; the best wall time of each counts, because on a shared
    # machine other work only ever adds time (CPU time is printed too: it does not depend on it).
    montage_out = WORK / "montage.png"
    montage_cmd = [
        MONTAGE,
        "-geometry",
        "256x256+4+4",
        "-tile",
        "10x",
        f"{SOURCE}/*.png[256x256]",
        str(montage_out),
    ]
    montages: list[Measured] = []
    colds: list[tuple[Measured, dict[str, float]]] = []
    for round_number in range(1, ROUNDS + 1):
        m = measure(montage_cmd)
        montages.append(m)
        print(
            f"\n[{round_number}] montage                      {m.wall_s:6.2f} s   peak {m.peak_pss_mb:6.1f} MB "
            f"(max RSS {m.maxrss_mb:.1f} MB)  cpu {m.cpu_s:5.2f} s  load {m.load:.1f}"
        )
        shutil.rmtree(sweep / THUMBS_DIR, ignore_errors=True)
        cold, cold_fig = our_sheet(sweep)
        assert cold_fig["made"] == N_IMAGES, cold_fig
        colds.append((cold, cold_fig))
        bound = cold_fig["self_maxrss_mb"] + min(cores, N_IMAGES) * cold_fig["workers_maxrss_mb"]
        print(
            f"[{round_number}] sheet, making 100 thumbnails {cold.wall_s:6.2f} s   peak {cold.peak_pss_mb:6.1f} MB "
            f"(max RSS main {cold_fig['self_maxrss_mb']:.1f} + {cores} x worker {cold_fig['workers_maxrss_mb']:.1f} "
            f"= at most {bound:.1f} MB)  cpu {cold.cpu_s:5.2f} s  load {cold.load:.1f}"
        )
    m = min(montages, key=lambda x: x.wall_s)
    cold, cold_fig = min(colds, key=lambda x: x[0].wall_s)
    bound = cold_fig["self_maxrss_mb"] + min(cores, N_IMAGES) * cold_fig["workers_maxrss_mb"]
    print()

    # 3. our sheet from the thumbnails just saved
    warm, warm_fig = min((our_sheet(sweep) for _ in range(ROUNDS)), key=lambda x: x[0].wall_s)
    print(
        f"sheet, from thumbnails           {warm.wall_s:6.2f} s   peak {warm.peak_pss_mb:6.1f} MB "
        f"(layout + drawing {warm_fig['sheet_s']:.2f} s after {warm_fig['import_s']:.2f} s of imports)  "
        f"cpu {warm.cpu_s:5.2f} s  load {warm.load:.1f}"
    )

    # 4. 1,000 images from thumbnails, paged
    thumbs = WORK / "thumbs100"
    shutil.rmtree(thumbs, ignore_errors=True)
    thumbs.mkdir()
    for i, job_thumb in enumerate(sorted((sweep / THUMBS_DIR).iterdir())):
        os.link(job_thumb, thumbs / f"{i:03d}.jpg")
    big = build_folder(WORK / "sweep1000", 1000, sources, thumbs_from=thumbs)
    paged, paged_fig = min((our_sheet(big) for _ in range(ROUNDS)), key=lambda x: x[0].wall_s)
    print(
        f"sheet, 1,000 images, paged       {paged.wall_s:6.2f} s   peak {paged.peak_pss_mb:6.1f} MB "
        f"({paged_fig['pages']:.0f} pages; layout + drawing {paged_fig['sheet_s']:.2f} s)  "
        f"cpu {paged.cpu_s:5.2f} s  load {paged.load:.1f}"
    )

    time_ratio = cold.wall_s / m.wall_s
    memory_ratio = cold.peak_pss_mb / m.peak_pss_mb
    bound_ratio = bound / m.maxrss_mb
    print("\nratios and goals")
    print(
        f"  time, thumbnails to make / montage      {time_ratio:5.3f}  (goal < 0.25)  {'ok' if time_ratio < 0.25 else 'MISSED'}"
    )
    print(
        f"  peak memory (PSS) / montage             {memory_ratio:5.3f}  (goal < 0.50)  {'ok' if memory_ratio < 0.5 else 'MISSED'}"
    )
    # Summing max RSS counts the pages the workers share with the parent after fork() once
    # per process, and adds peaks that never coincide (workers decode, then the parent draws):
    # an over-estimate, printed for transparency; PSS above is the measure.
    print(
        f"  max RSS main + workers / montage RSS    {bound_ratio:5.3f}  (over-counts shared pages)"
    )
    print(
        f"  from thumbnails                         {warm.wall_s:5.2f} s (goal < 1 s)  {'ok' if warm.wall_s < 1 else 'MISSED'}"
    )
    print(
        f"  1,000 images paged                      {paged.wall_s:5.2f} s (goal < 10 s) {'ok' if paged.wall_s < 10 else 'MISSED'}"
    )
    print(f"  speed-up over montage                   {m.wall_s / cold.wall_s:5.1f}x")
    # Wall time depends on what else the machine runs; CPU time does not. With every core to
    # itself the sheet's wall time approaches its CPU time over the cores.
    cpu_ratio = (cold.cpu_s / cores) / m.wall_s
    print(
        f"  cpu / {cores} cores / montage wall            {cpu_ratio:5.3f}  (the time ratio on an idle machine)"
    )
    print(f"  cpu time ratio (sheet / montage)        {cold.cpu_s / m.cpu_s:5.3f}")


if __name__ == "__main__":
    main()
