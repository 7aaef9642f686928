"""Benchmark: plan a 100,000-job grid and print the wall time and peak memory.

Goal on a 2-core machine: under 2 s and under 300 MB. Run: `.venv/bin/python bench/plan_bench.py`.
The recipe is written to a temporary folder: five vars of ten values each (10^5 combinations),
one template using all of them, one resolution. `--filtered` plans the same number of jobs the
hard way: the same grid, half of it excluded, two repeats of each combination left. Peak memory is the
process's maximum resident set size, which includes the interpreter and the imported libraries
(printed as "before loading").
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
name: bench
template: >-
  {{ subject }} in {{ place }} at {{ time }}, {{ mood }}, {{ style }}
vars:
  subject: [%(subject)s]
  place: [%(place)s]
  time: [%(time)s]
  mood: [%(mood)s]
  style: [%(style)s]
resolutions: ["16:9"]
price_per_image: 0.03
"""

FILTERED = """\
exclude:
  - {style: [%(half)s]}
repeats: 2
"""


def write_recipe(folder: Path, per_var: int, filtered: bool) -> Path:
    sizes = dict.fromkeys(("subject", "place", "time", "mood", "style"), per_var)
    words = {name: ", ".join(f"{name} number {i}" for i in range(n)) for name, n in sizes.items()}
    text = RECIPE % words
    if filtered:
        text += FILTERED % {"half": ", ".join(f"style number {i}" for i in range(per_var // 2))}
    path = folder / "bench.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-var", type=int, default=10, help="values per var (5 vars): 10 -> 100,000 jobs")
    parser.add_argument("--filtered", action="store_true", help="exclude half of the grid, 2 repeats")
    args = parser.parse_args()
    from seedream_pipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        path = write_recipe(Path(tmp), args.per_var, args.filtered)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cpu_started = time.process_time()
        started = time.perf_counter()
        recipe = load_recipe(path)
        loaded = time.perf_counter()
        plan = recipe.plan(allow_large=True)
        finished = time.perf_counter()
        cpu = time.process_time() - cpu_started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"jobs:            {len(plan):,}")
    print(f"load + check:    {loaded - started:.3f} s")
    print(f"expand:          {finished - loaded:.3f} s")
    print(f"wall time:       {finished - started:.3f} s  (goal < 2 s)")
    print(f"CPU time:        {cpu:.3f} s  (this process's own; wall time also counts waits for a busy core)")
    print(f"peak RSS:        {peak:.0f} MB  (goal < 300 MB; {rss_before:.0f} MB before loading)")
    print(f"per job:         {(finished - started) / len(plan) * 1e6:.1f} µs")
    ok = finished - started < 2.0 and peak < 300
    print("goal met" if ok else "goal NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
