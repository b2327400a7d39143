"""LoRA through peft: settings, SFT and DRPO steps on adapters, the KL reference, saving, merging and serving."""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.data.prompts import encode_batch, load_record
from qoqmed.data.schema import load_records
from qoqmed.infer import QoQMedPipeline
from qoqmed.modeling import QoQMedForConditionalGeneration
from qoqmed.modeling.lora import load_model, merge_adapter
from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.train.recipe import RecipeConfig
from qoqmed.train.rl import build_rl_trainer
from qoqmed.train.settings import LoRASettings, RLSettings

SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)
runner = CliRunner()


@pytest.fixture(scope="module")
def records(mini_records_path):
    return load_records(mini_records_path)


@pytest.fixture(scope="module")
def base_dir(records, tmp_path_factory):
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records], SPEC, seed=0)
    path = tmp_path_factory.mktemp("lora") / "base"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _logits(model, processor, records):
    batch = encode_batch(processor, [load_record(r) for r in records])
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _completion_logps(model, ids, mask, extra, completion, temperature):
    """Per-token log-probs of ``completion`` (the tail of ``ids``) at the sampling temperature, as TRL scores them."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, **extra).logits[:, -completion.shape[1] - 1:-1]
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)


def test_settings_are_checked_at_load():
    for bad, match in [({"r": 0}, "lora.r"), ({"target_modules": ["qkv"]}, "target_modules"),
                       ({"projector": "yes"}, "lora.projector"), ({"stages": ["eval"]}, "lora.stages"),
                       ({"quantize": "2bit", "stages": ["rl"]}, "lora.quantize")]:
        with pytest.raises(ValueError, match=match):
            LoRASettings(**bad)
    with pytest.raises(ValueError, match="unknown key"):
        RecipeConfig.from_dict({"data": {"synthetic": {}}, "lora": {"rank": 8}})
    assert RecipeConfig.from_dict({"data": {"synthetic": {}}, "lora": {}}).lora == LoRASettings()
    assert RecipeConfig.from_dict({"data": {"synthetic": {}}}).lora is None
    with pytest.raises(ValueError, match="rl.freeze lists"):
        RecipeConfig.from_dict({"data": {"synthetic": {}}, "lora": {}, "rl": {"freeze": ["vision", "projector"]}})
    RecipeConfig.from_dict({"data": {"synthetic": {}}, "lora": {}, "rl": {"freeze": ["vision", "ecg"]}})


def test_qlora_without_bitsandbytes_is_a_clear_error():
    pytest.importorskip("peft")
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed: QLoRA is available")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="needs the bitsandbytes package"):
        LoRASettings(quantize="4bit", stages=["rl"])
    with pytest.raises(ValueError, match="RL stage"):
        LoRASettings(quantize="4bit")


def test_adapters_target_the_language_model_only(base_dir):
    from peft import get_peft_model

    model = get_peft_model(QoQMedForConditionalGeneration.from_pretrained(base_dir), LoRASettings().peft_config())
    lora = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert lora and all(".language_model.layers." in n for n in lora)
    assert {n.rsplit(".", 1)[1] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(".visual." in n for n in trainable) and not any(".ecg_encoder." in n for n in trainable)
    assert any("ecg_projector.modules_to_save" in n for n in trainable)  # projector: train (the default)


def test_lora_drpo_steps_keep_the_base_and_use_it_as_kl_reference(records, base_dir, tmp_path):
    images = [r for r in records if r.domain == "chest_xray"]
    settings = RLSettings(num_generations=2, batch_size=8, max_steps=3, max_completion_length=8, logging_steps=1,
                          learning_rate=5e-2, temperature=1.5, beta=0.04, progress_bar=False, drpo_mode="bounded")
    trainer = build_rl_trainer(base_dir, images, tmp_path / "rl", settings,
                               lora=LoRASettings(r=4, dropout=0.0, ecg_encoder="train"))
    assert trainer.ref_model is None  # TRL keeps no second model: the reference is the base, adapters off
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert frozen and all("lora_" in n or "modules_to_save" in n for n in adapters)
    def varied(completions, **_):  # a random-init model never scores: reward distinct characters instead
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        varied.last_components = [{"accuracy": 0.0}] * len(texts)
        return [len(set(t)) / (len(t) + 1) for t in texts]

    trainer.reward_funcs[0] = varied
    batches = []
    generate = trainer._generate_and_score_completions

    def record(inputs):
        out = generate(inputs)
        batches.append(out)
        return out

    trainer._generate_and_score_completions = record
    trainer.train()
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())  # bit-identical base
    assert any(not torch.equal(params[n], p) for n, p in adapters.items() if "lora_B" in n)

    # the reference log-probs TRL computed after the first update (step 2; the warm-up gives step 1 no rate) are the base model's, not the policy's
    out = batches[-1]
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    extra = {k: out[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if k in out}
    fresh = QoQMedForConditionalGeneration.from_pretrained(base_dir)
    base, policy = (_completion_logps(m, ids, mask, extra, out["completion_ids"], settings.temperature)
                    for m in (fresh, trainer.model))
    keep = out["completion_mask"].bool()
    torch.testing.assert_close(out["ref_per_token_logps"][keep], base[keep], atol=1e-5, rtol=1e-5)
    assert (policy[keep] - base[keep]).abs().max() > 1e-3  # the adapters did move the policy

    trainer.save_model(str(tmp_path / "adapter"))
    saved = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in saved and "adapter_config.json" in saved
    assert "model.safetensors" not in saved


def test_sft_lora_saves_merges_and_serves(records, base_dir, mini_records_path, tmp_path):
    """qoqmed sft --lora: the adapter saved, merged (flag and CLI) and loaded by the pipeline and predict."""
    res = runner.invoke(app, ["sft", "--data", str(mini_records_path), "--out", str(tmp_path / "sft"), "--model",
                              str(base_dir), "--lora", "--lora-r", "4", "--max-steps", "3", "--batch-size", "4",
                              "--learning-rate", "1e-2", "--merge"])
    assert res.exit_code == 0, res.output
    adapter, merged_dir = tmp_path / "sft" / "model", tmp_path / "sft" / "merged"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(base_dir.resolve())
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "tokenizer.json").is_file()

    base = QoQMedForConditionalGeneration.from_pretrained(base_dir).state_dict()
    merged = QoQMedForConditionalGeneration.from_pretrained(merged_dir).state_dict()
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    assert changed and all(n.split(".")[-2].endswith("_proj") or "ecg_projector" in n for n in changed), changed
    assert not any(".visual." in n or ".ecg_encoder." in n for n in changed)

    # the adapter on its base (peft, unmerged) and every merged form give the same logits
    unmerged = PeftModel.from_pretrained(QoQMedForConditionalGeneration.from_pretrained(base_dir), adapter)
    processor = QoQMedPipeline.from_pretrained(adapter).processor
    rows = records[:4]
    reference = _logits(unmerged, processor, rows)
    assert (reference - _logits(QoQMedForConditionalGeneration.from_pretrained(base_dir), processor, rows)).abs().max() > 1e-4
    for model in (load_model(adapter), QoQMedForConditionalGeneration.from_pretrained(merged_dir)):
        torch.testing.assert_close(_logits(model, processor, rows), reference, atol=1e-5, rtol=1e-4)
    res = runner.invoke(app, ["model", "merge-lora", str(adapter), "--out", str(tmp_path / "cli_merged")])
    assert res.exit_code == 0, res.output
    torch.testing.assert_close(_logits(QoQMedForConditionalGeneration.from_pretrained(tmp_path / "cli_merged"),
                                       processor, rows), reference, atol=1e-5, rtol=1e-4)

    image = str(mini_records_path.parent / records[1].images[0])
    answers = []
    for model_dir in (adapter, merged_dir):
        res = runner.invoke(app, ["predict", "--model", str(model_dir), "--image", image, "--max-new-tokens", "6",
                                  "--json", "--no-overlay", "Findings?"])
        assert res.exit_code == 0, res.output
        answers.append(json.loads(res.stdout)["text"])
    assert answers[0] == answers[1]

    from fastapi.testclient import TestClient

    from qoqmed.serve import create_app

    with TestClient(create_app(QoQMedPipeline.from_pretrained(adapter, max_new_tokens=4))) as client:
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Findings?"}],
                                                          "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        assert isinstance(reply.json()["choices"][0]["message"]["content"], str)

    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="base_model_name_or_path"):
        QoQMedPipeline.from_pretrained(moved)
    res = runner.invoke(app, ["predict", "--model", str(moved), "--image", image, "Findings?"])
    assert res.exit_code != 0 and "base_model_name_or_path" in res.output
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter"):
        merge_adapter(base_dir, tmp_path / "x")


def test_recipe_with_a_lora_section_trains_adapters_in_both_stages(mini_records_path, tmp_path):
    recipe = {"data": {"train": str(mini_records_path), "test": str(mini_records_path)},
              "model": {"init": "tiny", "hidden_size": 64, "intermediate_size": 128, "vision_depth": 1},
              "sft": {"max_steps": 2, "batch_size": 4, "progress_bar": False},
              "rl": {"num_generations": 2, "batch_size": 4, "max_steps": 1, "max_completion_length": 8,
                     "progress_bar": False},
              "eval": {"max_new_tokens": 4, "evaluate_warm_start": False},
              "lora": {"r": 4, "merge": True}}
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    res = runner.invoke(app, ["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    assert (run / "sft_model" / "config.json").is_file()  # the warm start's adapters merged: RL's base
    adapter = json.loads((run / "rl" / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((run / "sft_model").resolve())
    assert adapter["r"] == 4 and adapter["modules_to_save"] == ["ecg_projector"]
    assert (run / "rl" / "merged" / "config.json").is_file()
    assert json.loads((run / "metrics.json").read_text())["overall"]


def test_lora_rl_resumes_its_adapters_from_a_checkpoint(records, base_dir, tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from qoqmed.train.rl import train_rl

    common = dict(num_generations=2, batch_size=4, max_completion_length=8, progress_bar=False, save_steps=2)
    lora = LoRASettings(r=4)
    train_rl(base_dir, records, tmp_path / "rl", RLSettings(max_steps=2, **common), lora=lora)
    saved = load_file(tmp_path / "rl" / "checkpoint-2" / "adapter_model.safetensors")
    trainer = build_rl_trainer(base_dir, records, tmp_path / "rl", RLSettings(max_steps=3, **common), lora=lora)
    with torch.no_grad():  # whatever the checkpoint holds must replace these
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.normal_()
    trainer._load_from_checkpoint(str(tmp_path / "rl" / "checkpoint-2"))
    state = get_peft_model_state_dict(trainer.model)  # the adapter's tensors under their saved names
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
