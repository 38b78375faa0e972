"""Run the three benchmarks in one go, on one proxy, and print their figures together.

    .venv/bin/python -m bench.run_all              # the issue's sizes (about 40 minutes on 2 cores)
    .venv/bin/python -m bench.run_all --smoke      # tiny sizes
    .venv/bin/python -m bench.run_all --json out.json --home /tmp/bench   # keep the figures and files

The proxy and the simulated provider are started once in the benchmark folder and reused by each
benchmark (they share one registry; each sets the provider's latency it needs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import common, overhead, scale, throughput
from bench.common import Caps, say


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    parser.add_argument("--profile", action="store_true", help="py-spy each benchmark (slower)")
    parser.add_argument("--home", type=Path, default=None, help="benchmark folder (default: a temp one)")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures here")
    parser.add_argument("--only", choices=["throughput", "overhead", "scale"], action="append",
                        help="run only these (repeatable)")
    args = parser.parse_args(argv)
    chosen = args.only or ["throughput", "overhead", "scale"]
    modules = {"throughput": throughput, "overhead": overhead, "scale": scale}
    results: dict[str, Any] = {}
    with common.bench_home(args.home) as home:
        shared = ["--home", str(home.root), "--keep-stack"] + (["--smoke"] if args.smoke else []) + (
            ["--profile"] if args.profile else [])
        try:
            for name in chosen:
                results[name] = modules[name].main(shared)
        finally:
            with common.bench_environment(home, Caps()):
                common.stop_stack()
    say("\n# All figures\n")
    for name in chosen:
        say(f"## {name}\n")
        say(modules[name].report(results[name]))
        say()
    common.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
