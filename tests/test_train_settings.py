"""Recipe sections are typed and checked at load: a typo or a bad value fails before any work, naming the key."""

from __future__ import annotations

import pytest

from qoqmed.modeling.tiny import TinySpec
from qoqmed.train.recipe import RecipeConfig
from qoqmed.train.settings import EvalSection, ModelSettings, RLSettings, SFTSettings

SYNTHETIC = {"data": {"synthetic": {"n_train": 40}}}


def _load(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return RecipeConfig.from_yaml(path)


@pytest.mark.parametrize("yaml_text, named", [
    ("rl: {estimatr: drpo}\ndata: {synthetic: {}}\n", "estimatr"),
    ("rl: {estimator: ppo}\ndata: {synthetic: {}}\n", "rl.estimator"),
    ("rl: {num_generations: 4, batch_size: 6}\ndata: {synthetic: {}}\n", "rl.batch_size"),
    ("model: {init: tiny, hiden_size: 64}\ndata: {synthetic: {}}\n", "hiden_size"),
    ("model: {init: tiny, dtype: float33}\ndata: {synthetic: {}}\n", "model.dtype"),
    ("model: {init: some/folder, hidden_size: 64}\ndata: {synthetic: {}}\n", "hidden_size"),
    ("sft: {epoch: 3}\ndata: {synthetic: {}}\n", "epoch"),
    ("eval: {reward_preset: papr}\ndata: {synthetic: {}}\n", "eval.reward_preset"),
    ("data: {synthetic: {n_trian: 10}}\n", "n_trian"),
    ("data: {train: a.jsonl}\n", "'test'"),
    ("dta: {synthetic: {}}\n", "dta"),
])
def test_recipe_typos_fail_at_load_naming_the_key(tmp_path, yaml_text, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        _load(tmp_path, yaml_text)


def test_sections_are_typed(tmp_path):
    cfg = _load(tmp_path, "seed: 3\nmodel: {init: tiny, hidden_size: 64}\nrl: {estimator: grpo, max_steps: 2}\n"
                          "sft: {epochs: 1}\neval: {batch_size: 4}\ndata: {synthetic: {n_train: 40}}\n")
    assert cfg.model_settings == ModelSettings(init="tiny", tiny=TinySpec(hidden_size=64))
    assert isinstance(cfg.sft, SFTSettings) and isinstance(cfg.eval, EvalSection)
    rl = cfg.rl_settings()
    assert isinstance(rl, RLSettings) and (rl.estimator, rl.max_steps, rl.seed) == ("grpo", 2, 3)
    assert cfg.rl == {"estimator": "grpo", "max_steps": 2}  # the mapping as written, for overrides


def test_settings_need_no_trl():
    import subprocess
    import sys

    code = ("import sys, qoqmed.train.settings, qoqmed.train.recipe; "
            "sys.exit(int(any(m == 'trl' or m.startswith('trl.') for m in sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
