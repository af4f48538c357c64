"""One compile cache for every job of a run and for later runs on the node.

Compilation is the main cost of a search: each job is a fresh process, and a compiled model costs
about a minute to compile from cold on a GPU (Pythia-160M on an H200), seconds from a warm cache.
Inductor's FX-graph cache, AOTAutograd's cache and Triton's kernel cache live in folders named by
environment variables; every job of a run gets the same folders, so the second job that compiles a
graph already compiled (a timing job after its probe, another sharding of the same model) loads it.

The folder is keyed by the environment that compiled into it (GPU, driver, CUDA, torch, Triton,
transformers, Python): a changed environment starts a new cache instead of loading another's
artifacts. torch keys each entry by the graph, the inductor configuration and the library versions
too; the outer key keeps unrelated environments apart and lets an old one be deleted as a whole.
Caching leaves what is timed alone: a cached graph is the same generated code. What it changes is
the compile time a result records, so the result says whether the cache was warm.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("runs") / "compile-cache"
KEY_FIELDS = ("gpu_name", "driver", "cuda", "torch", "transformers", "python")


def cache_key(environment: dict[str, Any]) -> str:
    from harness.env import package_version

    values = {k: environment.get(k) for k in KEY_FIELDS} | {
        "triton": package_version("triton"),
        "machine": platform.machine(),
    }
    text = "|".join(f"{k}={v}" for k, v in sorted(values.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_env(root: Path, environment: dict[str, Any]) -> dict[str, str]:
    """The variables that point a job's compilers at this environment's cache under `root`."""
    folder = root.absolute() / cache_key(environment)
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
        "TRITON_CACHE_DIR": str(folder / "triton"),
        # On by default in the torch versions this suite supports; set so that an older default or
        # a user's environment cannot silently turn the cache off.
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }
