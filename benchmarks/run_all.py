"""Every benchmark, one table: ``python -m benchmarks.run_all [--smoke]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmarks import (
    bench_deferreds,
    bench_http,
    bench_loop,
    bench_prometheus,
    bench_snapshot,
    bench_sse,
    soak,
)
from benchmarks.common import Result, print_table


def main(argv: Sequence[str] | None = None) -> list[Result]:
    args = list(sys.argv[1:] if argv is None else argv)
    results: list[Result] = []
    results += bench_deferreds.main(args)
    results += bench_snapshot.main(args)
    results += bench_loop.main(args)
    results += bench_prometheus.main(args)
    results += bench_sse.main(args)
    results += bench_http.main([*args, "--kind", "klein"])
    results += bench_http.main([*args, "--kind", "klein", "--together"])
    results += bench_http.main([*args, "--kind", "web"])
    results += soak.main(args)  # 10 minutes at full size; --smoke: 12 s
    print("\n== all ==")
    print_table(results)
    return results


if __name__ == "__main__":
    main()
