"""Weight-decay groups: each recipe's rule picks the parameters its original code exempted, and the
Trainer the worker builds makes its optimizer groups from that rule."""

from __future__ import annotations

import pytest
import torch

from models import get_model
from models.decay import RULES, no_decay_names


def _names(model_name: str) -> tuple[torch.nn.Module, set[str], set[str]]:
    spec = get_model(model_name)
    with torch.device("meta"):
        model = spec.build_model()
    every = {n for n, _ in model.named_parameters()}
    return model, every, no_decay_names(model, spec.recipe.no_decay)


def test_pythia_exempts_biases_and_layer_norms_only_as_gpt_neox_did():
    model, every, exempt = _names("pythia-14m")
    assert get_model("pythia-14m").recipe.optimizer == "adamw"
    norms = {n for n in every if "layernorm" in n or "final_layer_norm" in n}
    biases = {n for n in every if n.endswith(".bias")}
    assert norms and biases and exempt == norms | biases
    # Embeddings and the untied output layer decay.
    assert "gpt_neox.embed_in.weight" not in exempt and "embed_out.weight" not in exempt
    assert "gpt_neox.layers.0.attention.query_key_value.weight" not in exempt


def test_roberta_and_vit_decay_every_parameter():
    for name in ("tiny-roberta", "tiny-vit"):
        _, every, exempt = _names(name)
        assert exempt == set() and every


def test_convnext_exempts_every_one_dimensional_parameter_and_bias():
    model, every, exempt = _names("tiny-convnext")
    one_d = {n for n, p in model.named_parameters() if p.ndim == 1}
    assert any("layer_scale" in n for n in one_d), "the layer-scale vectors are 1-D"
    assert exempt == one_d | {n for n in every if n.endswith("bias")}


def test_mamba_exempts_the_ssm_parameters_norms_and_biases():
    _, every, exempt = _names("tiny-mamba")
    for expected in ("A_log", "D", "norm.weight", "norm_f.weight", "dt_proj.bias", "conv1d.bias"):
        assert any(n.endswith(expected) for n in exempt), expected
    assert not any(n.endswith("in_proj.weight") or n.endswith("embeddings.weight") for n in exempt)


def test_an_unknown_rule_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown weight-decay rule 'l2'.*bias-norm"):
        no_decay_names(torch.nn.Linear(2, 2), "l2")
    assert set(RULES) == {"bias-norm", "none", "bias-1d", "bias-norm-ssm"}


def test_the_plan_records_the_rule_and_the_trainer_builds_its_groups_from_it(tmp_path, monkeypatch):
    from harness.cases import Case
    from harness.job import Job
    from harness.methods import NAIVE
    from harness.plan import make_plan
    from harness.trainer import build_trainer

    case = Case(model="tiny-convnext", gpu_type="cpu", method=NAIVE)
    plan = make_plan(case, 2, 1, output_dir=str(tmp_path / "out"))
    assert plan.optimizer["no_decay"] == "bias-1d"
    assert plan.optimizer["target"] == "torch.optim:AdamW"
    job = Job(mode="train", plan=plan.to_dict(), nproc=1, device="cpu")
    trainer = build_trainer(job, recorder=None, ramp=None)
    optimizer = trainer.create_optimizer()
    decays = {g["weight_decay"]: len(g["params"]) for g in optimizer.param_groups}
    model, _, exempt = _names("tiny-convnext")
    assert decays == {
        get_model("tiny-convnext").recipe.weight_decay: len(list(model.parameters())) - len(exempt),
        0.0: len(exempt),
    }
    assert trainer.decay_groups["rule"] == "bias-1d" and set(trainer.decay_groups["no_decay"]) == exempt
