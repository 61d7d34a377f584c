#!/usr/bin/env python3
"""Ratios of each bench to the `bare` floor of its group and size, from one criterion run.

Usage: python3 benches/ratios.py [target/criterion] [group-prefix ...]

Reads every `<group>/<function>/<size>/new/{benchmark,estimates}.json` that criterion wrote and
prints, per group and size, the mean time of each function and its ratio to `bare` (the floor
that calls the pure-Rust primitives directly). Ratios are only meaningful within one run: run
the bench once, then this script.
"""

import json
import pathlib
import sys


def main() -> None:
    args = sys.argv[1:]
    root = pathlib.Path(args[0] if args and not args[0].startswith(("seal", "open", "sse")) else "target/criterion")
    prefixes = [a for a in args if a != str(root)] or [""]
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for bench in root.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        group = meta["group_id"]
        if not any(group.startswith(p) for p in prefixes):
            continue
        est = json.loads((bench.parent / "estimates.json").read_text())
        size = meta.get("value_str") or ""
        rows.setdefault((group, size), {})[meta["function_id"]] = est["mean"]["point_estimate"]
    for (group, size), funcs in sorted(rows.items(), key=lambda kv: (kv[0][0], int(kv[0][1] or 0))):
        floor = funcs.get("bare")
        cells = []
        for name, ns in sorted(funcs.items()):
            ratio = f" {ns / floor:.2f}x" if floor and name != "bare" else ""
            cells.append(f"{name} {ns / 1000:.1f} µs{ratio}")
        print(f"{group:<22} {size:>6}  " + " | ".join(cells))


if __name__ == "__main__":
    main()
