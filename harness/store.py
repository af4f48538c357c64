"""Append-only results store: one JSON file per result, written atomically.

A result is `<root>/<case id>/<fingerprint>-<time>.json`, written to a temporary name and renamed
into place, so an interrupted run leaves either a whole record or none; a corrupt file found later
is reported and skipped, and loses nothing else. The newest record for a (case, fingerprint) pair
wins, so resuming skips completed cases and a forced rerun simply adds a newer record.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from harness.cases import Case
from harness.result import Result

DEFAULT_ROOT = Path("runs") / "results"


class ResultStore:
    def __init__(self, root: Path | str = DEFAULT_ROOT):
        self.root = Path(root)

    def append(self, result: Result) -> Path:
        folder = self.root / result.case.id
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(result.created)) + f"{result.created % 1:.6f}"[1:]
        return _write_atomic(folder / f"{result.fingerprint or 'nofp'}-{stamp}.json", result.to_dict())

    def append_check(self, kind: str, record: dict[str, Any]) -> Path:
        """Store a check of a result (kind "validation", "validation-part" or "parity") under `_<kind>/`."""
        folder = self.root / f"_{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        created = record.setdefault("created", time.time())
        return _write_atomic(folder / f"{record['case_id']}-{created:.6f}.json", record)

    def check_history(self, kind: str) -> list[dict[str, Any]]:
        """Every readable check of this kind, oldest first."""
        records = self._read(sorted((self.root / f"_{kind}").glob("*.json")))
        return sorted(records, key=lambda r: r["created"])

    def checks(self, kind: str) -> list[dict[str, Any]]:
        """The newest check of each case of this kind."""
        newest: dict[str, dict[str, Any]] = {}
        for record in self.check_history(kind):
            if record["created"] >= newest.get(record["case_id"], {}).get("created", 0.0):
                newest[record["case_id"]] = record
        return sorted(newest.values(), key=lambda r: r["case_id"])

    def _read(self, paths: list[Path]) -> list[dict[str, Any]]:
        out = []
        for path in paths:
            try:
                out.append(json.loads(path.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                warnings.warn(f"skipping corrupt record {path}: {error}", stacklevel=3)
        return out

    def records(self) -> list[dict[str, Any]]:
        """Every readable result (oldest first); unreadable ones are warned about and skipped."""
        # Folders starting with "_" hold checks of results (validation, parity), not results.
        paths = sorted(p for p in self.root.glob("*/*.json") if not p.parent.name.startswith("_"))
        return sorted(self._read(paths), key=lambda r: r.get("created", 0.0))

    def results(self) -> list[Result]:
        return [Result.from_dict(r) for r in self.records()]

    def latest(self, case_id: str, fingerprint: str | None = None) -> Result | None:
        paths = sorted((self.root / case_id).glob(f"{fingerprint or ''}*.json"))
        if fingerprint is not None:
            paths = [p for p in paths if p.name.startswith(f"{fingerprint}-")]
        found = max(self._read(paths), key=lambda r: r.get("created", 0.0), default=None)
        return Result.from_dict(found) if found else None

    def latest_comparable(self, case: Case, environment: dict[str, Any]) -> Result | None:
        """The newest usable result of a case measured on this machine's hardware and software stack,
        whatever version of this code measured it: what checks of stored predictions start from."""
        from harness.env import key_fields

        fields = [k for k in key_fields(case) if k != "code_version"]
        found = [
            r
            for r in self._read(sorted((self.root / case.id).glob("*.json")))
            if r.get("status") == "ok" and all(r["environment"].get(k) == environment.get(k) for k in fields)
        ]
        newest = max(found, key=lambda r: r.get("created", 0.0), default=None)
        return Result.from_dict(newest) if newest else None

    def latest_per_case(self) -> dict[str, Result]:
        """The newest result of each case over all fingerprints (for reports merging several runs)."""
        newest: dict[str, Result] = {}
        for result in self.results():
            newest[result.case.id] = result
        return newest


def _write_atomic(path: Path, data: dict[str, Any]) -> Path:
    """Write to a temporary name, flush to disk, rename: readers see a whole record or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)
    return path
