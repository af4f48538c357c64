"""The hardware package: registry, user overrides, node detection from recorded outputs, markers."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import hardware
from hardware import GPUS, GpuType, Peak, detect_node, get_gpu, load_registry, machine_base_cost, match_gpu
from hardware import detect as detect_module
from hardware.detect import build_node, node_from_spec, parse_nvidia_smi, parse_topology, visible_indices
from hardware.overrides import HardwareFileError

DATA = Path(__file__).parent / "data" / "nvidia-smi"
ENV_VARS = ("PRETRAIN_BENCH_NODE", "PRETRAIN_BENCH_HARDWARE", "CUDA_VISIBLE_DEVICES")


@pytest.fixture(autouse=True)
def clean_detection(monkeypatch):
    """Each test starts without the variables detection reads and with an empty detection cache."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    detect_node.cache_clear()
    yield
    detect_node.cache_clear()


def node_from(fixture: str, visible: str | None = None, topology: str | None = None) -> hardware.Node:
    records = parse_nvidia_smi((DATA / fixture).read_text())
    links = parse_topology((DATA / topology).read_text()) if topology else None
    chosen = visible_indices(visible, [r.uuid for r in records])
    return build_node(records, visible=chosen, links=links, cpu_count=8, source="nvidia-smi")


# --- registry -------------------------------------------------------------------------------------


def test_registry_has_every_type():
    expected = {
        "rtx3090",
        "v100",
        "a6000",
        "a40",
        "l40",
        "a100-40gb",
        "a100",
        "h100",
        "h100-pcie",
        "h200",
        "cpu",
    }
    assert set(GPUS) == expected
    assert list(GPUS)[-1] == "cpu"  # never matched by name, so last


@pytest.mark.parametrize("gpu", [g for g in GPUS.values() if g.name != "cpu"], ids=lambda g: g.name)
def test_every_gpu_has_sourced_peaks(gpu: GpuType):
    assert {"fp32", "fp16"} <= set(gpu.peak_flops)
    assert ("bf16" in gpu.peak_flops) == gpu.supports_bf16
    assert ("tf32" in gpu.peak_flops) == gpu.supports_tf32
    for rate in gpu.peak_flops.values():
        assert rate.flops > 1e12 and rate.source.strip()
    assert gpu.match, "a GPU type that no device name matches could never be detected"
    hash(gpu)  # usable as a dict key despite its peak dict


# Dense TFLOP/s (fp32, tf32, bf16, fp16) from the datasheets cited in the registry.
DATASHEET = {
    "h100": (66.9, 494.7, 989.4, 989.4),
    "h100-pcie": (51.2, 378, 756, 756),
    "h200": (66.9, 494.7, 989.4, 989.4),
    "a100": (19.5, 156, 312, 312),
    "a100-40gb": (19.5, 156, 312, 312),
    "a6000": (38.7, 77.4, 154.8, 154.8),
    "rtx3090": (35.6, 35.6, 71, 71),
    "a40": (37.4, 74.8, 149.7, 149.7),
    "l40": (90.5, 90.5, 181.05, 181.05),
    "v100": (15.7, None, None, 125),
}


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_datasheet_peaks(name):
    gpu = get_gpu(name)
    for precision, tflops in zip(("fp32", "tf32", "bf16", "fp16"), DATASHEET[name], strict=True):
        expected = None if tflops is None else pytest.approx(tflops * 1e12)
        assert gpu.peak(precision) == expected, precision


def test_peak_with_tf32():
    assert get_gpu("a100").peak("fp32") == pytest.approx(19.5e12)
    assert get_gpu("a100").peak("fp32", tf32=True) == pytest.approx(156e12)
    assert get_gpu("v100").peak("fp32", tf32=True) == pytest.approx(15.7e12)  # no TF32 on Volta
    assert get_gpu("cpu").peak("bf16") is None
    with pytest.raises(ValueError, match="Did you mean: bf16"):
        get_gpu("h100").peak("bf61")


def test_paper_prices():
    paper = {"rtx3090": 1_300, "a6000": 4_800, "a100": 19_000, "h100": 30_000}
    for name, price in paper.items():
        gpu = get_gpu(name)
        assert gpu.price_usd == price
        assert gpu.price_date == datetime.date(2024, 9, 21)
        assert "2410.23261" in gpu.price_source
    for gpu in GPUS.values():
        assert gpu.price_usd is None or (gpu.price_date and gpu.price_source), gpu.name
    assert get_gpu("cpu").price_usd is None and get_gpu("cpu").memory_gib > 0


def test_a_gpu_type_checks_itself():
    peak = Peak(flops=1e14, source="datasheet")
    fields = dict(
        name="x1",
        description="X",
        memory_gib=10.0,
        supports_tf32=False,
        supports_bf16=False,
        price_usd=None,
        price_date=None,
        price_source=None,
        match=("x1",),
    )
    with pytest.raises(ValueError, match="bf16 peak on a type that does not support bf16"):
        GpuType(peak_flops={"bf16": peak}, **fields)
    with pytest.raises(ValueError, match="needs its source"):
        Peak(flops=1e12, source=" ")
    with pytest.raises(ValueError, match="price_date and price_source"):
        GpuType(peak_flops={}, **{**fields, "price_usd": 100.0})


def test_machine_base_cost():
    assert [machine_base_cost(n) for n in (1, 2, 4, 8)] == [1_000, 1_500, 7_500, 10_500]
    assert machine_base_cost(3) == 7_500 and machine_base_cost(5) == 10_500  # the next larger tier
    for bad in (0, 9):
        with pytest.raises(ValueError):
            machine_base_cost(bad)


def test_marker_names():
    assert hardware.marker_name(get_gpu("a100-40gb")) == "a100_40gb"
    assert hardware.marker_name("h100-pcie") == "h100_pcie"
    assert all(hardware.marker_name(g).isidentifier() for g in GPUS.values())


def test_unknown_names_suggest():
    with pytest.raises(KeyError, match=r"Unknown GPU type 'h10'\. Did you mean: .*h100"):
        get_gpu("h10")
    with pytest.raises(ValueError, match=r"Did you mean: .*a100"):
        get_gpu("a1000")


# --- matching -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_name", "memory_mib", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "h100"),  # not h100-pcie
        ("NVIDIA H100 PCIe", 81559, "h100-pcie"),
        ("NVIDIA H200", 143771, "h200"),
        ("NVIDIA A100-SXM4-40GB", 40960, "a100-40gb"),
        ("NVIDIA A100-PCIE-40GB", None, "a100-40gb"),  # the size in the name tells them apart
        ("NVIDIA A100-SXM4-80GB", 81920, "a100"),
        ("NVIDIA A100 80GB PCIe", 81920, "a100"),
        ("NVIDIA GeForce RTX 3090", 24576, "rtx3090"),
        ("NVIDIA RTX A6000", 49140, "a6000"),
        ("NVIDIA A40", 46068, "a40"),
        ("NVIDIA L40", 46068, "l40"),
        ("Tesla V100-SXM2-32GB", 32510, "v100"),
        # Near misses are unknown, never guessed:
        ("NVIDIA H200 NVL", 143771, None),
        ("NVIDIA GH200 480GB", 97871, None),
        ("NVIDIA H100 NVL", 95830, None),
        ("NVIDIA L40S", 46068, None),
        ("NVIDIA GeForce RTX 3090 Ti", 24564, None),
        ("Tesla V100-SXM2-16GB", 16160, None),
        ("NVIDIA A100", None, None),  # no size anywhere: 40 or 80 GB cannot be told
        ("NVIDIA GeForce RTX 4090", 24564, None),
    ],
)
def test_match_gpu(device_name, memory_mib, expected):
    gpu = match_gpu(device_name, memory_mib)
    assert (gpu.name if gpu else None) == expected


def test_memory_decides_where_the_name_cannot():
    assert match_gpu("NVIDIA A100-SXM4-40GB", 81920).name == "a100"  # the measured memory wins
    assert match_gpu("NVIDIA A100", 40960).name == "a100-40gb"


# --- detection from recorded outputs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "gpu_type", "count", "memory_mib", "driver"),
    [
        ("h100-sxm.csv", "h100", 1, 81559, "580.159.04"),
        ("h100-pcie.csv", "h100-pcie", 1, 81559, "550.54.15"),
        ("h200x2.csv", "h200", 2, 143771, "580.159.04"),
        ("a100-sxm4-40gb.csv", "a100-40gb", 4, 40960, "535.104.05"),
        ("a100-sxm4-80gb.csv", "a100", 2, 81920, "550.90.07"),
        ("a100-80gb-pcie.csv", "a100", 1, 81920, "535.183.01"),
        ("rtx3090x4.csv", "rtx3090", 4, 24576, "550.54.14"),
    ],
)
def test_recorded_nvidia_smi(fixture, gpu_type, count, memory_mib, driver):
    node = node_from(fixture)
    assert (node.gpu_type, node.count, node.memory_mib, node.driver_version) == (
        gpu_type,
        count,
        memory_mib,
        driver,
    )
    assert not node.mixed and str(node) == f"{count} x {gpu_type}"


def test_unknown_gpu_has_no_type_and_no_peak():
    node = node_from("unknown-rtx4090.csv")
    assert node.gpu_type is None and node.count == 1 and node.gpu_name == "NVIDIA GeForce RTX 4090"
    assert "unknown GPU 'NVIDIA GeForce RTX 4090'" in str(node)
    assert (
        node.mismatch("h100", 1)
        == "case needs 1 x h100; this node has 1 x unknown GPU 'NVIDIA GeForce RTX 4090'"
    )


def test_mixed_node_is_marked():
    node = node_from("mixed.csv")
    assert node.mixed and node.gpu_type is None and node.count == 3
    assert node.gpu_name == "2 x NVIDIA H100 80GB HBM3 + 1 x NVIDIA RTX A6000"
    assert node.memory_mib == 49140  # the smallest card bounds what fits
    assert "set CUDA_VISIBLE_DEVICES to one type" in node.mismatch("h100", 2)
    assert node_from("mixed.csv", visible="0,1").gpu_type == "h100"


def test_parse_rejects_other_formats():
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_nvidia_smi("name, memory.total [MiB]\nNVIDIA H200 143771 MiB\n")
    assert parse_nvidia_smi("NVIDIA GB10, [N/A], 580.95.05\n")[0].memory_mib is None


def test_topology():
    assert parse_topology((DATA / "topo-h200x2.txt").read_text()) == {(0, 1): "NV18"}
    assert parse_topology((DATA / "topo-h100x1.txt").read_text()) == {}
    assert node_from("h200x2.csv", topology="topo-h200x2.txt").interconnect == "nvlink"
    assert node_from("h100-sxm.csv", topology="topo-h100x1.txt").interconnect is None
    # Bridged pairs: all four GPUs meet over PCIe somewhere, one bridged pair is all NVLink.
    assert node_from("rtx3090x4.csv", topology="topo-rtx3090x4-bridged.txt").interconnect == "pcie"
    assert node_from("rtx3090x4.csv", "2,3", topology="topo-rtx3090x4-bridged.txt").interconnect == "nvlink"


@pytest.mark.parametrize(
    ("env_value", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ("1", [1]),
        ("3,1", [3, 1]),
        ("", []),
        ("-1", []),
        ("0,7,1", [0]),  # CUDA stops at the first invalid entry
        ("0,0", [0]),
        ("GPU-a9b8", [1]),  # a unique UUID prefix
        ("GPU-", []),  # an ambiguous one is invalid
    ],
)
def test_cuda_visible_devices(env_value, expected):
    uuids = [r.uuid for r in parse_nvidia_smi((DATA / "h200x2-uuid.csv").read_text())] * 2
    uuids[2:] = ["GPU-11111111-0000", "GPU-22222222-0000"]
    assert visible_indices(env_value, uuids) == expected


def test_mig_instances_are_refused():
    with pytest.raises(ValueError, match="MIG"):
        visible_indices("MIG-5f3c1d2e-8a41-4b7e-9c0d-1e2f3a4b5c6d", ["GPU-1"])


@pytest.fixture
def smi_only(monkeypatch):
    """detect_node on a node whose NVML is unavailable and whose nvidia-smi prints the H200 recordings."""
    outputs = {
        "topo": (DATA / "topo-h200x2.txt").read_text(),
        "query": (DATA / "h200x2-uuid.csv").read_text(),
    }
    monkeypatch.setattr(detect_module, "_query_nvml", lambda env: None)
    monkeypatch.setattr(
        detect_module, "_run_smi", lambda args: outputs["topo" if args[0] == "topo" else "query"]
    )


def test_detect_node_honours_cuda_visible_devices(smi_only, monkeypatch):
    node = detect_node()
    assert (node.gpu_type, node.count, node.interconnect, node.source) == ("h200", 2, "nvlink", "nvidia-smi")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert detect_node().count == 2  # cached until cleared, as documented
    detect_node.cache_clear()
    assert (detect_node().count, detect_node().interconnect) == (1, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    detect_node.cache_clear()
    assert detect_node().gpu_type == "cpu"


def test_detect_node_without_gpus(monkeypatch):
    monkeypatch.setattr(detect_module, "_query_nvml", lambda env: None)
    monkeypatch.setattr(detect_module, "_run_smi", lambda args: None)
    node = detect_node()
    assert node.gpu_type == "cpu" and node.count == 0 and node.cpu_count >= 1 and node.source == "none"
    assert node.mismatch("cpu", 1) is None
    assert node.mismatch("h100", 1) == f"case needs 1 x h100; this node has {node}"


def test_detect_node_through_nvml(monkeypatch):
    """The NVML path against a stand-in pynvml that answers as the 2 x H200 node did."""

    class NVMLError(Exception):
        pass

    names = [b"NVIDIA H200", b"NVIDIA H200"]  # older pynvml returns bytes
    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_P2P_CAPS_INDEX_NVLINK=4,
        NVML_P2P_STATUS_OK=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "580.159.04",
        nvmlSystemGetCudaDriverVersion_v2=lambda: 13000,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: names[h],
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=143771 * 2**20),
        nvmlDeviceGetP2PStatus=lambda a, b, caps: 0,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1,GPU-0")
    node = detect_node()
    assert (node.gpu_type, node.count, node.memory_mib) == ("h200", 2, 143771)
    assert (node.cuda_driver_version, node.interconnect, node.source) == ("13.0", "nvlink", "nvml")


def test_node_from_environment(monkeypatch):
    monkeypatch.setenv("PRETRAIN_BENCH_NODE", "h100x4")
    node = detect_node()
    assert (node.gpu_type, node.count, node.source) == ("h100", 4, "env")
    assert node.mismatch("h100", 8) == "case needs 8 x h100; this node has 4 x h100"
    assert node_from_spec("rtx3090").count == 1 and node_from_spec("rtx3090x2").count == 2
    assert node_from_spec("a100-40gbx8").gpu_type == "a100-40gb"
    assert node_from_spec("cpu").gpu_type == "cpu"
    with pytest.raises(KeyError, match="Did you mean: .*h100"):
        node_from_spec("h10x4")


# --- user overrides -------------------------------------------------------------------------------

OVERRIDE_TOML = textwrap.dedent("""
    [gpus.a100-40gb]
    price_usd = 9500
    price_date = 2025-03-01
    price_source = "vendor quote"

    [gpus.h100-nvl]
    description = "NVIDIA H100 NVL 94GB"
    memory_gib = 93.0
    match = ["h100 nvl"]
    supports_tf32 = true
    supports_bf16 = true
    price_usd = 28000
    price_date = 2025-01-10
    price_source = "vendor quote"
    [gpus.h100-nvl.peak_flops]
    fp32 = { flops = 60e12, source = "NVIDIA H100 datasheet, NVL column" }
    tf32 = { flops = 417.5e12, source = "NVIDIA H100 datasheet, NVL column, dense" }
    bf16 = { flops = 835e12, source = "NVIDIA H100 datasheet, NVL column, dense" }
    fp16 = { flops = 835e12, source = "NVIDIA H100 datasheet, NVL column, dense" }
""")


def test_override_file_adds_a_gpu_and_a_price(tmp_path, monkeypatch):
    path = tmp_path / "hardware.toml"
    path.write_text(OVERRIDE_TOML)
    registry = load_registry(path)
    assert list(registry)[0] == "h100-nvl"  # added types match first
    assert registry["a100-40gb"].price_usd == 9500 and registry["a100-40gb"].price_date == datetime.date(
        2025, 3, 1
    )
    assert registry["a100-40gb"].peak("bf16") == GPUS["a100-40gb"].peak("bf16")  # the rest stays
    assert GPUS["a100-40gb"].price_usd is None  # the built-ins are not touched
    assert match_gpu("NVIDIA H100 NVL", 95830, registry).name == "h100-nvl"
    assert registry["h100-nvl"].peak("fp32", tf32=True) == pytest.approx(417.5e12)
    # Through the environment, the active registry (get_gpu, match_gpu, markers, detection) has it.
    monkeypatch.setenv("PRETRAIN_BENCH_HARDWARE", str(path))
    assert get_gpu("h100-nvl").memory_gib == 93.0
    assert node_from_spec("h100-nvlx2").gpu_type == "h100-nvl"
    assert load_registry() == registry


def test_override_file_in_json(tmp_path):
    path = tmp_path / "hardware.json"
    path.write_text(
        json.dumps(
            {
                "gpus": {
                    "h100": {"price_usd": 25000.5, "price_date": "2026-01-02", "price_source": "quote"},
                    "rtx3090": {"price_usd": None},
                }
            }
        )
    )
    registry = load_registry(path)
    assert registry["h100"].price_usd == 25000.5 and registry["h100"].price_date == datetime.date(2026, 1, 2)
    assert registry["rtx3090"].price_usd is None


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "typo.toml",
            "[gpus.a100]\nmemroy_gib = 80\n",
            "gpus.a100: unknown field 'memroy_gib'. Did you mean: memory_gib",
        ),
        ("top.toml", "[gpu.a100]\nprice_usd = 1\n", "unknown field 'gpu'"),
        (
            "missing.toml",
            '[gpus.x9]\ndescription = "X9"\n',
            "gpus.x9: a new GPU type needs field(s) match, memory_gib",
        ),
        (
            "type.toml",
            '[gpus.a100]\nmemory_gib = "80"\n',
            "gpus.a100.memory_gib: must be a number (GiB), got '80'",
        ),
        ("bool.toml", "[gpus.a100]\nmemory_gib = true\n", "gpus.a100.memory_gib: must be a number"),
        ("date.json", '{"gpus": {"a100": {"price_date": "21 Sep"}}}', "price_date: must be a date"),
        (
            "nodate.toml",
            "[gpus.a40]\nprice_usd = 5000\n",
            "gpus.a40: GPU type 'a40': a price must be positive and come with",
        ),
        (
            "prec.toml",
            '[gpus.a100.peak_flops]\nbf61 = {flops = 1e12, source = "x"}\n',
            "unknown field 'bf61'. Did you mean: bf16",
        ),
        ("nosrc.toml", "[gpus.a100.peak_flops]\nbf16 = {flops = 1e12}\n", "bf16.source: must be a string"),
        ("syntax.toml", "[gpus.a100\n", "not valid TOML"),
        ("suffix.yaml", "gpus: {}\n", "a hardware file ends in .toml or .json"),
    ],
)
def test_bad_override_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(HardwareFileError) as error:
        load_registry(path)
    assert message in str(error.value) and name in str(error.value)


def test_missing_override_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAIN_BENCH_HARDWARE", str(tmp_path / "nowhere.toml"))
    with pytest.raises(HardwareFileError, match="cannot read the hardware file .*nowhere.toml"):
        load_registry()


# --- import and plugin ----------------------------------------------------------------------------


def test_import_loads_neither_torch_nor_pynvml():
    code = "import sys, hardware, hardware.markers; print(sorted({'torch', 'pynvml'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert done.stdout.strip() == "[]"


MARKED_TEST = """
    import pytest

    @pytest.mark.h100
    @pytest.mark.a100_40gb
    @pytest.mark.cpu
    def test_marked():
        pass
"""


@pytest.fixture
def isolated_pytester(pytester, monkeypatch):
    """pytester in subprocesses: pytest caches the marker names it has validated for the whole
    process, so an in-process run would see the markers this session registered."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))
    return pytester


def test_markers_are_registered(isolated_pytester):
    isolated_pytester.makepyfile(MARKED_TEST)
    run = isolated_pytester.runpytest_subprocess
    run("-p", "hardware.markers", "--strict-markers").assert_outcomes(passed=1)
    run("-p", "hardware.markers", "--markers").stdout.fnmatch_lines(
        ["@pytest.mark.h100: case needs NVIDIA H100 SXM 80GB"]
    )
    # Without the plugin the same file is an error: the markers come from it.
    run("--strict-markers").stdout.fnmatch_lines(["*'h100' not found in `markers` configuration option*"])


def test_markers_for_user_types_and_bad_files(isolated_pytester, tmp_path, monkeypatch):
    path = tmp_path / "hardware.toml"
    path.write_text(OVERRIDE_TOML)
    monkeypatch.setenv("PRETRAIN_BENCH_HARDWARE", str(path))
    isolated_pytester.makepyfile("import pytest\n\n@pytest.mark.h100_nvl\ndef test_nvl():\n    pass\n")
    run = isolated_pytester.runpytest_subprocess
    run("-p", "hardware.markers", "--strict-markers").assert_outcomes(passed=1)
    path.write_text("[gpus.a100]\nmemroy_gib = 80\n")
    result = run("-p", "hardware.markers")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown field 'memroy_gib'*"])
