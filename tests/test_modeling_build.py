"""Building QoQ-Med from a Qwen2.5-VL checkpoint on disk: a tiny random Qwen2.5-VL saved by transformers plays the
role of Qwen2.5-VL-7B-Instruct, and a checkpoint in the official ECG-JEPA layout the role of the ECG weights."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.modeling import ECGCheckpointError, QoQMedForConditionalGeneration, freeze
from qoqmed.modeling.build import BuildError, build_from_base, model_info, parameter_counts
from qoqmed.modeling.ecg_encoder import ECGEncoderConfig, ECGJEPAEncoder, native_to_official_key
from qoqmed.modeling.tiny import TinySpec, save_tiny_base

SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)
ECG = dict(hidden_size=32, num_layers=2, num_heads=2)


def _image(seed=0, size=(112, 84)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def _ecg(seed=0):
    return np.random.default_rng(seed).standard_normal((8, 2500)).astype("float32")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen25vl_base")
    save_tiny_base(path, ["What rhythm does this ECG show?"], SPEC, seed=0)
    return path


@pytest.fixture(scope="module")
def ecg_ckpt(tmp_path_factory):
    """A checkpoint in the release's layout: {'encoder': {W_P.*, encoder_blocks.blocks.<i>.*, norm.*, pos_embed}}."""
    torch.manual_seed(1)
    enc = ECGJEPAEncoder(ECGEncoderConfig(**ECG))
    state = {native_to_official_key(k): v for k, v in enc.state_dict().items()}
    state["pos_embed"] = enc.pos_embed.clone()
    path = tmp_path_factory.mktemp("ecg") / "multiblock_epoch100.pth"
    torch.save({"encoder": state, "epoch": 100}, path)
    return path, state


@pytest.fixture(scope="module")
def built(base, ecg_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("qoqmed_built")
    build_from_base(base, out, ecg_encoder=ecg_ckpt[0], ecg_config=ECG, ecg_token_mode="per_lead",
                    dtype="float32", freeze_vision=True)
    return out


def _prompt(processor, image, ecg):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "ECG:"}, {"type": "ecg"}, {"type": "text", "text": " and X-ray:"},
        {"type": "image"}, {"type": "text", "text": " What is the diagnosis?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=[text], images=[image], ecg=[ecg], return_tensors="pt")


def test_built_model_loads_with_auto_classes_and_generates(built, ecg_ckpt):
    model = AutoModelForImageTextToText.from_pretrained(built).eval()
    processor = AutoProcessor.from_pretrained(built)
    assert type(model) is QoQMedForConditionalGeneration
    assert processor.num_ecg_tokens == 8
    # official ECG weights arrived
    assert torch.equal(model.model.ecg_encoder.patch_embed.weight, ecg_ckpt[1]["W_P.weight"])
    assert torch.equal(model.model.ecg_encoder.blocks[1].attn.qkv.weight,
                       ecg_ckpt[1]["encoder_blocks.blocks.1.attn.qkv.weight"])
    enc = _prompt(processor, _image(0), _ecg(0))
    assert (enc["input_ids"] == model.config.ecg_token_id).sum() == 8
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False, eos_token_id=None)
        new = out[:, enc["input_ids"].shape[1]:]
        assert new.shape == (1, 5)
        # the saved generation config suppresses every placeholder token
        assert set(model.generation_config.suppress_tokens) >= set(model.placeholder_token_ids())
        assert not torch.isin(new, torch.tensor(model.placeholder_token_ids())).any()
        # the ECG reaches the answer
        enc2 = dict(enc)
        enc2["ecg_values"] = enc["ecg_values"] + 1.0
        assert not torch.equal(model(**enc).logits[:, -1], model(**enc2).logits[:, -1])


def test_build_keeps_base_weights_and_outputs(built, base):
    """Without ECG, the built model computes exactly what the base Qwen2.5-VL computes."""
    qoq = AutoModelForImageTextToText.from_pretrained(built).eval()
    processor = AutoProcessor.from_pretrained(built)
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(base).eval()
    n_base = ref.config.text_config.vocab_size
    ref_sd = ref.state_dict()
    for key, value in qoq.state_dict().items():
        if key.startswith(("model.ecg_", "model.language_model.embed_tokens", "lm_head")):
            continue
        assert torch.equal(value, ref_sd[key]), key
    assert torch.equal(qoq.lm_head.weight[:n_base], ref.lm_head.weight)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    enc = processor(text=[text], images=[_image(1)], return_tensors="pt")
    with torch.no_grad():
        a = qoq(**enc).logits[..., :n_base]
        b = ref(**enc).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ecg_tokens_follow_the_base_vocabulary(built, base):
    base_tok = AutoTokenizer.from_pretrained(base)
    cfg = json.loads((built / "config.json").read_text())
    # <|ecg_pad|> first: on the real Qwen2.5 vocabulary (151,665 tokens) this gives the reference id 151665
    assert cfg["ecg_token_id"] == len(base_tok)
    assert {cfg["ecg_start_token_id"], cfg["ecg_end_token_id"]} == {len(base_tok) + 1, len(base_tok) + 2}
    record = json.loads((built / "qoqmed_build.json").read_text())
    assert record["ecg_encoder_init"] == "official checkpoint" and record["frozen_modules"] == ["vision"]
    assert record["default_system_prompt"] == "You are a helpful assistant."


def test_default_system_turn_of_the_base_template_is_kept(built):
    processor = AutoProcessor.from_pretrained(built)
    user = {"role": "user", "content": [{"type": "ecg"}, {"type": "text", "text": "Rhythm?"}]}
    text = processor.apply_chat_template([user], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|ecg_start|><|ecg_pad|><|ecg_end|>Rhythm?")
    system = {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    text = processor.apply_chat_template([system, user], add_generation_prompt=True)
    assert text.count("<|im_start|>system") == 1 and "helpful" not in text


def test_freezing_is_recorded_and_reapplied(built, tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(built)
    assert model.config.frozen_modules == ["vision"]
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert all(p.requires_grad for p in model.model.ecg_encoder.parameters())
    counts = freeze(model, vision=False, llm=True)
    assert model.config.frozen_modules == ["llm"]
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    assert not model.lm_head.weight.requires_grad
    assert all(p.requires_grad for p in model.model.visual.parameters())
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.save_pretrained(tmp_path)
    again = QoQMedForConditionalGeneration.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in again.model.language_model.parameters())
    assert all(p.requires_grad for p in again.model.ecg_projector.parameters())


def test_bf16_eager_build(base):
    processor, model = build_from_base(base, ecg_config=ECG, dtype="bf16", attn_implementation="eager",
                                       ecg_projector="mlp", freeze_ecg=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"
    assert isinstance(model.model.ecg_projector, torch.nn.Sequential)
    assert not any(p.requires_grad for p in model.model.ecg_encoder.parameters())
    enc = _prompt(processor, _image(2), _ecg(2))
    with torch.no_grad():
        logits = model.eval()(**enc).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_build_errors_name_the_file_and_reason(base, built, tmp_path):
    with pytest.raises(BuildError, match="no config.json"):
        build_from_base(tmp_path)
    with pytest.raises(BuildError, match="not in the local Hugging Face cache"):
        build_from_base("qoqmed-tests/not-a-cached-model")
    with pytest.raises(BuildError, match="already a QoQ-Med model"):
        build_from_base(built)
    with pytest.raises(BuildError, match="attn_implementation='flash'"):
        build_from_base(base, attn_implementation="flash")
    with pytest.raises(BuildError, match="missing.pth: ECG encoder checkpoint not found"):
        build_from_base(base, ecg_encoder=tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"encoder": {"W_P.weight": torch.zeros(32, 50)}}, wrong)
    with pytest.raises(ECGCheckpointError, match="missing keys"):
        build_from_base(base, ecg_encoder=wrong, ecg_config=ECG, dtype="float32")


def test_incomplete_base_weights_are_an_error(base, tmp_path):
    """A base missing LLM weights must fail loudly instead of training from random LLM layers."""
    for f in base.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(base / "model.safetensors"))
    dropped = next(k for k in weights if "layers.0.mlp.up_proj" in k)
    del weights[dropped]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BuildError, match=r"missing \(1\): model.language_model.layers.0.mlp.up_proj.weight"):
        build_from_base(tmp_path, ecg_config=ECG, dtype="float32")


def test_cli_model_init_and_info(base, ecg_ckpt, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    size = ["--ecg-width", "32", "--ecg-depth", "2", "--ecg-heads", "2"]
    res = runner.invoke(app, ["model", "init", "--base", str(base), "--out", str(out), "--dtype", "float32",
                              "--ecg-encoder", str(ecg_ckpt[0]), *size, "--ecg-tokens", "patch", "--freeze-llm",
                              "--min-pixels", "0", "--max-pixels", "0"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines
    assert "official weights" in text and "frozen: llm" in text
    info = model_info(out)
    assert info["frozen_modules"] == ["llm"] and info["ecg"]["tokens_per_record"] == 400
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert parameter_counts(model) == info["parameters"]
    assert torch.equal(model.model.ecg_encoder.norm.weight, ecg_ckpt[1]["norm.weight"])
    res = runner.invoke(app, ["model", "info", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["parameters"] == info["parameters"]
    # the published encoder size (768 wide, 12 blocks) does not fit this small checkpoint: a clear error
    res = runner.invoke(app, ["model", "init", "--base", str(base), "--out", str(tmp_path / "x"),
                              "--ecg-encoder", str(ecg_ckpt[0])])
    assert res.exit_code == 2 and "does not fit the ECG encoder" in " ".join(res.output.split())


def test_size_table_matches_published_parameter_counts():
    """The 3B/7B/32B hyper-parameters written into benchmarks/model_sizes.py give the published model sizes."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "model_sizes.py"
    spec = importlib.util.spec_from_file_location("model_sizes", path)
    sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizes)
    for name, published in (("3B", 3.75e9), ("7B", 8.29e9), ("32B", 33.45e9)):  # Qwen2.5-VL-*-Instruct cards
        with torch.device("meta"):
            model = QoQMedForConditionalGeneration(sizes.real_config(name))
        counts = parameter_counts(model)
        assert counts["ecg"] == 85_067_520  # ECG-JEPA: 768 wide, 12 blocks
        assert abs(counts["total"] - counts["ecg"] - counts["projector"] - published) / published < 0.005
