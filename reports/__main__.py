"""Regenerate the report from stored results and checks, without a GPU or a benchmark run.

python -m reports --results-dir runs/results --out runs/report/regenerated

The store's newest step-time validation and loss-parity check per case (`_validation/`, `_parity/`)
go into validation.csv/.md and parity.csv/.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.store import DEFAULT_ROOT, ResultStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results-dir", type=Path, default=DEFAULT_ROOT, help="the results store (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / "report" / "regenerated",
        help="folder to write the report to (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    if not args.results_dir.is_dir():
        parser.error(f"{args.results_dir} is not a folder: no results store there")
    store = ResultStore(args.results_dir)
    results = list(store.latest_per_case().values())
    validations, parities = store.checks("validation"), store.checks("parity")
    if not results and not validations and not parities:
        print(f"no results or checks in {args.results_dir}: nothing to report", file=sys.stderr)
        return 1

    from reports.build import check_lines, summary_table, write_report
    from reports.rows import groups
    from reports.tables import text_table

    searches = store.check_history("search")
    files = write_report(results, args.out, validations=validations, parities=parities, searches=searches)
    if results:
        print("\n".join(text_table(summary_table(groups(results)).frame)))
    for line in check_lines(validations, parities):
        print(line)
    from reports.search import search_lines

    for line in search_lines(searches):
        print(line)
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
