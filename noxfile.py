"""nox sessions: tests, lint, bench (detects the node), validate, one per GPU type, kernels.

Every session also runs in the current environment with `nox --no-venv -s <name>` (or
`--force-venv-backend none`), installing nothing: that is how GPU nodes without a package index use
it, with torch, transformers and DeepSpeed already installed there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))
from hardware import GPUS, marker_name  # noqa: E402

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, *args: str) -> None:
    """Install into the session's virtualenv; with --no-venv, use what the environment has."""
    if session.venv_backend == "none":
        session.log(f"no virtualenv: not installing {' '.join(args)}")
        return
    session.install(*args)


def _node_marker() -> str:
    """This node's GPU-type marker (cpu without a GPU), as `python -m hardware` prints it."""
    cmd = [sys.executable, "-m", "hardware"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()


@nox.session
def tests(session: nox.Session) -> None:
    """The suite's own tests (CPU only), as CI runs them."""
    _install(session, "-e", ".[test]")
    session.run("python", "-m", "pytest", "tests", "-n", "2", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _install(session, "-e", ".[test]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "harness", "hardware", "models", "reports", "bench")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark this node: its GPU type's marker, or the cpu tiny profile where there is no GPU."""
    _install(session, "-e", ".[test]")
    session.run("python", "-m", "pytest", "bench", "-m", _node_marker(), *session.posargs)


@nox.session
def validate(session: nox.Session) -> None:
    """Prove this node's numbers: time each case, train it at the full accumulation, check its losses."""
    _install(session, "-e", ".[test]")
    args = ["bench", "-m", _node_marker(), "--validate", "--parity"]
    session.run("python", "-m", "pytest", *args, *session.posargs)


def _gpu_session(gpu_type: str) -> None:
    marker = marker_name(gpu_type)

    def run(session: nox.Session) -> None:
        _install(session, "-e", ".[test,gpu]")
        session.run("python", "-m", "pytest", "bench", "-m", marker, *session.posargs)

    run.__doc__ = f"pytest bench -m {marker} (pass pytest options after --)"
    nox.session(name=marker)(run)


for _gpu in GPUS:
    if _gpu != "cpu":
        _gpu_session(_gpu)


@nox.session
def kernels(session: nox.Session) -> None:
    """Build flash-attn, mamba-ssm and causal-conv1d for this node's GPU architecture only."""
    capability = subprocess.run(
        [sys.executable, "-c", "import torch; print('%d.%d' % torch.cuda.get_device_capability())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {
        "TORCH_CUDA_ARCH_LIST": capability,
        "FLASH_ATTN_CUDA_ARCHS": capability.replace(".", ""),
        "MAMBA_FORCE_BUILD": "TRUE",
        "CAUSAL_CONV1D_FORCE_BUILD": "TRUE",
    }
    packages = session.posargs or ["causal-conv1d>=1.4", "mamba-ssm>=2.2", "flash-attn>=2.6"]
    # The packages compile against the torch already installed, so no build isolation.
    session.run(
        "python", "-m", "pip", "install", "--no-build-isolation", "--no-binary", ":all:", *packages, env=env
    )
