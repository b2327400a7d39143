"""The estimator study's settings: a recipe (data, model, sft, rl, eval) plus its ``experiment`` section, checked
when they are built, so a typo in a variant fails before any data are generated."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..modeling.ecg_encoder import TOKEN_MODES
from ..train.recipe import RecipeConfig, read_config
from ..train.settings import ESTIMATORS, RLSettings

# Variants compared when the config names none.
DEFAULT_VARIANTS: dict[str, dict] = {
    "grpo": {"estimator": "grpo"},
    "drgrpo": {"estimator": "drgrpo"},
    "rloo": {"estimator": "rloo"},
    "disco": {"estimator": "disco"},
    "drpo-paper": {"estimator": "drpo", "drpo_mode": "paper", "drpo_history": None},
    "drpo-reference": {"estimator": "drpo", "drpo_mode": "reference"},
    "drpo-history256": {"estimator": "drpo", "drpo_mode": "paper", "drpo_history": 256},
}


@dataclass
class ExperimentConfig:
    """A recipe (data, model, sft, rl, eval sections) plus the ``experiment`` section."""

    recipe: RecipeConfig
    seeds: int = 3
    baseline: str = "grpo"
    variants: dict[str, dict] = field(default_factory=lambda: copy.deepcopy(DEFAULT_VARIANTS))
    rare_share: float = 0.05        # a domain is "rare" when its share of training rows is below this
    val: str | None = None          # validation jsonl when the data are files (generated data carry their own)
    # share of the training rows (stratified by domain) the warm start trains on; RL trains on the disjoint rest.
    # 1.0: both use every row (the warm start has then fitted every question RL sees)
    warm_start_share: float = 1.0
    # ECG token modes compared on the ECG domain: per mode and seed a warm start and one arm trained and evaluated
    # on ECG rows only (the same rows for every mode), so the modes differ in the ECG encoder's output alone
    ecg_token_modes: list[str] = field(default_factory=list)
    ecg_token_variant: str | None = None  # the arm run per token mode (default: the first DRPO variant)
    ecg_token_settings: dict = field(default_factory=dict)  # sft / rl overrides for those units
    raw: dict = field(default_factory=dict)  # the YAML as read (quick overrides applied), saved as config.yaml

    def __post_init__(self) -> None:
        _check_variants(self.variants, self.recipe.rl)
        self.ecg_token_variant = _token_mode_arm(self.ecg_token_modes, self.ecg_token_variant, self.variants)
        settings = self.ecg_token_settings
        if not isinstance(settings, dict) or set(settings) - {"sft", "rl"} or not all(
                isinstance(v, dict) for v in settings.values()):
            raise ValueError(f"experiment.ecg_token_settings must map 'sft' and/or 'rl' to overrides, got "
                             f"{settings!r}")
        if not 0.0 < self.warm_start_share <= 1.0:
            raise ValueError(f"experiment.warm_start_share={self.warm_start_share}: a share of the training rows "
                             "in (0, 1]")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.baseline not in self.variants:
            raise ValueError(f"experiment.baseline={self.baseline!r} is not one of the variants "
                             f"{list(self.variants)}")
        if self.recipe.model.get("init", "tiny") != "tiny":
            raise ValueError("the comparison builds a tiny model per seed; model.init must be 'tiny'")

    def seed_list(self) -> list[int]:
        return [self.recipe.seed + k for k in range(self.seeds)]

    def ordered_variants(self) -> dict[str, dict]:
        """The baseline first, then the config's order: tables and plots read left to right from it."""
        order = [self.baseline, *[n for n in self.variants if n != self.baseline]]
        return {n: self.variants[n] for n in order}


_EXPERIMENT_KEYS = {"seeds", "baseline", "variants", "rare_share", "val", "quick", "warm_start_share",
                    "ecg_token_modes", "ecg_token_variant", "ecg_token_settings"}


def _merge(base: dict, over: dict) -> dict:
    """Recursive dict update (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_experiment_config(path: str | Path, quick: bool = False, seeds: int | None = None) -> ExperimentConfig:
    """Read the YAML; ``quick`` applies the file's ``experiment.quick`` overrides; ``seeds`` overrides the count."""
    raw = read_config(path)
    exp = dict(raw.get("experiment") or {})
    unknown = set(exp) - _EXPERIMENT_KEYS
    if unknown:
        raise ValueError(f"config section 'experiment': unknown key(s) {sorted(unknown)}; "
                         f"expected {sorted(_EXPERIMENT_KEYS)}")
    if quick:
        if not exp.get("quick"):
            raise ValueError(f"{path}: --quick needs an 'experiment.quick' section of overrides")
        raw = _merge(raw, exp["quick"])
        exp = dict(raw.get("experiment") or {})
    exp.pop("quick", None)
    recipe = RecipeConfig.from_dict({k: v for k, v in raw.items() if k != "experiment"})
    variants = exp.get("variants") or copy.deepcopy(DEFAULT_VARIANTS)
    modes = exp.get("ecg_token_modes") or []
    return ExperimentConfig(recipe=recipe, seeds=int(seeds if seeds is not None else exp.get("seeds", 3)),
                            baseline=str(exp.get("baseline", "grpo")), variants=variants,
                            rare_share=float(exp.get("rare_share", 0.05)), val=exp.get("val"),
                            warm_start_share=float(exp.get("warm_start_share", 1.0)), ecg_token_modes=modes,
                            ecg_token_variant=exp.get("ecg_token_variant"),
                            ecg_token_settings=exp.get("ecg_token_settings") or {}, raw=raw)


def _check_variants(variants: dict[str, dict], rl: dict) -> None:
    """Every variant must name a known estimator and only RL settings the trainer has, with valid values."""
    if not isinstance(variants, dict) or not all(isinstance(v, dict) and "estimator" in v
                                                 for v in variants.values()):
        raise ValueError("experiment.variants must map a name to RL settings that include 'estimator'")
    known = {f.name for f in fields(RLSettings)}
    for name, over in variants.items():
        if over["estimator"] not in ESTIMATORS:
            raise ValueError(f"experiment.variants.{name}: unknown estimator {over['estimator']!r}; "
                             f"choose one of {list(ESTIMATORS)}")
        bad = sorted(set(over) - known)
        if bad:
            raise ValueError(f"experiment.variants.{name}: unknown RL key(s) {bad}")
        try:
            RLSettings(**{**rl, **over, "progress_bar": False})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"experiment.variants.{name}: {exc}") from None


def _token_mode_arm(modes: list[str], variant: str | None, variants: dict[str, dict]) -> str | None:
    """The arm run per ECG token mode: ``variant``, or by default the first DRPO variant."""
    if not isinstance(modes, list):
        raise ValueError(f"experiment.ecg_token_modes must be a list of token modes, got {modes!r}")
    bad = [m for m in modes if m not in TOKEN_MODES]
    if bad:
        raise ValueError(f"experiment.ecg_token_modes: unknown mode(s) {bad}; choose from {list(TOKEN_MODES)}")
    if variant is None and modes:
        variant = next((n for n, v in variants.items() if v["estimator"] == "drpo"), None)
        if variant is None:
            raise ValueError("experiment.ecg_token_modes needs a DRPO variant or experiment.ecg_token_variant")
    if variant is not None and variant not in variants:
        raise ValueError(f"experiment.ecg_token_variant={variant!r} is not one of the variants {list(variants)}")
    return variant
