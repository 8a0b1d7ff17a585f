#!/usr/bin/env python3
"""Sums an Nsight Compute CSV by kernel: where a profiled step's GPU time goes.

Reads `ncu --csv --page raw --metrics gpu__time_duration.sum ...` output on stdin (one row per
launch) and prints, per kernel name (template arguments and parameters stripped), the launches,
the total milliseconds, the share of the total and the mean microseconds per launch, largest
first; with SLOWEST > 0 also the slowest single launches, each with its grid (when the CSV has
launch__grid_size) and the kernels launched just before and after it, to tell apart the calls of
one kernel. ncu runs kernels one at a time; by default at base clocks with cold caches, so totals
run higher than the same step's wall time (compare shares), while with `--clock-control none
--cache-control none` (scripts/gpu_checks.sh kernels) a CUDA-graph decode step's kernel times add
up to about its wall time.

    ncu --profile-from-start off --csv --page raw --metrics gpu__time_duration.sum \\
        BINARY ARGS... | python3 scripts/ncu_kernel_table.py [TOP=40] [SLOWEST=0]
"""
import csv
import re
import sys
from collections import defaultdict


def short_name(name: str) -> str:
    """`void ns::Kernel<int, 4>(float const*, ...)` -> `ns::Kernel`."""
    name = re.sub(r"\(.*$", "", name)  # parameters
    depth, out = 0, []
    for ch in name:  # template arguments, nested
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    name = "".join(out).strip()
    return name.split(" ")[-1] if " " in name else name


def main() -> int:
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    slowest = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    lines = [line for line in sys.stdin if line.startswith('"')]  # ncu's CSV rows are quoted
    if not lines:
        print("no ncu CSV rows on stdin (was anything between cudaProfilerStart/Stop?)")
        return 1
    rows = csv.DictReader(lines)
    totals = defaultdict(lambda: [0, 0.0])
    launches = []  # (name, duration, grid) in launch order
    for row in rows:
        value = row.get("gpu__time_duration.sum", "")
        try:
            duration = float(value.replace(",", ""))
        except ValueError:
            continue  # the units row
        name = short_name(row.get("Kernel Name", "?"))
        launches.append((name, duration, row.get("launch__grid_size", "")))
        entry = totals[name]
        entry[0] += 1
        entry[1] += duration
    # gpu__time_duration.sum is in nanoseconds unless the units row says otherwise (usecond/msecond).
    unit_scale = 1e-6
    for line in lines[1:2]:
        if "usecond" in line:
            unit_scale = 1e-3
        elif "msecond" in line:
            unit_scale = 1.0
    grand = sum(ms for _, ms in totals.values()) * unit_scale
    print(f"{'kernel':<60} {'launches':>8} {'ms':>9} {'share':>6} {'us/launch':>10}")
    for name, (count, total) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]:
        ms = total * unit_scale
        print(f"{name[:60]:<60} {count:>8} {ms:>9.3f} {ms / grand:>6.1%} {ms * 1e3 / count:>10.1f}")
    print(f"{'total':<60} {sum(c for c, _ in totals.values()):>8} {grand:>9.3f}")
    if slowest > 0:
        print(f"\nslowest launches (#: launch index; grid: blocks; before -> KERNEL -> after)")
        order = sorted(range(len(launches)), key=lambda i: -launches[i][1])[:slowest]
        for i in order:
            name, duration, grid = launches[i]
            before = launches[i - 1][0] if i > 0 else "-"
            after = launches[i + 1][0] if i + 1 < len(launches) else "-"
            print(f"#{i:<6} {duration * unit_scale * 1e3:>9.1f} us  grid {grid:>8}  "
                  f"{before[:34]} -> {name[:48]} -> {after[:34]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
