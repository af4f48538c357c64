"""User overrides of the GPU registry: local prices and GPU types the suite does not ship.

The file is TOML or JSON (by its suffix); its path is the argument of `load_registry` or, failing
that, the environment variable PRETRAIN_BENCH_HARDWARE. It has one table, `gpus`, keyed by type name:

```toml
# A built-in type: give only the fields that change (here, a local quote).
[gpus.a100-40gb]
price_usd = 9500
price_date = 2025-03-01           # a TOML date, or "2025-03-01" as a string (JSON)
price_source = "vendor quote, March 2025"

# A new type: every field below is required except exclude, min_memory_mib and max_memory_mib.
[gpus.h100-nvl]
description = "NVIDIA H100 NVL 94GB"
memory_gib = 93.0                 # usable memory, the total CUDA reports (torch's OOM message)
match = ["h100 nvl"]              # lowercase pieces of the NVML device name, matched on word boundaries
exclude = []                      # pieces that veto a match
supports_tf32 = true
supports_bf16 = true
price_usd = 28000                 # a price needs price_date and price_source
price_date = 2025-01-10
price_source = "vendor quote"
[gpus.h100-nvl.peak_flops]        # dense FLOP/s; leave out a precision the card cannot run
fp32 = { flops = 60e12, source = "NVIDIA H100 datasheet, H100 NVL column" }
tf32 = { flops = 417.5e12, source = "NVIDIA H100 datasheet, H100 NVL column, halved (sparse)" }
bf16 = { flops = 835e12, source = "NVIDIA H100 datasheet, H100 NVL column, halved (sparse)" }
fp16 = { flops = 835e12, source = "NVIDIA H100 datasheet, H100 NVL column, halved (sparse)" }
```

The same in JSON: `{"gpus": {"h100-nvl": {"description": ..., "peak_flops": {"fp32": {"flops": 6e13,
"source": ...}}}}}`; JSON may also give `null` for a price field to drop a built-in's price.

New types are matched before the built-ins (a type one adds is usually the more specific one), and
each gets its pytest marker. Unknown fields, missing fields and wrong types are errors that name
the file and the field.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from hardware.registry import GPUS, PRECISIONS, GpuType, Peak
from models.names import suggest

ENV_VAR = "PRETRAIN_BENCH_HARDWARE"

# Field -> (accepted Python types, may be None, description for errors).
_FIELDS: dict[str, tuple[tuple[type, ...], bool, str]] = {
    "description": ((str,), False, "a string"),
    "memory_gib": ((int, float), False, "a number (GiB)"),
    "peak_flops": ((dict,), False, "a table of precision = {flops, source}"),
    "supports_tf32": ((bool,), False, "true or false"),
    "supports_bf16": ((bool,), False, "true or false"),
    "price_usd": ((int, float), True, "a number (US dollars)"),
    "price_date": ((datetime.date, str), True, "a date (YYYY-MM-DD)"),
    "price_source": ((str,), True, "a string"),
    "match": ((list,), False, "a list of lowercase strings"),
    "exclude": ((list,), False, "a list of lowercase strings"),
    "min_memory_mib": ((int,), True, "an integer (MiB)"),
    "max_memory_mib": ((int,), True, "an integer (MiB)"),
}
_OPTIONAL_FOR_NEW = {"exclude", "min_memory_mib", "max_memory_mib"}


class HardwareFileError(ValueError):
    """A user hardware file that cannot be read or does not validate; the message names the field."""


def load_registry(path: str | os.PathLike[str] | None = None) -> dict[str, GpuType]:
    """The registry with the user's file applied: `path`, else $PRETRAIN_BENCH_HARDWARE, else the built-ins.

    Returns a new dict (user-added types first, then the built-ins in their matching order)."""
    if path is None:
        path = os.environ.get(ENV_VAR) or None
        if path is None:
            return dict(GPUS)
    return _apply(_read(Path(path)), Path(path))


@functools.cache
def _active(env_value: str | None) -> dict[str, GpuType]:
    return load_registry(env_value) if env_value else dict(GPUS)


def active_registry() -> dict[str, GpuType]:
    """load_registry() for the current $PRETRAIN_BENCH_HARDWARE, read once per value and process."""
    return _active(os.environ.get(ENV_VAR) or None)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise HardwareFileError(
            f"cannot read the hardware file {str(path)!r} ({ENV_VAR}): {error}"
        ) from error
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict):
                raise HardwareFileError(f"{path}: the top level must be an object with a 'gpus' table")
            return data
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise HardwareFileError(f"{path}: not valid {path.suffix[1:].upper()}: {error}") from error
    raise HardwareFileError(f"{path}: a hardware file ends in .toml or .json")


def _apply(data: dict[str, Any], path: Path) -> dict[str, GpuType]:
    _no_unknown(data, {"gpus"}, f"{path}")
    gpus = data.get("gpus", {})
    if not isinstance(gpus, dict):
        raise HardwareFileError(f"{path}: 'gpus' must be a table of GPU types")
    added: dict[str, GpuType] = {}
    replaced: dict[str, GpuType] = {}
    for name, entry in gpus.items():
        where = f"{path}: gpus.{name}"
        if not isinstance(entry, dict):
            raise HardwareFileError(f"{where}: must be a table of fields")
        _no_unknown(entry, set(_FIELDS), where)
        values = {key: _convert(key, value, where) for key, value in entry.items()}
        missing = set(_FIELDS) - _OPTIONAL_FOR_NEW - set(values)
        if name not in GPUS and missing:
            raise HardwareFileError(f"{where}: a new GPU type needs field(s) {', '.join(sorted(missing))}")
        try:
            if name in GPUS:
                replaced[name] = dataclasses.replace(GPUS[name], **values)
            else:
                added[name] = GpuType(name=name, **values)
        except ValueError as error:  # GpuType's own checks: a bad name, a price without its date...
            raise HardwareFileError(f"{where}: {error}") from error
    return {**added, **{name: replaced.get(name, gpu) for name, gpu in GPUS.items()}}


def _no_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            close = suggest(key, sorted(known))
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise HardwareFileError(
                f"{where}: unknown field {key!r}.{hint} Known: {', '.join(sorted(known))}"
            )


def _convert(key: str, raw: Any, where: str) -> Any:
    types, nullable, wanted = _FIELDS[key]
    if raw is None and nullable:
        return None
    # bool is an int subclass: `memory_gib = true` must not pass as 1.
    if isinstance(raw, bool) and bool not in types or not isinstance(raw, types):
        raise HardwareFileError(f"{where}.{key}: must be {wanted}, got {raw!r}")
    value: Any = raw  # of the field's types now; mypy cannot follow the table
    if key in ("memory_gib", "price_usd"):
        return float(value)
    if key == "price_date" and isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError as error:
            raise HardwareFileError(f"{where}.{key}: must be {wanted}, got {value!r}") from error
    if key == "price_date" and isinstance(value, datetime.datetime):
        return value.date()
    if key in ("match", "exclude"):
        if not all(isinstance(piece, str) for piece in value):
            raise HardwareFileError(f"{where}.{key}: must be {wanted}, got {value!r}")
        return tuple(value)
    if key == "peak_flops":
        return {precision: _peak(precision, rate, f"{where}.peak_flops") for precision, rate in value.items()}
    return value


def _peak(precision: str, rate: Any, where: str) -> Peak:
    _no_unknown({precision: None}, set(PRECISIONS), where)
    if not isinstance(rate, dict):
        raise HardwareFileError(f'{where}.{precision}: must be a table {{flops = ..., source = "..."}}')
    _no_unknown(rate, {"flops", "source"}, f"{where}.{precision}")
    flops, source = rate.get("flops"), rate.get("source")
    if isinstance(flops, bool) or not isinstance(flops, (int, float)):
        raise HardwareFileError(f"{where}.{precision}.flops: must be a number (FLOP/s), got {flops!r}")
    if not isinstance(source, str):
        raise HardwareFileError(f"{where}.{precision}.source: must be a string naming the datasheet")
    try:
        return Peak(flops=float(flops), source=source)
    except ValueError as error:
        raise HardwareFileError(f"{where}.{precision}: {error}") from error
