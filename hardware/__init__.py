"""GPU registry (memory, dense peak FLOP/s with sources, prices), node detection and pytest markers.

Importing this package loads neither torch nor pynvml; detection imports pynvml when it runs.
"""

from hardware.detect import Node, detect_node
from hardware.overrides import HardwareFileError, active_registry, load_registry
from hardware.registry import (
    GPUS,
    PRECISIONS,
    GpuType,
    Peak,
    get_gpu,
    machine_base_cost,
    marker_name,
    match_gpu,
)

__all__ = [
    "GPUS",
    "PRECISIONS",
    "GpuType",
    "HardwareFileError",
    "Node",
    "Peak",
    "active_registry",
    "detect_node",
    "get_gpu",
    "load_registry",
    "machine_base_cost",
    "marker_name",
    "match_gpu",
]
