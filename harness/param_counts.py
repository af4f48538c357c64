"""Parameter counts of the registered models, so that collection-time estimates import no torch.

Each number is what `models.get_model(name).num_parameters()` counts on the meta device;
tests/test_engine_cpu.py checks that they still agree. A model missing here is counted live.
"""

PARAMETERS: dict[str, int] = {
    "convnext": 392_900_177,
    "mamba": 2_768_345_600,
    "pythia-1.4b": 1_414_647_808,
    "pythia-14m": 14_067_712,
    "pythia-160m": 162_322_944,
    "pythia-1b": 1_011_781_632,
    "pythia-2.8b": 2_775_208_960,
    "pythia-410m": 405_334_016,
    "pythia-6.9b": 6_857_302_016,
    "roberta": 355_412_057,
    "tiny-convnext": 270_298,
    "tiny-mamba": 131_008,
    "tiny-roberta": 179_328,
    "tiny-vit": 108_106,
    "vit": 325_688_657,
}


def num_parameters(model: str) -> int:
    if model in PARAMETERS:
        return PARAMETERS[model]
    from models import get_model

    return get_model(model).num_parameters()
