"""Append-only results store: one JSON file per result, written atomically.

A result is `<root>/<case id>/<fingerprint>-<time>.json`, written to a temporary name and renamed
into place, so an interrupted run leaves either a whole record or none; a corrupt file found later,
or a readable one of the wrong shape (hand-edited, from another tool), is reported and skipped, and
loses nothing else. The newest record for a (case, fingerprint) pair wins, so resuming skips
completed cases and a forced rerun simply adds a newer record.

A record that cannot be written (a full disk, a read-only mount) is not lost with the measurement
that made it: it is kept under `<temp dir>/pretrain-bench-unsaved/` at the same relative path it
would have had in the store (copy that folder's contents into the store to put it back), and the
write raises `StoreWriteError` saying where it went. `check_writable()` finds such a store before
anything is measured.

The store's errors are OSErrors, so code that already handles a failing filesystem handles them;
their message is the whole story (the folder, the OS error, where the record went).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from harness.cases import Case, case_id
from harness.result import Result

DEFAULT_ROOT = Path("runs") / "results"
UNSAVED_FOLDER = "pretrain-bench-unsaved"  # under tempfile.gettempdir(): where unwritable records go

T = TypeVar("T")


class StoreNotWritableError(OSError):
    """The results folder cannot be created or written to (see `ResultStore.check_writable`)."""


class StoreWriteError(OSError):
    """A record could not be written to the store; `kept` is where it went instead (None: nowhere),
    `record` the record itself, so that a caller can still show it."""

    def __init__(self, message: str, *, path: Path, kept: Path | None, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.path, self.kept, self.record = path, kept, record


class _MalformedRecord(ValueError):
    """A record that is valid JSON but not of the shape its reader needs."""


# What Result.from_dict and the shape checks raise on a record of the wrong shape.
_MALFORMED = (_MalformedRecord, TypeError, KeyError, ValueError, AttributeError)


def unsaved_root() -> Path:
    """Where records the store could not take are kept (read at each failure: tests move the temp dir)."""
    return Path(tempfile.gettempdir()) / UNSAVED_FOLDER


class ResultStore:
    def __init__(self, root: Path | str = DEFAULT_ROOT):
        self.root = Path(root)

    def check_writable(self) -> None:
        """Create the root if needed and write, fsync and remove a probe file in it, so that a run on a
        read-only or full store stops before measuring instead of losing its first result."""
        probe = self.root / f".write-probe.{os.getpid()}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _write_synced(probe, "probe\n")
            probe.unlink()
        except OSError as error:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
            raise StoreNotWritableError(
                f"results folder {self.root} is not writable: {error}; nothing was measured"
            ) from error

    def append(self, result: Result) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(result.created)) + f"{result.created % 1:.6f}"[1:]
        name = f"{result.fingerprint or 'nofp'}-{stamp}.json"
        return self._write(Path(result.case.id) / name, result.to_dict())

    def append_check(self, kind: str, record: dict[str, Any]) -> Path:
        """Store a check of a result (kind "validation", "validation-part" or "parity") under `_<kind>/`."""
        created = record.setdefault("created", time.time())
        return self._write(Path(f"_{kind}") / f"{record['case_id']}-{created:.6f}.json", record)

    def _write(self, relative: Path, data: dict[str, Any]) -> Path:
        path = self.root / relative
        try:
            return _write_atomic(path, data)
        except OSError as error:
            failure = f"could not write the record to {path} ({error})"
            # The same relative path as in the store: checks stay under `_<kind>/`, where a reader of
            # the restored folder looks for them and no reader of results trips over them.
            fallback = unsaved_root() / relative
            kept: Path | None = None
            try:
                kept = _write_atomic(fallback, data)
            except OSError as fallback_error:
                where = f"; it could not be kept at {fallback} either ({fallback_error}), so it is not saved"
            else:
                where = f"; kept it at {fallback} instead (copy it into {self.root / relative.parent})"
            raise StoreWriteError(failure + where, path=path, kept=kept, record=data) from error

    def check_history(self, kind: str) -> list[dict[str, Any]]:
        """Every readable check of this kind, oldest first."""
        records = _read(sorted((self.root / f"_{kind}").glob("*.json")), _parse_check)
        return sorted(records, key=lambda r: r["created"])

    def checks(self, kind: str) -> list[dict[str, Any]]:
        """The newest check of each case of this kind."""
        newest: dict[str, dict[str, Any]] = {}
        for record in self.check_history(kind):
            if record["created"] >= newest.get(record["case_id"], {}).get("created", 0.0):
                newest[record["case_id"]] = record
        return sorted(newest.values(), key=lambda r: r["case_id"])

    def _stored(self) -> list[tuple[dict[str, Any], Result]]:
        # Folders starting with "_" hold checks of results (validation, parity), not results.
        paths = sorted(p for p in self.root.glob("*/*.json") if not p.parent.name.startswith("_"))
        return sorted(_read(paths, _parse_result), key=_created)

    def records(self) -> list[dict[str, Any]]:
        """Every readable result (oldest first); unreadable ones are warned about and skipped."""
        return [data for data, _ in self._stored()]

    def results(self) -> list[Result]:
        return [result for _, result in self._stored()]

    def latest(self, case_id: str, fingerprint: str | None = None) -> Result | None:
        paths = sorted((self.root / case_id).glob(f"{fingerprint or ''}*.json"))
        if fingerprint is not None:
            paths = [p for p in paths if p.name.startswith(f"{fingerprint}-")]
        found = max(_read(paths, _parse_result), key=_created, default=None)
        return found[1] if found else None

    def latest_comparable(self, case: Case, environment: dict[str, Any]) -> Result | None:
        """The newest usable result of a case measured on this machine's hardware and software stack,
        whatever version of this code measured it: what checks of stored predictions start from."""
        from harness.env import key_fields

        fields = [k for k in key_fields(case) if k != "code_version"]
        found = [
            (data, result)
            for data, result in _read(sorted((self.root / case.id).glob("*.json")), _parse_result)
            if result.status == "ok" and all(result.environment.get(k) == environment.get(k) for k in fields)
        ]
        newest = max(found, key=_created, default=None)
        return newest[1] if newest else None

    def latest_per_case(self) -> dict[str, Result]:
        """The newest result of each case over all fingerprints (for reports merging several runs)."""
        newest: dict[str, Result] = {}
        for result in self.results():
            newest[result.case.id] = result
        return newest


# -- reading --------------------------------------------------------------------------------------------


def _read(paths: Iterable[Path], parse: Callable[[Any], T]) -> list[T]:
    """Each file parsed; one that cannot be read, is not JSON or is not of the shape `parse` needs is
    warned about and skipped: one bad file must not hide the rest of the store."""
    out = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            _skip("corrupt", path, str(error))
            continue
        except OSError as error:  # removed since listed, a folder named *.json, no permission
            _skip("unreadable", path, str(error))
            continue
        try:
            out.append(parse(data))
        except _MALFORMED as error:
            why = str(error) if isinstance(error, _MalformedRecord) else f"{type(error).__name__}: {error}"
            _skip("malformed", path, why)
    return out


def _skip(kind: str, path: Path, why: str) -> None:
    warnings.warn(f"skipping {kind} record {path}: {why}", stacklevel=4)


def _created(found: tuple[dict[str, Any], Result]) -> float:
    # The stored time, as the records were always ordered (a record without one sorts first).
    return found[0].get("created", 0.0)


def _parse_result(data: Any) -> tuple[dict[str, Any], Result]:
    if (why := _shape_problem(data, Result, "")) is not None:
        raise _MalformedRecord(why)
    result = Result.from_dict(data)
    case_id(result.case)  # made lazily elsewhere: a name outside [a-z0-9.-] raises ValueError here, not later
    return data, result


def _parse_check(data: Any) -> dict[str, Any]:
    """A check needs a case id and a time to be ordered and merged; its other fields are the report's."""
    if not isinstance(data, dict):
        raise _MalformedRecord(f"the record is {_kind(data)}, not an object")
    if not isinstance(data.get("case_id"), str) or not data["case_id"]:
        raise _MalformedRecord(f"case_id is {data.get('case_id')!r}, not a case id")
    created = data.get("created")
    if isinstance(created, bool) or not isinstance(created, int | float) or not math.isfinite(created):
        raise _MalformedRecord(f"created is {created!r}, not a time")
    return data


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _shape_problem(value: Any, cls: type, where: str) -> str | None:
    """Why `value` cannot be read as the dataclass `cls` (None when it can): its required fields and
    the type of each field present, nested dataclasses included. Result.from_dict checks neither, and a
    string where a number belongs would otherwise break a report far from the file that holds it."""
    if not isinstance(value, dict):
        return f"{where.rstrip('.') or 'the record'} is {_kind(value)}, not an object"
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        name = f"{where}{field.name}"
        if field.name not in value:
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if required:
                return f"no {name!r}"
            continue
        hint, found = hints[field.name], value[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if (why := _shape_problem(found, hint, f"{name}.")) is not None:
                return why
        elif not _fits(found, hint):
            return f"{name} is {found!r}, not {_json_kind(hint)}"
    return None


_JSON_KINDS: dict[Any, str] = {
    type(None): "null",
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}


def _options(hint: Any) -> list[Any]:
    """The plain types an annotation allows: `dict[str, Any] | None` -> [dict, NoneType]."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return [typing.get_origin(o) or o for o in (typing.get_args(hint) if union else (hint,))]


def _json_kind(hint: Any) -> str:
    """`float | None` -> "a number or null": a field's annotation in the words of the file's format."""
    return " or ".join(_JSON_KINDS.get(o, str(o)) for o in _options(hint))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation; an annotation not known here is not judged."""
    for kind in _options(hint):
        if kind not in _JSON_KINDS:
            return True
        # JSON has one number type (an int is a fine float); true and false are not numbers.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return True
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return True
    return False


# -- writing --------------------------------------------------------------------------------------------


def _write_synced(path: Path, text: str) -> None:
    """Write and fsync one file: every byte the store writes goes through here (tests hook it to make
    the disk full or read-only)."""
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: dict[str, Any]) -> Path:
    """Write to a temporary name, flush to disk, rename: readers see a whole record or none."""
    text = json.dumps(data, indent=1, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_synced(tmp, text)
        tmp.replace(path)
    finally:
        # Whatever stopped the write (a full disk, an interrupt), no half-written file stays behind;
        # after the rename there is nothing left to remove.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path
