"""`python -m hardware`: print this node's pytest marker (cpu where there is no GPU), for scripts:

    pytest bench -m "$(python -m hardware)"

`python -m hardware --describe` prints the detected node instead. An unknown or mixed GPU node is
an error (exit 1) rather than a guess: add the card to a hardware file (see hardware/overrides.py).
"""

from __future__ import annotations

import argparse
import sys

from hardware import detect_node, marker_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardware", description="the detected node's marker")
    parser.add_argument("--describe", action="store_true", help="print the detected node, not its marker")
    args = parser.parse_args(argv)
    node = detect_node()
    if args.describe:
        print(node)
        for field in ("gpu_name", "count", "memory_mib", "driver_version", "interconnect", "cpu_count"):
            print(f"  {field}: {getattr(node, field)}")
        return 0
    if node.gpu_type is None:
        print(
            f"unknown or mixed GPUs on this node ({node}); add the card with PRETRAIN_BENCH_HARDWARE",
            file=sys.stderr,
        )
        return 1
    print(marker_name(node.gpu_type))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
