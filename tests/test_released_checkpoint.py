"""The released time-series checkpoint layout (time_series_embedding.*) into a qoqmed model, strictly, and back."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from qoqmed.modeling.convert_released import (load_released_time_series, read_released_time_series,
                                              released_time_series_state)
from qoqmed.modeling.ecg_encoder import ECGCheckpointError, sincos_2d_positions
from qoqmed.modeling.tiny import TinySpec, build_tiny

HIDDEN, LAYERS = 32, 2


def _released_state(text_hidden: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """A state dict written as the released time-series model names it, at the tiny sizes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    h, enc = HIDDEN, "time_series_embedding.encoder."
    state = {enc + "W_P.weight": r(h, 50), enc + "W_P.bias": r(h), enc + "norm.weight": 1 + r(h),
             enc + "norm.bias": r(h), enc + "pos_embed": sincos_2d_positions(h, 8, 50).unsqueeze(0)}
    for i in range(LAYERS):
        b = f"{enc}encoder_blocks.blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(h), b + "norm1.bias": r(h), b + "attn.qkv.weight": r(3 * h, h),
                      b + "attn.proj.weight": r(h, h), b + "attn.proj.bias": r(h), b + "norm2.weight": 1 + r(h),
                      b + "norm2.bias": r(h), b + "mlp.fc1.weight": r(4 * h, h), b + "mlp.fc1.bias": r(4 * h),
                      b + "mlp.fc2.weight": r(h, 4 * h), b + "mlp.fc2.bias": r(h)})
    state["time_series_embedding.linear.weight"] = r(text_hidden, h)
    state["time_series_embedding.linear.bias"] = r(text_hidden)
    state["model.layers.0.mlp.up_proj.weight"] = r(4, 4)  # an LLM weight: not the converter's business
    return state


def _tiny(seed: int):
    spec = TinySpec(ecg_hidden=HIDDEN, ecg_layers=LAYERS, ecg_token_mode="pooled")
    processor, model = build_tiny(spec=spec, seed=seed)
    return processor, model.eval()




def test_round_trip_is_lossless():
    _, model = _tiny(seed=0)
    state = _released_state(model.config.text_config.hidden_size)
    load_released_time_series(model, state, "released.safetensors")
    back = released_time_series_state(model)
    ours = {k: v for k, v in state.items() if k.startswith("time_series_embedding.")}
    assert set(back) == set(ours)
    for key, value in ours.items():
        assert torch.equal(back[key], value), key
    # a second model loaded from the exported state gives identical ECG features
    _, other = _tiny(seed=5)
    ecg = torch.randn(3, 8, 2500, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = other.model.get_ecg_features(ecg)
        load_released_time_series(other, back)
        a, b = model.model.get_ecg_features(ecg), other.model.get_ecg_features(ecg)
    assert a.shape == (3, 1, model.config.text_config.hidden_size)
    assert torch.equal(a, b) and not torch.equal(before, b)
    # the projector is the released Linear on the pooled (mean over tokens) encoder output
    with torch.no_grad():
        pooled = model.model.ecg_encoder(ecg).mean(dim=1)
        expected = pooled @ state["time_series_embedding.linear.weight"].T + state["time_series_embedding.linear.bias"]
    assert torch.allclose(a[:, 0], expected, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("time_series_embedding.linear.bias"), "linear.bias: missing"),
    (lambda s: s.__setitem__("time_series_embedding.linear.weight", torch.zeros(3, HIDDEN)), r"checkpoint \(3, 32\)"),
    (lambda s: s.pop("time_series_embedding.encoder.encoder_blocks.blocks.1.attn.qkv.weight"), "missing keys"),
    (lambda s: s.__setitem__("time_series_embedding.encoder.pos_embed", torch.zeros(1, 400, HIDDEN)), "sin-cos"),
    (lambda s: s.__setitem__("time_series_embedding.head.weight", torch.zeros(1)), "unexpected time-series key"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("time_series")], "no time_series_embedding"),
])
def test_strict_check_copies_nothing_on_a_problem(change, message):
    _, model = _tiny(seed=0)
    state = _released_state(model.config.text_config.hidden_size)
    change(state)
    before = {k: v.clone() for k, v in released_time_series_state(model).items()}
    with pytest.raises(ECGCheckpointError, match=message):
        load_released_time_series(model, state, "ckpt")
    after = released_time_series_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_model_must_have_the_released_ecg_head():
    _, model = build_tiny(spec=TinySpec(ecg_hidden=HIDDEN, ecg_layers=LAYERS, ecg_token_mode="per_lead"))
    with pytest.raises(ECGCheckpointError, match="ecg_token_mode='per_lead'"):
        load_released_time_series(model, _released_state(model.config.text_config.hidden_size), "ckpt")


def test_read_from_files_and_cli(tmp_path):
    processor, model = _tiny(seed=0)
    state = _released_state(model.config.text_config.hidden_size)
    folder = tmp_path / "released"
    folder.mkdir()
    save_file({k: v for k, v in state.items() if "encoder" in k}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: v.contiguous() for k, v in state.items() if "encoder" not in k},
              str(folder / "model-00002-of-00002.safetensors"))
    read = read_released_time_series(folder)
    assert set(read) == {k for k in state if k.startswith("time_series_embedding.")}
    torch.save(state, tmp_path / "ts.pt")
    assert set(read_released_time_series(tmp_path / "ts.pt")) == set(read)

    from qoqmed.cli import app

    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(app, ["model", "convert-released", str(tmp_path / "model"), str(folder),
                                      "--out", str(tmp_path / "converted")])
    assert result.exit_code == 0, result.output
    from qoqmed.modeling.modeling_qoqmed import QoQMedForConditionalGeneration

    converted = QoQMedForConditionalGeneration.from_pretrained(tmp_path / "converted")
    back = released_time_series_state(converted)
    assert all(torch.equal(back[k], v) for k, v in read.items())
    bad = CliRunner().invoke(app, ["model", "convert-released", str(tmp_path / "model"), str(tmp_path / "nothing"),
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "not found" in bad.output
