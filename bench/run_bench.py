"""Benchmark of the runner against the simulator (a benchmark, not a test): prints every figure.

The simulator runs in a child process so that the CPU measured here is the runner's alone.
Its server-side limit is R submits per second: the simulator's sliding-window limiter with its
window shortened from 60 s to 1 s in that child process (the runner only knows "rpm" and must
find the limit from the 429s it gets). Scenarios, each on a fresh simulator and output folder:

  A. rpm = the server's limit (R x 60): makespan vs the ideal max(N/R, N*L/W) + L, 429s (goal 0)
  M. A again, with the server counting over 60 s as the real API does (R x 60 in any minute),
     R lowered to N/75 so that the run outlasts the window: the 1 s window of A leaves the
     pacer's 2% margin 20 ms of slack against scheduling jitter on a shared machine; a minute's
     window leaves it 1.2 s
  B. rpm far above it (the limit unknown): share of the server's capacity (goal >= 85%), 429s
     as a share of submits (goal < 5%)
  C. a naive baseline (submit one job, poll every 2 s, download, next), on a subset of jobs,
     extrapolated to N; the ratio to A
  F. the HTTP floor: the same N jobs' requests (submit, polls, result, image to a file), W at a
     time, by bare aiohttp and by a minimal raw-socket client (bench/http_floor.py), with no
     state, pacing or checks: what the requests alone cost in CPU on this machine
  P. the image floor: what the Pillow work the runner must do per image costs alone, on one of
     the simulator's images for this recipe (median of repeats): the full decode that proves the
     file is an image, and that decode plus the thumbnail (the runner's keep_image). For the
     JPEG the simulator serves (as Seedream 4.0 makes) and for the same picture as a PNG (what
     other models can send, and what the simulator served before)

For A and B: HTTP requests per job (goal <= 5), detection delay = when the runner saw a job
finished minus when the server finished it (goal < 10% of L), runner CPU per job (goal < 2 ms),
with the part spent decoding/thumbnailing images shown apart (Pillow work that grows with the
image size, not orchestration). The end-of-run outputs that run_recipe writes (contact sheet,
report, gallery, manifest) are timed apart too: once per run, not per job.

    python bench/run_bench.py [--n 500] [--latency 1.0] [--workers 25] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import http_floor
from seedream_pipe.config import ApiSettings
from seedream_pipe.recipe import load_recipe
from seedream_pipe.runner import RunOptions, core, entry, run_recipe
from seedream_pipe.state import StateStore

TOKEN = "bench-token"


def sim_child(conn: Connection, settings: dict[str, Any], window_s: float) -> None:
    from seedream_pipe.sim import engine

    engine.SlidingWindowLimiter.WINDOW_S = window_s  # R per second instead of per minute
    from seedream_pipe.sim import SimConfig, Simulator

    with Simulator(SimConfig(**settings)) as sim:
        conn.send(sim.base_url)
        conn.recv()


class SimProcess:
    """The simulator in a child process, admitting `rate` submits per second, counted over a
    sliding window of `window_s` seconds (so at most rate x window_s in any window)."""

    def __init__(self, *, workers: int, latency: float, jitter: float, rate: int | None, window_s: float = 1.0) -> None:
        limit = None if rate is None else round(rate * window_s)
        settings = {"workers": workers, "latency": latency, "latency_jitter": jitter, "seed": 1, "rpm": limit}
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=sim_child, args=(child, settings, window_s), daemon=True)

    def __enter__(self) -> SimProcess:
        self._proc.start()
        self.base_url: str = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._proc.join(10)

    def stats(self) -> dict[str, Any]:
        root = self.base_url.rsplit("/v1", 1)[0]
        return httpx.get(f"{root}/admin/stats").json()  # type: ignore[no-any-return]


def write_recipe(folder: Path, n: int) -> Path:
    a = [f"subject{i}" for i in range(10)]
    b = [f"place{i}" for i in range(10)]
    c = [f"style{i}" for i in range(max(1, n // 100))]
    text = (
        "name: bench\n"
        'template: "{{ a }} {{ b }} {{ c }}"\n'
        f"vars:\n  a: {a}\n  b: {b}\n  c: {c}\n"
        "resolutions: [1K]\n"
    )
    path = folder / "bench.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class OutputsCpu:
    """CPU seconds of the end-of-run outputs (contact sheet, report, gallery, manifest): run once
    after the jobs, not per-job orchestration, so shown apart."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.wall = 0.0
        self.calling_thread = 0.0
        self._orig = entry.write_outputs  # (where the run calls it)

    def __enter__(self) -> OutputsCpu:
        orig = self._orig

        def timed(*args: Any, **kwargs: Any) -> Any:
            start, wall, own = time.process_time(), time.monotonic(), time.thread_time()
            try:
                return orig(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start
                self.calling_thread += time.thread_time() - own
                self.wall += time.monotonic() - wall

        entry.write_outputs = timed  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        entry.write_outputs = self._orig


class ImageCpu:
    """CPU seconds spent in Pillow checks/thumbnails (in worker threads) during a run."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._orig = core.keep_image  # (the Runner's downloads call it)

    def __enter__(self) -> ImageCpu:
        orig = self._orig

        def timed(*args: Any) -> Any:
            start = time.thread_time()
            try:
                return orig(*args)
            finally:
                with self._lock:
                    self.seconds += time.thread_time() - start

        core.keep_image = timed  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        core.keep_image = self._orig


class StateCpu:
    """CPU seconds and count of the state store's commits (a transition, an update, an event)
    during a run: the part of orchestration that makes a crash lose nothing paid for."""

    METHODS = ("transition", "update", "add_event")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.commits = 0
        self._orig = {name: getattr(StateStore, name) for name in self.METHODS}

    def __enter__(self) -> StateCpu:
        for name, orig in self._orig.items():
            setattr(StateStore, name, self._timed(orig))
        return self

    def _timed(self, orig: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()  # (the event loop's thread: no lock needed)
            try:
                return orig(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - start
                self.commits += 1

        return timed

    def __exit__(self, *exc: object) -> None:
        for name, orig in self._orig.items():
            setattr(StateStore, name, orig)


def iso(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def scenario(
    name: str, args: argparse.Namespace, recipe: Path, folder: Path, rpm: float,
    *, rate: int | None = None, window_s: float = 1.0,
) -> dict[str, Any]:
    n, latency, workers = args.n, args.latency, args.workers
    rate = rate or args.rate
    out = folder / name
    with SimProcess(workers=workers, latency=latency, jitter=args.jitter, rate=rate, window_s=window_s) as sim:
        options = RunOptions(rpm=rpm, concurrency=workers, first_poll_s=args.first_poll, seed=1)
        with ImageCpu() as images, OutputsCpu() as outputs, StateCpu() as commits:
            cpu0 = time.process_time()
            main0 = time.thread_time()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            wall0 = time.monotonic()
            result = run_recipe(load_recipe(recipe), api=ApiSettings(sim.base_url, TOKEN), out_dir=out, options=options)
            makespan = time.monotonic() - wall0 - outputs.wall
            cpu = time.process_time() - cpu0 - outputs.seconds
            main_cpu = time.thread_time() - main0 - outputs.calling_thread
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
        stats = sim.stats()
    with StateStore.for_output_dir(out) as store:
        jobs = store.jobs()
    delays = []
    for rec in jobs:
        finished = iso(rec.server_finished_at)
        if finished is not None and rec.completed_at is not None:
            delays.append(rec.completed_at - finished)
    ideal = max(n / rate, n * latency / workers) + latency
    submits = stats["submits_accepted"] + stats["submits_rejected"]
    return {
        "name": name,
        "exit_code": result.exit_code,
        "done": result.counts["downloaded"],
        "makespan_s": makespan,
        "ideal_s": ideal,
        "over_ideal": makespan / ideal - 1,
        "capacity": ideal / makespan,
        "rate_limited": stats["rate_limited"],
        "rate_limited_share": stats["rate_limited"] / max(1, submits),
        "requests_per_job": stats["requests_total"] / n,
        "looks_per_job": result.summary["polls"] / n,  # result reads used as polls, and status polls
        "runner_requests_per_job": result.summary["http_requests"] / n,
        "delay_mean_s": statistics.fmean(delays) if delays else float("nan"),
        "delay_p90_s": statistics.quantiles(delays, n=10)[-1] if len(delays) > 10 else float("nan"),
        "cpu_ms_per_job": cpu / n * 1000,
        "image_cpu_ms_per_job": images.seconds / n * 1000,
        "state_cpu_ms_per_job": commits.seconds / n * 1000,
        "commits_per_job": commits.commits / n,
        "outputs_cpu_s": outputs.seconds,
        "loop_cpu_ms_per_job": main_cpu / n * 1000,
        "sys_ms_per_job": (ru1.ru_stime - ru0.ru_stime) / n * 1000,
        "outputs_wall_s": outputs.wall,
        "duplicates": stats["duplicate_submits"],
    }


async def naive(base_url: str, model: str, bodies: list[dict[str, Any]], folder: Path) -> float:
    """What a single-request CLI does: submit, poll every 2 s, read the result, download, next."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        for i, body in enumerate(bodies):
            rid = (await http.post(f"{base_url}/models/{model}", json=body, headers=headers)).json()["request_id"]
            while True:
                await asyncio.sleep(2.0)
                status = (await http.get(f"{base_url}/requests/{rid}/status", headers=headers)).json()["status"]
                if status in ("completed", "failed", "cancelled"):
                    break
            result = (await http.get(f"{base_url}/requests/{rid}/result", headers=headers)).json()
            data = (await http.get(result["output"]["image"])).content
            (folder / f"{i}.png").write_bytes(data)
    return time.monotonic() - start


def floor(args: argparse.Namespace, recipe: Path, folder: Path, client: str) -> dict[str, Any]:
    """CPU per job of the requests alone, by one of http_floor's clients (scenario F)."""
    plan = load_recipe(recipe).plan()
    bodies = [dict(job.inputs) for job in plan.jobs[: args.n]]
    out = folder / f"floor-{client}"
    out.mkdir()
    with SimProcess(workers=args.workers, latency=args.latency, jitter=args.jitter, rate=None) as sim:

        async def run(send: http_floor.Send) -> None:
            await http_floor.run_jobs(
                send, sim.base_url, plan.jobs[0].model, bodies, out,
                token=TOKEN, workers=args.workers, first_poll=args.first_poll, poll_every=0.25,
            )

        cpu0, ru0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        asyncio.run(http_floor.CLIENTS[client](run))
        cpu, ru1 = time.process_time() - cpu0, resource.getrusage(resource.RUSAGE_SELF)
        stats = sim.stats()
    n = len(bodies)
    return {
        "client": client,
        "cpu_ms_per_job": cpu / n * 1000,
        "sys_ms_per_job": (ru1.ru_stime - ru0.ru_stime) / n * 1000,
        "requests_per_job": stats["requests_total"] / n,
        "cpu_ms_per_request": cpu / stats["requests_total"] * 1000,
    }


def image_floor(
    recipe: Path, folder: Path, image_format: str, *, grain: bool = False, repeats: int = 30
) -> dict[str, Any]:
    """Median CPU ms of the per-image Pillow work alone (scenario P), on one simulator image.

    `grain` adds sheet_bench's photographic noise first (`with_grain`): the simulator's pictures
    are flat, and a photograph's JPEG carries more detail for the decoder to read."""
    import io

    from PIL import Image

    from seedream_pipe.downloads import keep_image
    from seedream_pipe.sim import render_file, render_image
    from seedream_pipe.sim.render import JPEG_QUALITY

    job = load_recipe(recipe).plan().jobs[0]
    prompt, resolution = str(job.inputs["prompt"]), str(job.inputs.get("resolution"))
    if grain:
        from bench.sheet_bench import with_grain

        buffer = io.BytesIO()
        with_grain(render_image(prompt, resolution), seed=0).save(buffer, "JPEG", quality=JPEG_QUALITY)
        data = buffer.getvalue()
    else:
        data = render_file(prompt, resolution, image_format)
    source = folder / f"floor-image.{image_format}"
    source.write_bytes(data)

    def decode() -> None:
        with Image.open(source) as img:
            img.load()

    def keep() -> None:
        tmp = folder / "floor-keep"
        tmp.write_bytes(data)  # keep_image renames its input into place
        keep_image(tmp, folder / "floor-kept.png", folder / "floor-thumb.jpg")

    def median_ms(work: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.process_time()
            work()
            times.append(time.process_time() - start)
        return statistics.median(times) * 1000

    with Image.open(source) as img:
        size = img.size
    return {"decode_ms": median_ms(decode), "keep_ms": median_ms(keep), "bytes": len(data), "size": size}


def show(r: dict[str, Any], latency: float) -> None:
    print(f"\n[{r['name']}] exit {r['exit_code']}, {r['done']} images, duplicates {r['duplicates']}")
    print(f"  makespan            {r['makespan_s']:.2f} s   ideal {r['ideal_s']:.2f} s   "
          f"over ideal {r['over_ideal'] * 100:+.1f}% (goal within 10%)")
    print(f"  share of capacity   {r['capacity'] * 100:.1f}% (goal >= 85% when rpm is too high)")
    print(f"  429s                {r['rate_limited']} = {r['rate_limited_share'] * 100:.2f}% of submits")
    print(f"  HTTP requests/job   {r['requests_per_job']:.2f} (server count; looks/job {r['looks_per_job']:.2f}; goal <= 5)")
    print(f"  detection delay     mean {r['delay_mean_s'] * 1000:.0f} ms, p90 {r['delay_p90_s'] * 1000:.0f} ms "
          f"= {r['delay_mean_s'] / latency * 100:.1f}% of L (goal < 10%)")
    print(f"  runner CPU/job      {r['cpu_ms_per_job']:.2f} ms total, of which {r['image_cpu_ms_per_job']:.2f} ms "
          f"Pillow check+thumbnail; orchestration {r['cpu_ms_per_job'] - r['image_cpu_ms_per_job']:.2f} ms (goal < 2 ms)")
    print(f"  of orchestration:   state commits {r['state_cpu_ms_per_job']:.2f} ms/job "
          f"({r['commits_per_job']:.2f} commits/job, each before the call that depends on it)")
    print(f"  of all: event-loop thread {r['loop_cpu_ms_per_job']:.2f} ms/job; kernel (sys) time "
          f"{r['sys_ms_per_job']:.2f} ms/job")
    print(f"  end-of-run outputs  {r['outputs_cpu_s']:.2f} s CPU, {r['outputs_wall_s']:.2f} s once (sheet, report, gallery, manifest; "
          "not in the per-job figures)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--latency", type=float, default=1.0, help="job time L (s)")
    parser.add_argument("--jitter", type=float, default=0.1, help="+/- seconds around L")
    parser.add_argument("--workers", type=int, default=25, help="W")
    parser.add_argument("--rate", type=int, default=20, help="server limit R (submits/s)")
    parser.add_argument("--first-poll", type=float, default=1.0)
    parser.add_argument("--naive-jobs", type=int, default=8, help="jobs the naive baseline really runs")
    parser.add_argument("--only", choices=["A", "M", "B", "C", "F", "P"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["A", "M", "B", "C", "F", "P"])
    print(f"N={args.n} L={args.latency}s (+/-{args.jitter}) W={args.workers} R={args.rate}/s; "
          f"ideal max(N/R, N*L/W) + L = {max(args.n / args.rate, args.n * args.latency / args.workers) + args.latency:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recipe = write_recipe(folder, args.n)
        results = {}
        if "A" in only:
            results["A"] = scenario("A: rpm = server limit", args, recipe, folder, rpm=args.rate * 60)
            show(results["A"], args.latency)
        if "M" in only:
            slow = max(1, args.n // 75)  # (slow enough that the run outlasts the minute it is counted over)
            results["M"] = scenario(
                f"M: rpm = server limit {slow * 60}, counted over a minute", args, recipe, folder,
                rpm=slow * 60, rate=slow, window_s=60.0,
            )
            show(results["M"], args.latency)
        if "B" in only:
            results["B"] = scenario("B: rpm 10x the server limit", args, recipe, folder, rpm=args.rate * 600)
            show(results["B"], args.latency)
        if "C" in only:
            plan = load_recipe(recipe).plan()
            bodies = [dict(job.inputs) for job in plan.jobs[: args.naive_jobs]]
            (folder / "naive").mkdir()
            with SimProcess(workers=args.workers, latency=args.latency, jitter=args.jitter, rate=args.rate) as sim:
                took = asyncio.run(naive(sim.base_url, plan.jobs[0].model, bodies, folder / "naive"))
            per_job = took / len(bodies)
            estimate = per_job * args.n
            print(f"\n[C: naive baseline] {len(bodies)} jobs really run in {took:.1f} s = {per_job:.2f} s/job; "
                  f"extrapolated to N={args.n}: {estimate:.0f} s (an extrapolation, not a measurement)")
            if "A" in results:
                print(f"  runner A is {estimate / results['A']['makespan_s']:.1f}x faster than the naive baseline")
        floors: dict[str, float] = {}
        if "F" in only:
            print("\n[F: the HTTP floor] the same jobs' requests with nothing else (no state, pacing, checks)")
            for client in ("aiohttp", "raw"):
                f = floor(args, recipe, folder, client)
                floors[client] = f["cpu_ms_per_job"]
                print(f"  {client:8} {f['cpu_ms_per_job']:.2f} ms CPU/job ({f['sys_ms_per_job']:.2f} ms kernel), "
                      f"{f['requests_per_job']:.2f} requests/job = {f['cpu_ms_per_request']:.3f} ms/request")
                if "A" in results:
                    a = results["A"]
                    orchestration = a["cpu_ms_per_job"] - a["image_cpu_ms_per_job"]
                    print(f"           runner A's orchestration {orchestration:.2f} ms/job is "
                          f"{orchestration - f['cpu_ms_per_job']:+.2f} ms over this floor")
        if "P" in only:
            print("\n[P: the image floor] the Pillow work alone on one simulator image, median of 30")
            kinds = {
                "JPEG": ("jpeg", False, "as the simulator serves it"),
                "JPEG+grain": ("jpeg", True, "with photographic grain, as a photo would be"),
                "PNG": ("png", False, "the same picture"),
            }
            for kind, (image_format, grain, served) in kinds.items():
                p = image_floor(recipe, folder, image_format, grain=grain)
                width, height = p["size"]
                print(f"  {kind:10} {width}x{height}, {p['bytes'] / 1000:.0f} kB ({served}): "
                      f"full decode {p['decode_ms']:.2f} ms; keep_image (the check + thumbnail, "
                      f"as the runner calls it) {p['keep_ms']:.2f} ms")
                if "aiohttp" in floors:
                    least = floors["aiohttp"] + p["keep_ms"]
                    print(f"             least CPU per job with these libraries: HTTP floor {floors['aiohttp']:.2f} + "
                          f"{p['keep_ms']:.2f} = {least:.2f} ms, {least / 2:.1f}x the 2 ms goal")
            if "A" in results:
                print(f"  runner A (JPEG): {results['A']['cpu_ms_per_job']:.2f} ms/job")


if __name__ == "__main__":
    main()
