"""Peak RSS of building a store's index generation (issue 20: the index build's memory against the store's size).

``python benchmarks/bench_index_peak.py STORE`` — in this (fresh) process, ``Generations(STORE).build(<current model
version>, publish=False)`` (the generation folder is left unpublished), then prints CPU seconds, vectors and the
process's peak RSS. Run it once per store size; reports, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    a = ap.parse_args()
    from raretarget import Engine
    from raretarget.index.generations import Generations

    version = Engine.open(a.store).current_model()["model_version"]
    t0 = time.process_time()
    info = Generations(a.store).build(version, publish=False)
    print(json.dumps({"cpu_seconds": round(time.process_time() - t0, 1), "vectors": sum(info["counts"].values()),
                      "counts": info["counts"],
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main()
