"""Finding weights: local paths and hub ids, and the clear failure when they cannot be had (no network here)."""

from __future__ import annotations

import pytest

from photomaker_server.engine.errors import WeightsUnavailable
from photomaker_server.engine.weights import resolve_base_model, resolve_checkpoint, unavailable_weights


def test_local_locations_are_used_as_they_are(tiny_locations):
    assert resolve_base_model(str(tiny_locations["photomaker"])) == tiny_locations["photomaker"]
    assert resolve_checkpoint(str(tiny_locations["checkpoint"])) == tiny_locations["checkpoint"]


def test_missing_local_directory_says_what_to_do(tmp_path):
    with pytest.raises(WeightsUnavailable, match=r"does not exist.*--base-model.*--tiny"):
        resolve_base_model(str(tmp_path / "RealVisXL"))


def test_directory_that_is_not_a_diffusers_model(tmp_path):
    with pytest.raises(WeightsUnavailable, match="no model_index.json"):
        resolve_base_model(str(tmp_path))


def test_hub_id_offline_fails_fast_naming_what_was_tried():
    with pytest.raises(WeightsUnavailable) as info:
        resolve_base_model("SG161222/RealVisXL_V3.0", variant="fp16")
    message = str(info.value)
    assert "SG161222/RealVisXL_V3.0" in message and "variant fp16" in message and "default files" in message
    assert "--base-model /path/to/diffusers-dir" in message


def test_checkpoint_on_the_hub_offline():
    with pytest.raises(WeightsUnavailable, match=r"'photomaker-v1.bin' from hub repo 'TencentARC/PhotoMaker'.*--photomaker-checkpoint"):
        resolve_checkpoint("TencentARC/PhotoMaker/photomaker-v1.bin")


def test_missing_local_checkpoint(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "photomaker-v1.bin"))


def test_availability_check_before_serving(tiny_locations, tmp_path):
    assert unavailable_weights([str(tiny_locations["photomaker"]), str(tiny_locations["checkpoint"])]) == []
    problems = unavailable_weights(["SG161222/RealVisXL_V3.0", str(tmp_path / "nope")])
    assert len(problems) == 2 and problems[0].startswith("SG161222/RealVisXL_V3.0:") and "no such file" in problems[1]


def test_device_choice_on_this_machine():
    import torch

    from photomaker_server.engine.devices import choose_placement

    cpu = choose_placement("cpu")
    assert cpu.dtype == torch.float32 and cpu.generator(5).initial_seed() == 5
    if not torch.cuda.is_available():
        assert choose_placement("auto").device.type in ("cpu", "mps")
