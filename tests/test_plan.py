"""The plan (harness.plan) and the state-memory bound (harness.estimate), without launching jobs.

The plan is the single source of truth for what the worker trains with and what the report exports,
so every TrainingArguments key that a method switches is checked here against the recipe.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import plan as plan_module
from harness.cases import Case
from harness.estimate import GIB, model_state_gib, predicted_infeasible
from harness.methods import SHARDINGS, Method, method_set
from harness.plan import (
    BatchNotDivisibleError,
    Plan,
    candidate_micro_batches,
    make_plan,
    per_device_target,
    unsupported_reason,
)
from models import MODELS, get_model

REPO = Path(__file__).resolve().parents[1]
NAIVE = Method(free_lunch=False)
FREE_LUNCH = Method(free_lunch=True)


def case(model: str = "pythia-160m", gpu: str = "h100", gpus: int = 4, **method) -> Case:
    return Case(
        model=model, gpu_type=gpu, gpus_per_node=gpus, method=Method(**({"free_lunch": True} | method))
    )


def plan_for(c: Case, micro_batch: int | None = None, **kwargs) -> Plan:
    return make_plan(c, micro_batch or candidate_micro_batches(c)[0], **kwargs)


# --- DeepSpeed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("sharding", "stage"), [("zero1", 1), ("zero2", 2), ("zero3", 3)])
@pytest.mark.parametrize("offload", [False, True])
@pytest.mark.parametrize("model", ["pythia-160m", "mamba", "convnext"])
def test_deepspeed_dict_has_the_stage_and_the_recipes_optimizer(sharding, stage, offload, model):
    c = case(model, sharding=sharding, offloading=offload)
    p = plan_for(c)
    recipe = get_model(model).recipe
    ds = p.training_args["deepspeed"]
    assert p.deepspeed is ds
    assert "fsdp" not in p.training_args and "fsdp_config" not in p.training_args
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    # The Trainer builds DeepSpeed's own optimizer with the recipe's values and its parameter groups;
    # an "optimizer" in the dict would make DeepSpeed build one group that decays biases and norms.
    assert "optimizer" not in ds
    decoupled = "adamw_mode" if offload else "adam_w_mode"
    assert p.optimizer == {
        "target": "deepspeed.ops.adam:DeepSpeedCPUAdam" if offload else "deepspeed.ops.adam:FusedAdam",
        "kwargs": {
            "lr": recipe.lr,
            "betas": list(recipe.betas),
            "eps": recipe.eps,
            "weight_decay": recipe.weight_decay,
            decoupled: recipe.optimizer == "adamw",
        },
        "no_decay": recipe.no_decay,
    }
    assert ("offload_optimizer" in zero) == offload
    assert ("offload_param" in zero) == (offload and stage == 3)
    if offload:
        assert zero["offload_optimizer"]["device"] == "cpu"
    # Under offload accelerate must keep the plan's DeepSpeedCPUAdam (rebuilding it drops AdamW mode).
    assert ds.get("zero_force_ds_cpu_optimizer", True) is not offload


def test_every_recipe_decays_decoupled_under_deepspeed_too_with_its_own_groups():
    # GPT-NeoX's and fairseq's "Adam" are AdamW-mode implementations; flax's Adam decayed decoupled.
    models = ("pythia-160m", "roberta", "vit", "mamba", "convnext")
    assert {get_model(m).recipe.optimizer for m in models} == {"adamw"}
    plans = {m: plan_for(case(m, sharding="zero2")).optimizer for m in models}
    assert all(p["kwargs"]["adam_w_mode"] is True for p in plans.values())
    rules = {m: p["no_decay"] for m, p in plans.items()}
    assert rules == {
        "pythia-160m": "bias-norm",
        "roberta": "none",
        "vit": "none",
        "mamba": "bias-norm-ssm",
        "convnext": "bias-1d",
    }


# --- FSDP --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sharding", "strategy"), [("fsdp_grad_op", "shard_grad_op"), ("fsdp_full", "full_shard")]
)
@pytest.mark.parametrize("offload", [False, True])
@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("model", ["pythia-1b", "roberta", "mamba", "vit"])
def test_fsdp_string_and_config(sharding, strategy, offload, ckpt, model):
    p = plan_for(case(model, sharding=sharding, offloading=offload, activation_checkpointing=ckpt))
    args = p.training_args
    assert args["fsdp"] is True
    assert args["fsdp_config"] == {
        "version": 2,
        "transformer_layer_cls_to_wrap": [get_model(model).block_class],
        "reshard_after_forward": strategy == "full_shard",
        "cpu_offload": offload,
        "activation_checkpointing": ckpt,
    }
    # FSDP checkpoints through its own wrapper; the Trainer's flag would checkpoint a second time.
    assert args["gradient_checkpointing"] is False
    assert args["gradient_checkpointing_kwargs"] is None
    assert "deepspeed" not in args and p.deepspeed is None
    assert p.optimizer is not None  # the Trainer builds the optimizer under FSDP


@pytest.mark.parametrize(
    ("sharding", "strategy"), [("fsdp_grad_op", "shard_grad_op"), ("fsdp_full", "full_shard")]
)
@pytest.mark.parametrize("offload", [False, True])
def test_fsdp_config_is_what_the_legacy_string_meant(sharding, strategy, offload, tmp_path):
    """Results measured with the deprecated `fsdp="<strategy> auto_wrap [offload]"` string and the plan's
    all-in-fsdp_config form configure FSDP identically (the Trainer reads fsdp_config only)."""
    from transformers import TrainingArguments

    config = plan_for(case(sharding=sharding, offloading=offload)).training_args["fsdp_config"]
    legacy_config = {k: v for k, v in config.items() if k not in ("reshard_after_forward", "cpu_offload")}
    legacy = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        fsdp=f"{strategy} auto_wrap" + (" offload" if offload else ""),
        fsdp_config=legacy_config,
    )
    ours = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, fsdp=True, fsdp_config=dict(config))
    # The legacy form leaves cpu_offload out unless offloading; absent reads as False.
    assert ours.fsdp_config == {"cpu_offload": False, **legacy.fsdp_config}
    assert ours.fsdp_config["reshard_after_forward"] is (strategy == "full_shard")
    assert ours.fsdp_config["cpu_offload"] is offload


@pytest.mark.parametrize("sharding", ["none", "zero1", "zero2", "zero3"])
def test_checkpointing_without_fsdp_is_the_trainers_flag(sharding):
    args = plan_for(case(sharding=sharding, activation_checkpointing=True)).training_args
    assert args["gradient_checkpointing"] is True
    assert args["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    args = plan_for(case(sharding=sharding)).training_args
    assert args["gradient_checkpointing"] is False and args["gradient_checkpointing_kwargs"] is None


# --- free lunch, precision, common keys --------------------------------------------------------


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("gpu", ["h100", "v100", "cpu"])
def test_free_lunch_switches(model, gpu):
    gpus = 1
    lunch = plan_for(Case(model=model, gpu_type=gpu, gpus_per_node=gpus, method=FREE_LUNCH)).training_args
    naive_plan = plan_for(Case(model=model, gpu_type=gpu, gpus_per_node=gpus, method=NAIVE))
    naive = naive_plan.training_args
    spec = get_model(model)
    assert lunch["torch_compile"] is (spec.family != "mamba")  # Mamba's HF class does not compile
    assert naive["torch_compile"] is False
    if gpu == "cpu":
        assert lunch["tf32"] is None and naive["tf32"] is None  # must stay unset without CUDA
        assert lunch["use_cpu"] is True and "ddp_backend" not in lunch  # accelerate picks gloo
        assert lunch["dataloader_pin_memory"] is False
    else:
        assert lunch["tf32"] is (gpu == "h100")  # V100 has no TF32
        assert naive["tf32"] is False
        assert lunch["use_cpu"] is False and "ddp_backend" not in lunch  # accelerate picks nccl
    if spec.attention:
        assert naive_plan.attn_implementation == "eager"
    else:
        assert naive_plan.attn_implementation is None


def test_attention_is_sdpa_without_flash_attn_and_flash_attention_2_with_it(monkeypatch):
    def attention(model, gpu, method):
        return plan_for(Case(model=model, gpu_type=gpu, gpus_per_node=1, method=method)).attn_implementation

    monkeypatch.setattr(plan_module, "package_available", lambda name: False)
    assert attention("pythia-160m", "h100", FREE_LUNCH) == "sdpa"
    assert attention("pythia-160m", "h100", NAIVE) == "eager"
    assert attention("mamba", "h100", FREE_LUNCH) is None
    monkeypatch.setattr(plan_module, "package_available", lambda name: True)
    assert attention("pythia-160m", "h100", FREE_LUNCH) == "flash_attention_2"  # fp16 recipe
    assert attention("vit", "h100", FREE_LUNCH) == "sdpa"  # fp32 recipe: FlashAttention-2 needs half
    assert attention("pythia-14m", "cpu", FREE_LUNCH) == "sdpa"
    assert attention("pythia-160m", "h100", NAIVE) == "eager"


def test_mamba_kernels_only_with_free_lunch_on_gpus_and_installed(monkeypatch):
    def kernels(gpu, method, model="mamba"):
        return plan_for(Case(model=model, gpu_type=gpu, gpus_per_node=1, method=method)).use_kernels

    monkeypatch.setattr(plan_module, "package_available", lambda name: True)
    assert kernels("h100", FREE_LUNCH) is True
    assert kernels("h100", NAIVE) is False
    assert kernels("cpu", FREE_LUNCH, "tiny-mamba") is False
    assert kernels("h100", FREE_LUNCH, "pythia-160m") is False
    monkeypatch.setattr(plan_module, "package_available", lambda name: False)
    assert kernels("h100", FREE_LUNCH) is False


@pytest.mark.parametrize("model", sorted(MODELS))
def test_recipe_reaches_the_arguments_and_the_trainers_optimizer(model):
    spec = get_model(model)
    recipe = spec.recipe
    gpu = "cpu" if spec.tiny else "h100"
    c = Case(model=model, gpu_type=gpu, gpus_per_node=1, method=NAIVE)
    target = per_device_target(c)
    micro = candidate_micro_batches(c)[-1]
    p = make_plan(c, micro)
    args = p.training_args
    assert args["per_device_train_batch_size"] == micro
    assert args["gradient_accumulation_steps"] == target // micro
    assert args["max_steps"] == recipe.training_steps
    assert args["learning_rate"] == recipe.lr
    assert (args["adam_beta1"], args["adam_beta2"]) == recipe.betas
    assert args["adam_epsilon"] == recipe.eps and args["weight_decay"] == recipe.weight_decay
    assert args["lr_scheduler_type"] == recipe.lr_scheduler_type
    assert args["lr_scheduler_kwargs"] == dict(recipe.lr_scheduler_kwargs)
    assert args["warmup_steps"] == recipe.warmup_steps and args["max_grad_norm"] == recipe.max_grad_norm
    assert args["fp16"] is (recipe.precision == "fp16")
    assert args["bf16"] is (recipe.precision == "bf16")
    assert not (args["fp16"] and args["bf16"])
    assert args["logging_nan_inf_filter"] is False  # a host sync per micro-batch otherwise
    assert args["report_to"] == "none" and args["save_strategy"] == "no"
    assert (
        p.optimizer["target"] == {"adam": "torch.optim:Adam", "adamw": "torch.optim:AdamW"}[recipe.optimizer]
    )
    kwargs = p.optimizer["kwargs"]
    assert kwargs["lr"] == recipe.lr and kwargs["betas"] == list(recipe.betas)
    assert kwargs["eps"] == recipe.eps and kwargs["weight_decay"] == recipe.weight_decay
    assert kwargs.get("fused", False) is (gpu != "cpu")


def test_explicit_accumulation_and_steps_and_output_dir():
    c = case(gpus=8)  # 1024 / 8 = 128 per GPU
    p = make_plan(c, 16, max_steps=7, output_dir="/x/y", seed=3)
    assert p.grad_acc_steps == p.training_args["gradient_accumulation_steps"] == 8
    assert p.training_args["max_steps"] == 7 and p.training_args["output_dir"] == "/x/y"
    assert p.training_args["seed"] == 3
    shortened = make_plan(c, 16, 2)  # the worker measures fewer micro-batches than the recipe's
    assert shortened.grad_acc_steps == 2 and shortened.training_args["gradient_accumulation_steps"] == 2
    with pytest.raises(BatchNotDivisibleError, match="micro-batch 48 does not divide the per-GPU batch 128"):
        make_plan(c, 48)


def test_loader_workers_are_set_only_when_asked_for():
    c = case(model="vit", gpus=1)
    default = make_plan(c, 128)
    # The Trainer's default leaves the plan as it always was: stored plans still compare equal.
    assert not {"dataloader_num_workers", "dataloader_persistent_workers"} & set(default.training_args)
    four = make_plan(c, 128, loader_workers=4)
    assert four.training_args["dataloader_num_workers"] == 4
    assert four.training_args["dataloader_persistent_workers"] is True
    # The Trainer fetches a step's 32 micro-batches (4096 / 128) at once: 4 workers keep 8 each ready,
    # also in the shortened timing plan, which must load as the plan it stands for.
    assert four.training_args["dataloader_prefetch_factor"] == 8
    assert make_plan(c, 128, 4, loader_workers=4).training_args["dataloader_prefetch_factor"] == 8
    assert make_plan(c, 128, loader_workers=5).training_args["dataloader_prefetch_factor"] == 7  # 32 / 5, up
    # Never below the DataLoader's own default of 2 per worker.
    assert make_plan(c, 4096, loader_workers=4).training_args["dataloader_prefetch_factor"] == 2
    assert {k: v for k, v in four.training_args.items() if not k.startswith("dataloader_")} == {
        k: v for k, v in default.training_args.items() if not k.startswith("dataloader_")
    }
    with pytest.raises(ValueError, match="loader workers must be 0 or more, got -1"):
        make_plan(c, 128, loader_workers=-1)


# --- batches -----------------------------------------------------------------------------------


def test_candidate_micro_batches():
    assert candidate_micro_batches(case(gpus=8)) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert candidate_micro_batches(case("roberta", gpus=1)) == [2**k for k in range(14)]  # 8192
    # ViT: global batch 4096 over 1 GPU; all divisors of 4096 are powers of two.
    assert candidate_micro_batches(case("vit", gpus=1), all_divisors=True) == [2**k for k in range(13)]
    # Mamba: 128 over 2 nodes x 2 GPUs = 32.
    c = Case(model="mamba", gpu_type="h100", num_nodes=2, gpus_per_node=2, method=FREE_LUNCH)
    assert per_device_target(c) == 32
    assert candidate_micro_batches(c) == [1, 2, 4, 8, 16, 32]


@given(st.sampled_from(sorted(MODELS)), st.integers(min_value=1, max_value=64))
@settings(max_examples=60, deadline=None)
def test_candidates_divide_the_per_gpu_batch(model, gpus):
    c = Case(model=model, gpu_type="h100", gpus_per_node=gpus, method=NAIVE)
    global_batch = get_model(model).recipe.global_batch
    if global_batch % gpus:
        with pytest.raises(BatchNotDivisibleError) as info:
            per_device_target(c)
        message = str(info.value)
        assert f"global batch {global_batch} of {model} is not divisible by {gpus} GPUs" == message
        with pytest.raises(BatchNotDivisibleError):
            candidate_micro_batches(c)
        return
    target = per_device_target(c)
    assert target * gpus == global_batch
    powers = candidate_micro_batches(c)
    divisors = candidate_micro_batches(c, all_divisors=True)
    assert divisors == [d for d in range(1, target + 1) if target % d == 0]
    assert powers == [d for d in divisors if d & (d - 1) == 0]
    assert powers[0] == 1 and powers == sorted(powers)
    for micro in powers:
        p = make_plan(c, micro)
        assert p.micro_batch_size * p.grad_acc_steps == target


def test_batch_not_divisible_is_a_value_error():
    assert issubclass(BatchNotDivisibleError, ValueError)
    with pytest.raises(BatchNotDivisibleError, match="not divisible by 3 GPUs"):
        per_device_target(case(gpus=3))


# --- unsupported cases -------------------------------------------------------------------------


@pytest.fixture
def installed(monkeypatch):
    """Every optional package counts as installed unless a test says otherwise."""
    monkeypatch.setattr(plan_module, "package_available", lambda name: True)


@pytest.mark.parametrize("sharding", ["zero1", "zero2", "zero3"])
def test_deepspeed_on_cpu_is_unsupported(sharding, installed):
    reason = unsupported_reason(case("pythia-14m", "cpu", 2, sharding=sharding))
    assert reason is not None and "DeepSpeed" in reason
    assert unsupported_reason(case("pythia-14m", "h100", 2, sharding=sharding)) is None


@pytest.mark.parametrize("sharding", ["fsdp_grad_op", "fsdp_full"])
def test_fsdp_runs_on_cpu_but_not_its_offload(sharding):
    assert unsupported_reason(case("pythia-14m", "cpu", 2, sharding=sharding)) is None
    reason = unsupported_reason(case("pythia-14m", "cpu", 2, sharding=sharding, offloading=True))
    assert reason is not None and "offloading to the CPU" in reason
    assert unsupported_reason(case("pythia-14m", "h100", 2, sharding=sharding, offloading=True)) is None


def test_a_missing_gpu_package_is_named_with_its_install_line(monkeypatch):
    monkeypatch.setattr(plan_module, "package_available", lambda name: name == "causal_conv1d")
    reason = unsupported_reason(case("mamba", gpus=1))
    assert reason is not None and "needs mamba_ssm, not installed" in reason
    assert "pip install --no-build-isolation mamba-ssm" in reason
    # Naive Mamba runs the reference scan on purpose; the CPU profile never uses the kernels.
    assert unsupported_reason(case("mamba", gpus=1, free_lunch=False)) is None
    assert unsupported_reason(case("tiny-mamba", "cpu", 1)) is None
    reason = unsupported_reason(case("pythia-160m", gpus=2, sharding="zero2"))
    assert reason is not None and "needs deepspeed" in reason
    assert unsupported_reason(case("pythia-160m", gpus=2, sharding="fsdp_full")) is None


def test_convnext_checkpointing_is_unsupported(installed):
    reason = unsupported_reason(case("convnext", activation_checkpointing=True))
    assert reason is not None and "ConvNext" in reason and "checkpointing" in reason
    assert unsupported_reason(case("tiny-convnext", "cpu", 1, activation_checkpointing=True)) is not None
    assert unsupported_reason(case("convnext")) is None
    assert unsupported_reason(case("pythia-160m", activation_checkpointing=True)) is None
    assert unsupported_reason(Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=2, method=NAIVE)) is None


# --- serialization -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", method_set("all", 2), ids=lambda m: m.slug)
def test_plan_json_round_trips(method):
    c = Case(model="pythia-410m", gpu_type="h100", gpus_per_node=2, method=method)
    p = plan_for(c)
    data = json.loads(p.to_json())
    assert data == p.to_dict()
    assert data["case"]["id"] == c.id
    assert data["case"]["method"]["sharding"] == method.sharding
    assert data["training_args"] == p.training_args
    assert data["micro_batch_size"] == p.micro_batch_size and data["grad_acc_steps"] == p.grad_acc_steps


# --- real TrainingArguments --------------------------------------------------------------------

BUILD_ARGS = textwrap.dedent(
    """
    import json, sys, tempfile, warnings
    warnings.simplefilter("ignore")
    from transformers import TrainingArguments
    from harness.cases import Case
    from harness.methods import method_set
    from harness.plan import candidate_micro_batches, make_plan, unsupported_reason
    from models import TINY_MODELS

    built = []
    for model in TINY_MODELS:
        for procs in (1, 2):
            for method in method_set("all", procs):
                case = Case(model=model, gpu_type="cpu", gpus_per_node=procs, method=method)
                if method.sharding != "none" or unsupported_reason(case):
                    continue
                plan = make_plan(case, candidate_micro_batches(case)[-1], max_steps=3,
                                 output_dir=tempfile.mkdtemp(dir=sys.argv[1]))
                args = TrainingArguments(**plan.training_args)
                built.append({
                    "id": case.id, "device": str(args.device), "max_steps": args.max_steps,
                    "micro": args.per_device_train_batch_size, "gas": args.gradient_accumulation_steps,
                    "lr": args.learning_rate, "ckpt": args.gradient_checkpointing,
                    "compile": args.torch_compile, "nan_filter": args.logging_nan_inf_filter,
                    "expected": [plan.micro_batch_size, plan.grad_acc_steps,
                                 plan.training_args["learning_rate"],
                                 plan.training_args["gradient_checkpointing"],
                                 plan.training_args["torch_compile"]],
                })
    print(json.dumps(built))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_plans_build_real_training_arguments(tmp_path):
    # A plain single process, as a user's own script would build the exported training_args.json:
    # the plan pins nothing that needs a launcher's environment (no ddp_backend).
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_ARGS, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    # 5 tiny models x (naive, free-lunch, ckpt) x 1 and 2 processes, less tiny-convnext's ckpt.
    assert len(built) == 28, [b["id"] for b in built]
    for b in built:
        assert b["device"].startswith("cpu"), b
        assert b["max_steps"] == 3 and b["nan_filter"] is False, b
        assert [b["micro"], b["gas"], b["lr"], b["ckpt"], b["compile"]] == b["expected"], b


# --- the state-memory bound --------------------------------------------------------------------

PARAMS = 10**9
BYTES = PARAMS / GIB  # GiB per byte-per-parameter


def state_bytes_per_param(sharding: str, gpus: int, offload: bool = False) -> float:
    c = Case(
        model="pythia-160m",
        gpu_type="h100",
        gpus_per_node=gpus,
        method=Method(free_lunch=True, sharding=sharding, offloading=offload),
    )
    return model_state_gib(c, PARAMS) / BYTES


def test_model_state_bytes_per_parameter():
    assert state_bytes_per_param("none", 1) == pytest.approx(16)
    assert state_bytes_per_param("none", 8) == pytest.approx(16)  # DDP replicates everything
    assert state_bytes_per_param("zero3", 4) == pytest.approx(4)
    assert state_bytes_per_param("fsdp_full", 4) == pytest.approx(4)
    # Offloading removes the optimizer states (8 bytes), ZeRO-3 / full-shard offload the weights too.
    assert state_bytes_per_param("zero1", 1, offload=True) == pytest.approx(8)
    assert state_bytes_per_param("zero2", 2, offload=True) == pytest.approx(4 + 4 / 2)
    assert state_bytes_per_param("zero3", 4, offload=True) == pytest.approx(4 / 4)
    assert state_bytes_per_param("fsdp_full", 4, offload=True) == pytest.approx(4 / 4)


def test_predicted_infeasible():
    big = Case(model="pythia-6.9b", gpu_type="h100", gpus_per_node=1, method=NAIVE)
    reason = predicted_infeasible(big)
    assert isinstance(reason, str) and reason.startswith("predicted:")
    assert "GiB" in reason and "h100" in reason
    assert (
        predicted_infeasible(Case(model="pythia-160m", gpu_type="h100", gpus_per_node=1, method=NAIVE))
        is None
    )
    # The cpu profile has no device memory to predict from.
    assert (
        predicted_infeasible(Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=1, method=NAIVE)) is None
    )
    # ZeRO-3 over 8 H100s: 6.9e9 x 2 bytes = 12.8 GiB fits.
    sharded = Case(
        model="pythia-6.9b",
        gpu_type="h100",
        gpus_per_node=8,
        method=Method(free_lunch=True, sharding="zero3"),
    )
    assert predicted_infeasible(sharded) is None


VALID_METHODS = [
    (sharding, offload)
    for sharding in SHARDINGS
    for offload in (False, True)
    if not (offload and sharding == "none")
]


@given(
    st.sampled_from(VALID_METHODS),
    st.integers(min_value=1, max_value=512),
    st.integers(min_value=1, max_value=10**11),
)
@settings(max_examples=200, deadline=None)
def test_state_memory_never_grows_with_more_gpus(method, gpus, params):
    sharding, offload = method

    def gib(n: int) -> float:
        m = Method(free_lunch=True, sharding=sharding, offloading=offload)
        if not m.is_valid_for(n):
            m = Method(free_lunch=True, sharding="none")  # one GPU without offload: DDP's states
        return model_state_gib(Case(model="pythia-160m", gpu_type="h100", gpus_per_node=n, method=m), params)

    assert gib(gpus + 1) <= gib(gpus) * (1 + 1e-12)
    # Sharding and offloading only ever save memory; nothing exceeds the unsharded 16 bytes/param.
    assert gib(gpus) <= 16 * params / GIB * (1 + 1e-12)
    assert gib(gpus) >= 0


def test_no_setting_the_paper_ran_is_predicted_infeasible():
    """Appendix J's optimal settings all ran, so the lower bound must not rule any of them out.

    Under DeepSpeed with fp16/bf16 the GPU holds half-precision weights (2 bytes) and gradients (2),
    and the fp32 master copy (4) belongs to the partitioned optimizer states with the moments (8):
    ZeRO-1 needs 4 + 12/N bytes/param (ZeRO paper, sec. 5.1), not 8 + 8/N.
    """
    from reports.paper import optimal_configs

    ruled_out = {}
    for (model, gpu, gpus), config in optimal_configs().items():
        c = Case(model=model, gpu_type=gpu, gpus_per_node=gpus, method=config.method)
        if (reason := predicted_infeasible(c)) is not None:
            ruled_out[c.id] = reason
    assert ruled_out == {}
