"""What this node has: GPU type and count, memory, driver, interconnect, host CPUs.

Detection asks NVML (pynvml, from nvidia-ml-py) and falls back to `nvidia-smi`; neither creates a
CUDA context, so the pytest controller can detect hardware without taking GPU memory or fixing the
device set of the workers it will launch (torch.cuda is never imported here).

Only the GPUs in CUDA_VISIBLE_DEVICES count, read as CUDA reads it: indices or `GPU-<uuid>`
prefixes, separated by commas, cut at the first invalid entry ("" or "-1" hides every GPU). CUDA's
default order is fastest-first while NVML's is PCI order; on a node of one GPU type, the only kind
a benchmark runs on, the two agree. MIG instances are refused with an error: their memory and
speed are a slice of the card, and no registry entry describes them.

A node with two GPU types is *marked*, not refused: `gpu_type` is None, `mixed` is True and
`gpu_name` lists the cards ("2 x NVIDIA H100 80GB HBM3 + 1 x NVIDIA RTX A6000"), so that every GPU
case skips with that reason; set CUDA_VISIBLE_DEVICES to one type to benchmark it.

PRETRAIN_BENCH_NODE="h100x4" (or "a100-40gb", "cpu") skips detection and describes a node from the
registry, for dry runs and tests on machines without those GPUs. The result is cached per process:
detect_node.cache_clear() after changing either variable.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hardware.registry import GPUS, GpuType, active_registry, get_gpu, match_gpu

NODE_ENV = "PRETRAIN_BENCH_NODE"
SMI_QUERY = ["--query-gpu=name,memory.total,driver_version,uuid", "--format=csv,noheader,nounits"]
SMI_TIMEOUT_S = 30
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # recent `nvidia-smi topo -m` underlines its header


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuRecord:
    """One GPU as NVML or nvidia-smi lists it (physical index, PCI order)."""

    index: int
    name: str
    memory_mib: int | None
    driver_version: str | None
    uuid: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Node:
    """This node as the benchmark sees it. `count` is the number of visible GPUs (0 on a CPU node),
    `memory_mib` the smallest visible GPU's memory as NVML reports it (the host's on a CPU node)."""

    gpu_type: str | None  # registry name; "cpu" without GPUs; None when unknown or mixed
    gpu_name: str
    count: int
    memory_mib: int | None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    interconnect: str | None = None  # "nvlink", "pcie", or None (one GPU, or not known)
    cpu_count: int
    mixed: bool = False
    source: str = "nvml"  # nvml, nvidia-smi, env (PRETRAIN_BENCH_NODE) or none (no GPU found)

    def __str__(self) -> str:
        if self.gpu_type == "cpu":
            return f"cpu ({self.cpu_count} cores, no GPU)"
        if self.mixed:
            return f"mixed GPUs ({self.gpu_name})"
        if self.gpu_type is None:
            return f"{self.count} x unknown GPU {self.gpu_name!r}"
        return f"{self.count} x {self.gpu_type}"

    def mismatch(self, gpu_type: str, num_gpus: int) -> str | None:
        """Why a case needing `num_gpus` x `gpu_type` cannot run here, or None when it can. A cpu case
        runs one process per "GPU" on any node with that many cores."""
        need = f"case needs {num_gpus} x {gpu_type}"
        if gpu_type == "cpu":
            return (
                None
                if num_gpus <= self.cpu_count
                else f"{need} processes; this node has {self.cpu_count} cores"
            )
        if self.gpu_type != gpu_type or self.count < num_gpus:
            hint = "; set CUDA_VISIBLE_DEVICES to one type" if self.mixed else ""
            return f"{need}; this node has {self}{hint}"
        return None


def parse_nvidia_smi(text: str) -> list[GpuRecord]:
    """Rows of `nvidia-smi --format=csv,noheader,nounits --query-gpu=name,memory.total,driver_version`
    (optionally `,uuid` after them)."""
    records: list[GpuRecord] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) not in (3, 4):
            raise ValueError(
                f"unexpected nvidia-smi line {line!r}: want name, memory.total, driver_version[, uuid]"
            )
        name, memory, driver = fields[:3]
        records.append(
            GpuRecord(
                index=len(records),
                name=name,
                memory_mib=int(memory) if memory.isdigit() else None,  # "[N/A]" on unified-memory boards
                driver_version=driver if driver and not driver.startswith("[") else None,
                uuid=fields[3] if len(fields) == 4 else None,
            )
        )
    return records


def parse_topology(text: str) -> dict[tuple[int, int], str]:
    """The GPU-to-GPU links of `nvidia-smi topo -m`: {(0, 1): "NV18", (0, 2): "SYS", ...}, i < j."""
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    header = next((line.split() for line in lines if re.search(r"\bGPU0\b", line)), [])
    columns = [int(token[3:]) for token in header if re.fullmatch(r"GPU[0-9]+", token)]
    links = {}
    for line in lines:
        tokens = line.split()
        if not tokens or not re.fullmatch(r"GPU[0-9]+", tokens[0]) or tokens == header:
            continue
        row = int(tokens[0][3:])
        for column, label in zip(columns, tokens[1 : 1 + len(columns)], strict=False):
            if row < column:
                links[(row, column)] = label
    return links


def interconnect_from_links(labels: Iterable[str]) -> str | None:
    """ "nvlink" when every pair of GPUs has NVLink ("NV<n>"), "pcie" when any pair goes over PCIe or
    the CPU (the slowest pair bounds a collective), None without pairs (one GPU)."""
    labels = list(labels)
    if not labels:
        return None
    return "nvlink" if all(label.upper().startswith("NV") for label in labels) else "pcie"


def visible_indices(env_value: str | None, uuids: Sequence[str | None]) -> list[int]:
    """The physical indices CUDA_VISIBLE_DEVICES leaves visible, in its order, as CUDA parses it."""
    if env_value is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for raw in env_value.split(","):
        token = raw.strip()
        if token.startswith("MIG-"):
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={env_value!r} selects MIG instances; the benchmark needs whole GPUs"
            )
        index: int | None = None
        if token.isdigit():
            index = int(token)
        elif token.upper().startswith("GPU-"):
            hits = [i for i, uuid in enumerate(uuids) if uuid and uuid.lower().startswith(token.lower())]
            index = hits[0] if len(hits) == 1 else None  # an ambiguous prefix is invalid, as for CUDA
        if index is None or index >= len(uuids) or index in chosen:
            break  # CUDA ignores an invalid entry and everything after it
        chosen.append(index)
    return chosen


def host_cpu_count() -> int:
    """CPUs this process may run on (affinity and cpusets count, unlike os.cpu_count())."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_node(cpu_count: int, source: str = "none") -> Node:
    return Node(
        gpu_type="cpu",
        gpu_name=platform.processor() or platform.machine() or "cpu",
        count=0,
        memory_mib=round(GPUS["cpu"].memory_gib * 1024),
        cpu_count=cpu_count,
        source=source,
    )


def build_node(
    records: Sequence[GpuRecord],
    *,
    visible: Sequence[int] | None = None,
    cuda_driver_version: str | None = None,
    links: Mapping[tuple[int, int], str] | None = None,
    cpu_count: int,
    source: str,
    registry: Mapping[str, GpuType] | None = None,
) -> Node:
    """A Node from listed GPUs: keep the visible ones, match their type, summarise the links among them."""
    chosen = [records[i] for i in (visible if visible is not None else range(len(records)))]
    if not chosen:
        return cpu_node(cpu_count, source)
    types = [match_gpu(r.name, r.memory_mib, registry) for r in chosen]
    kinds = list(dict.fromkeys(gpu.name if gpu else r.name for gpu, r in zip(types, chosen, strict=True)))
    mixed = len(kinds) > 1
    if mixed:
        names = [r.name for r in chosen]
        gpu_name = " + ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))
    else:
        gpu_name = chosen[0].name
    memories = [r.memory_mib for r in chosen if r.memory_mib is not None]
    indices = sorted(r.index for r in chosen)
    pairs = [(a, b) for i, a in enumerate(indices) for b in indices[i + 1 :]]
    labels = [links[p] for p in pairs if p in links] if links is not None else []
    return Node(
        gpu_type=None if mixed or types[0] is None else types[0].name,
        gpu_name=gpu_name,
        count=len(chosen),
        memory_mib=min(memories) if memories else None,
        driver_version=chosen[0].driver_version,
        cuda_driver_version=cuda_driver_version,
        # Links of only some pairs (a failed query) say nothing about the rest.
        interconnect=interconnect_from_links(labels) if len(labels) == len(pairs) else None,
        cpu_count=cpu_count,
        mixed=mixed,
        source=source,
    )


def node_from_spec(spec: str, cpu_count: int | None = None) -> Node:
    """A Node described by PRETRAIN_BENCH_NODE: "<type>x<count>" or "<type>" (one GPU), e.g. h100x4."""
    cpus = cpu_count if cpu_count is not None else host_cpu_count()
    text = spec.strip().lower()
    name, sep, count_text = text.rpartition("x")
    # "rtx3090" is a type, not "rt" x 3090; "rtx3090x2" splits at its last x.
    if text in active_registry() or not sep or not count_text.isdigit():
        name, count_text = text, "1"
    gpu = get_gpu(name)  # an unknown type names the close ones
    if gpu.name == "cpu":
        return cpu_node(cpus, source="env")
    count = int(count_text)
    if count < 1:
        raise ValueError(f"{NODE_ENV}={spec!r}: a node needs at least one GPU")
    return Node(
        gpu_type=gpu.name,
        gpu_name=gpu.description,
        count=count,
        memory_mib=round(gpu.memory_gib * 1024),
        cpu_count=cpus,
        source="env",
    )


@functools.cache
def detect_node() -> Node:
    """This node: PRETRAIN_BENCH_NODE if set, else NVML, else nvidia-smi, else a CPU node. Cached."""
    cpus = host_cpu_count()
    spec = os.environ.get(NODE_ENV)
    if spec:
        return node_from_spec(spec, cpus)
    env_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    found = _query_nvml(env_visible)
    if found is None:
        found = _query_nvidia_smi(env_visible)
    if found is None:
        return cpu_node(cpus)
    records, visible, cuda_version, links, source = found
    return build_node(
        records, visible=visible, cuda_driver_version=cuda_version, links=links, cpu_count=cpus, source=source
    )


_Found = tuple[list[GpuRecord], list[int], str | None, dict[tuple[int, int], str], str]


def _query_nvml(env_visible: str | None) -> _Found | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver or no library: let nvidia-smi have its say
        return None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        version = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        records = [
            GpuRecord(
                index=i,
                name=_text(pynvml.nvmlDeviceGetName(h)),
                memory_mib=pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                driver_version=driver,
                uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
            )
            for i, h in enumerate(handles)
        ]
        visible = visible_indices(env_visible, [r.uuid for r in records])
        links = {}
        for n, a in enumerate(sorted(visible)):
            for b in sorted(visible)[n + 1 :]:
                status = pynvml.nvmlDeviceGetP2PStatus(
                    handles[a], handles[b], pynvml.NVML_P2P_CAPS_INDEX_NVLINK
                )
                links[(a, b)] = "NV" if status == pynvml.NVML_P2P_STATUS_OK else "PCIE"
    except pynvml.NVMLError as error:  # a lost GPU, an old driver without a call: try nvidia-smi
        warnings.warn(f"NVML query failed ({error}); trying nvidia-smi", RuntimeWarning, stacklevel=3)
        return None
    finally:
        pynvml.nvmlShutdown()
    return records, visible, f"{version // 1000}.{version % 1000 // 10}", links, "nvml"


def _query_nvidia_smi(env_visible: str | None) -> _Found | None:
    listing = _run_smi(SMI_QUERY)
    if listing is None:
        return None
    records = parse_nvidia_smi(listing)
    visible = visible_indices(env_visible, [r.uuid for r in records])
    topology = _run_smi(["topo", "-m"]) if len(visible) > 1 else None
    return records, visible, None, parse_topology(topology) if topology else {}, "nvidia-smi"


def _run_smi(args: list[str]) -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", *args], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        return None  # no NVIDIA driver tools: a CPU node
    except subprocess.TimeoutExpired:
        warnings.warn(f"nvidia-smi {' '.join(args)} hung for {SMI_TIMEOUT_S} s", RuntimeWarning, stacklevel=3)
        return None
    if done.returncode != 0:
        message = (done.stdout + done.stderr).strip()
        if "No devices were found" not in message:
            warnings.warn(f"nvidia-smi {' '.join(args)} failed: {message}", RuntimeWarning, stacklevel=3)
        return None
    return done.stdout


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older pynvml returns bytes
