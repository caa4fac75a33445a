"""One nightly update of a store, with the process's RSS and peak RSS after each stage (issue 20: the night's
memory against the store's size).

    python benchmarks/bench_night_rss.py STORE NIGHT_FOLDER

STORE is changed (run it on a copy). Prints one line per stage (``after <stage> <RSS MB> <peak MB> <CPU s>``) and a
JSON summary (CPU s, peak MB, the run log's counts and seconds)."""

from __future__ import annotations

import json
import resource
import sys
import time


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    from raretarget import Engine
    from raretarget.apps.nightly import update

    def after(stage: str) -> None:
        print("after", stage, rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
              round(time.process_time(), 1), flush=True)

    t = time.process_time()
    log = update(Engine.open(sys.argv[1]), [sys.argv[2]], after_stage=after, device="cpu")
    print(json.dumps({"cpu_s": round(time.process_time() - t, 1),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      "published": log.get("published"), "mode": log.get("mode"), "counts": log.get("counts"),
                      "seconds": log.get("seconds")}))


if __name__ == "__main__":
    main()
