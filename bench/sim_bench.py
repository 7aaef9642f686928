"""Benchmark of the built-in simulator: status polls per second on one core, and render time.

How polls are measured: the simulator runs as `seedream-pipe sim` in its own process, pinned to
one CPU core (sched_setaffinity); this process, pinned to another core when there is one, drives
it with an aiohttp client: many concurrent tasks on keep-alive connections, each polling the
status of one job in a loop, for a fixed time after a warm-up; once with 8 jobs, once with a
deep queue (2,000 jobs: queue positions must stay cheap); then the same deep queue read through
the result endpoint, which is what the runner's looks at a running job use. Every answer is
checked to be a 200. Render time: `render_file` at 2048x2048 (the API's default size), as the
JPEG the simulator serves and as a PNG, in this process, median of a few runs; 4096x4096 once
for scale.

Run: .venv/bin/python bench/sim_bench.py [--seconds 5] [--connections 64]
Goal (issue 3): at least 2,000 polls/s, so the simulator never bottlenecks the runner's benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import aiohttp

from seedream_pipe.sim import render_file

MODEL = "bytedance/seedream-4-0/text-to-image"
HEADERS = {"Authorization": "Bearer bench"}
GOAL_POLLS_PER_S = 2000


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc), to tell who limited the figure."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _pin(pid: int, core: int) -> bool:
    try:
        os.sched_setaffinity(pid, {core})
        return True
    except (AttributeError, OSError):
        return False


async def _drive(
    base: str, seconds: float, connections: int, jobs: int, server_pid: int, endpoint: str
) -> tuple[int, float, int, float | None]:
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:

        async def submit(i: int) -> str:
            async with session.post(f"{base}/models/{MODEL}", json={"prompt": f"bench {i}"}) as resp:
                resp.raise_for_status()
                return str((await resp.json())["request_id"])

        ids = await asyncio.gather(*(submit(i) for i in range(jobs)))
        # spread the pollers over the whole queue, the deep end included
        urls = [f"{base}/requests/{rid}/{endpoint}" for rid in ids]
        counting = False
        done = 0
        errors = 0
        stop_at = 0.0

        async def poller(n: int) -> None:
            nonlocal done, errors
            url = urls[(n * len(urls)) // connections]
            while time.perf_counter() < stop_at:
                async with session.get(url) as resp:
                    await resp.read()
                    if counting:
                        if resp.status == 200:
                            done += 1
                        else:
                            errors += 1

        # warm-up: connections opened, code paths hot
        stop_at = time.perf_counter() + 1.0
        await asyncio.gather(*(poller(n) for n in range(connections)))
        counting = True
        cpu_before = _cpu_seconds(server_pid)
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(poller(n) for n in range(connections)))
        elapsed = time.perf_counter() - start
        cpu_after = _cpu_seconds(server_pid)
        busy = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / elapsed
        return done, elapsed, errors, busy


# the cores we may use, read before this process pins itself to one of them
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def bench_polls(seconds: float, connections: int, jobs: int, endpoint: str = "status") -> None:
    cores = CORES
    # the jobs must stay queued/running while we poll: one worker, an hour per job
    cmd = [sys.executable, "-m", "seedream_pipe", "sim", "--port", "0", "--workers", "1", "--latency", "3600"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        base = line.removeprefix("Simulator listening on ")
        pinned = bool(cores) and _pin(server.pid, cores[0])
        if len(cores) > 1:
            _pin(0, cores[1])
        done, elapsed, errors, busy = asyncio.run(_drive(base, seconds, connections, jobs, server.pid, endpoint))
    finally:
        server.terminate()
        server.wait(timeout=10)
    rate = done / elapsed
    where = f"server pinned to core {cores[0]}" if pinned else "server not pinned (no sched_setaffinity)"
    client = f"client on core {cores[1]}" if len(cores) > 1 else "client sharing the core"
    what = "status polls" if endpoint == "status" else "result reads of running jobs (the runner's looks)"
    print(f"{what}, {jobs:,} jobs in flight: {rate:,.0f}/s  ({done:,} in {elapsed:.1f} s, {errors} non-200)")
    print(f"  measured: `seedream-pipe sim` in its own process, {where}; aiohttp client, {client},")
    print(f"  {connections} concurrent keep-alive connections, each polling one job spread over the queue")
    if busy is not None:
        print(f"  server core busy {busy:.0%} while driven (below ~95%: the client was the limit)")
    verdict = "met" if rate >= GOAL_POLLS_PER_S else "NOT met"
    print(f"  goal >= {GOAL_POLLS_PER_S:,}/s: {verdict}")


def bench_render(runs: int) -> None:
    prompt = "Golden hour over terraced rice fields in Bali, drifting morning mist, tiny farmers on paths"
    for image_format, how in (("jpeg", "quality 90, as served by default"), ("png", "zlib level 1")):
        times = []
        size = 0
        for i in range(runs):
            start = time.perf_counter()
            data = render_file(f"{prompt} #{i}", "2048x2048 (1:1)", image_format)
            times.append(time.perf_counter() - start)
            size = len(data)
        name = image_format.upper()
        print(f"render 2048x2048 {name}: median {statistics.median(times) * 1000:.0f} ms over {runs} runs "
              f"(min {min(times) * 1000:.0f} ms, {size / 1e6:.2f} MB, {how}, one thread)")
        start = time.perf_counter()
        data = render_file(prompt, "4K", image_format)
        print(f"render 4096x4096 {name}: {(time.perf_counter() - start) * 1000:.0f} ms ({len(data) / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured polling time")
    parser.add_argument("--connections", type=int, default=64, help="concurrent client connections")
    parser.add_argument("--deep-queue", type=int, default=2000, help="queued jobs in the second run")
    parser.add_argument("--render-runs", type=int, default=5)
    args = parser.parse_args()
    for jobs, endpoint in ((8, "status"), (args.deep_queue, "status"), (args.deep_queue, "result")):
        bench_polls(args.seconds, args.connections, jobs, endpoint)
    bench_render(args.render_runs)


if __name__ == "__main__":
    main()
