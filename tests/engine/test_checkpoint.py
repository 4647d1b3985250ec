"""Checkpoint files: both layouts load strictly through the real loading code; damaged files fail in words."""

from __future__ import annotations

import pytest
import torch

from photomaker_server.engine.checkpoint import CheckpointError, build_id_encoder, read_checkpoint, save_checkpoint
from photomaker_server.engine.id_encoder import IDEncoderConfig, PhotoMakerIDEncoder


@pytest.fixture(scope="module")
def tensors(tiny_locations):
    ckpt = read_checkpoint(tiny_locations["checkpoint"])
    return ckpt.id_encoder, ckpt.lora_weights


@pytest.mark.parametrize("name", ["photomaker.bin", "photomaker.safetensors"])
def test_round_trip_in_both_layouts(tmp_path, tensors, name):
    id_state, lora = tensors
    path = save_checkpoint(tmp_path / name, id_state, lora)
    ckpt = read_checkpoint(path)
    assert set(ckpt.id_encoder) == set(id_state) and set(ckpt.lora_weights) == set(lora)
    model = build_id_encoder(ckpt, text_widths=(64, 64))
    for key, value in model.state_dict().items():
        assert torch.equal(value, id_state[key]), key


def test_pickle_layout_is_the_published_one(tiny_locations):
    raw = torch.load(tiny_locations["checkpoint"], weights_only=True)
    assert set(raw) == {"id_encoder", "lora_weights"}
    assert any(k.endswith("attn2.processor.to_k_lora.down.weight") for k in raw["lora_weights"])


def test_v1_architecture_keys_and_size():
    """The full-size encoder has the published key set and ~326.3 M parameters (the checkpoint's id_encoder)."""
    with torch.device("meta"):
        model = PhotoMakerIDEncoder(IDEncoderConfig())
    keys = set(model.state_dict())
    assert "vision_model.pre_layrnorm.weight" in keys and "visual_projection_2.weight" in keys
    assert "vision_model.encoder.layers.23.mlp.fc2.bias" in keys and "fuse_module.mlp1.fc1.weight" in keys
    assert model.fuse_module.mlp1.fc1.in_features == 4096
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 326.3e6) < 0.1e6, params
    config = IDEncoderConfig.from_state_dict({k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()})
    assert config == IDEncoderConfig() and (config.num_hidden_layers, config.hidden_size) == (24, 1024)


def _damaged(tmp_path, tensors, change, name="bad.bin"):
    id_state, lora = (dict(t) for t in tensors)
    change(id_state, lora)
    return read_checkpoint(save_checkpoint(tmp_path / name, id_state, lora))


def test_missing_key_is_named(tmp_path, tensors):
    ckpt = _damaged(tmp_path, tensors, lambda s, l: s.pop("fuse_module.mlp2.fc1.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys: fuse_module\.mlp2\.fc1\.bias"):
        build_id_encoder(ckpt)


def test_extra_key_is_named(tmp_path, tensors):
    ckpt = _damaged(tmp_path, tensors, lambda s, l: s.update({"visual_projection_3.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: visual_projection_3\.weight"):
        build_id_encoder(ckpt)


def test_misshapen_key_is_named(tmp_path, tensors):
    ckpt = _damaged(tmp_path, tensors, lambda s, l: s.update({"fuse_module.layer_norm.weight": torch.ones(7)}))
    with pytest.raises(CheckpointError, match=r"wrong shapes: fuse_module\.layer_norm\.weight \(7,\) != \(128,\)"):
        build_id_encoder(ckpt)


def test_checkpoint_for_another_base_is_refused(tiny_locations):
    with pytest.raises(CheckpointError, match=r"projects to widths 64\+64.*768\+1280"):
        build_id_encoder(read_checkpoint(tiny_locations["checkpoint"]), text_widths=(768, 1280))


def test_bad_lora_naming_is_refused(tmp_path, tensors):
    with pytest.raises(CheckpointError, match="attention-processor naming"):
        _damaged(tmp_path, tensors, lambda s, l: l.update({"unet.foo.lora_A.weight": torch.zeros(1)}))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable PhotoMaker checkpoint"),
        (b"not a checkpoint at all", "not a readable PhotoMaker checkpoint"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "broken.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_truncated_file(tmp_path, tiny_locations):
    path = tmp_path / "truncated.bin"
    path.write_bytes(tiny_locations["checkpoint"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(path)


def test_wrong_top_level_keys(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"expected top-level keys \['id_encoder', 'lora_weights'\]"):
        read_checkpoint(path)


def test_pickle_with_code_is_refused(tmp_path):
    """weights_only loading: a pickle that would run code is rejected, not executed."""
    path = tmp_path / "evil.bin"
    torch.save({"id_encoder": {}, "lora_weights": {}, "x": object()}, path)
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(path)


def test_safetensors_stray_prefix(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "flat.safetensors"
    save_file({"vision_model.x": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="must start with 'id_encoder.'"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.bin")


def test_v2_architecture_keys_and_size():
    """The full-size v2 encoder: v1's tower and fuse module plus the 217 M-parameter perceiver, its sizes read back
    from the tensors (16 heads of 128 over 2048), as photomaker-v2.bin's keys name them."""
    from photomaker_server.engine.id_encoder_v2 import IDEncoderV2Config, PhotoMakerIDEncoderV2

    with torch.device("meta"):
        model = PhotoMakerIDEncoderV2(IDEncoderV2Config())
    keys = set(model.state_dict())
    assert {"qformer_perceiver.token_proj.2.weight", "qformer_perceiver.token_norm.bias",
            "qformer_perceiver.perceiver_resampler.layers.3.0.to_kv.weight",
            "qformer_perceiver.perceiver_resampler.layers.3.1.3.weight", "visual_projection.weight",
            "visual_projection_2.weight", "fuse_module.mlp1.fc1.weight"} <= keys
    assert sum(p.numel() for p in model.qformer_perceiver.parameters()) == 217_122_816
    assert sum(p.numel() for p in model.parameters()) == 543_395_840
    config = IDEncoderV2Config.from_state_dict({k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()})
    assert config == IDEncoderV2Config() and config.heads == 16 and config.num_tokens == 2
