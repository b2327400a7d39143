"""Warm start, prompt encoding and a 2-step RL run through TRL with ECG and image rows."""

import inspect
import json
import shutil

import pytest
import torch
from trl import GRPOTrainer, SFTTrainer

from qoqmed.algos import group_advantages
from qoqmed.data.errors import DataError
from qoqmed.data.prompts import encode_batch, load_record, target_text
from qoqmed.data.schema import load_records
from qoqmed.modeling import QoQMedForConditionalGeneration
from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.rewards.scores import score
from qoqmed.train.drpo_state import read_drpo_state
from qoqmed.train.rl import QoQMedRLTrainer, build_rl_dataset, make_reward_function, train_rl
from qoqmed.train.settings import RLSettings
from qoqmed.train.trl_adapter import GRPOTrainerAdapter, ScoredRollouts, advantages_of_scorable
from qoqmed.train.sft import SFTSettings, warm_start

SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)


@pytest.fixture(scope="module")
def records(mini_records_path):
    return load_records(mini_records_path)


@pytest.fixture(scope="module")
def tiny(records):
    return build_tiny([r.problem for r in records] + [r.answer for r in records], SPEC, seed=0)


def test_trl_private_hooks_keep_their_signatures():
    """The trainer overrides these TRL methods; a TRL upgrade that changes them must fail here first."""
    expected = {
        "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        "_generate_and_score_completions": ["self", "inputs"],
        "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
        "_save_checkpoint": ["self", "model", "trial"],
        "create_accelerator_and_postprocess": ["self"],
        "save_model": ["self", "output_dir", "_internal_call"],
        "_save": ["self", "output_dir", "state_dict"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params, name
    for name in ("compute_loss", "create_accelerator_and_postprocess", "save_model", "_save"):  # the FSDP mixin's
        assert list(inspect.signature(getattr(SFTTrainer, name)).parameters) == expected[name], name
    logps = list(inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters)
    assert logps[:6] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size"]


def test_only_the_adapter_overrides_trl_internals():
    """QoQMedRLTrainer fills in the adapter's hooks; every private GRPOTrainer method it changes is the adapter's."""
    trl_private = {name for klass in GRPOTrainer.__mro__ for name in vars(klass) if name.startswith("_")
                   and not name.startswith("__")}
    assert "_calculate_rewards" in trl_private
    assert not trl_private & set(vars(QoQMedRLTrainer)), sorted(trl_private & set(vars(QoQMedRLTrainer)))
    assert {"_calculate_rewards", "_generate_and_score_completions", "_save_checkpoint"} <= set(vars(GRPOTrainerAdapter))


def _scored(rewards: list[float], generations: int = 2) -> ScoredRollouts:
    n = len(rewards)
    return ScoredRollouts(torch.tensor(rewards), [f"q{i // generations}" for i in range(n)], ["ct"] * n,
                          [None] * n, ["ct"] * n, generations)


def test_unscored_rollouts_get_no_advantage_and_leave_the_estimate():
    """As in TRL, a rollout without a reward (NaN) gets advantage 0; its question is left out of the estimate."""
    seen = []

    def estimate(scored, kl):
        seen.append((scored.rewards.tolist(), scored.question_ids(), None if kl is None else kl.tolist()))
        return group_advantages(scored.rewards, scored.question_ids())

    full = _scored([1.0, 0.0, 0.5, 0.0, 1.0, 1.0])
    assert torch.equal(advantages_of_scorable(full, None, estimate), group_advantages(full.rewards,
                                                                                       full.question_ids()))
    partial = _scored([1.0, 0.0, float("nan"), 0.0, 1.0, 0.0])
    out = advantages_of_scorable(partial, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), estimate)
    assert seen[-1] == ([1.0, 0.0, 1.0, 0.0], ["q0@0", "q0@0", "q2@1", "q2@1"], pytest.approx([0.1, 0.2, 0.5, 0.6]))
    assert out[2:4].tolist() == [0.0, 0.0] and torch.isfinite(out).all()
    assert torch.allclose(out[[0, 1, 4, 5]], group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), [0, 0, 1, 1]))
    assert torch.equal(advantages_of_scorable(_scored([float("nan")] * 4), None, estimate), torch.zeros(4))


def test_target_text_is_a_perfect_answer(records, tiny):
    processor, _ = tiny
    for rec in records:
        loaded = load_record(rec)
        text = target_text(loaded, processor)
        mask = None
        if rec.segmentation_path:
            from qoqmed.data.readers import load_mask
            mask = load_mask(rec.resolve(rec.segmentation_path))
        s = score(text, rec.answer, mask, image_size=loaded.images[0].size if rec.images else None)
        assert s["accuracy"] == 1.0 and s["format"] == 1.0
        assert s["iou"] is None if not rec.boxes else s["iou"] == 1.0


def test_labels_cover_only_the_answer(records, tiny):
    processor, _ = tiny
    batch = encode_batch(processor, [load_record(r) for r in records[:3]], with_targets=True)
    for row in range(3):
        keep = batch["labels"][row] != -100
        answer = processor.tokenizer.decode(batch["input_ids"][row][keep])
        assert answer.startswith("<think>") and answer.endswith("<|im_end|>")
        assert "\\boxed{" + records[row].answer + "}" in answer


def test_reward_function_reads_grounding(records, tiny):
    processor, _ = tiny
    _, facts = build_rl_dataset(records, processor)
    reward = make_reward_function(facts)
    rec = next(r for r in records if r.boxes)
    perfect = target_text(load_record(rec), processor)
    wrong = "<think>```json\n[{\"bbox_2d\": [0, 0, 5, 5], \"label\": \"x\"}]\n```\nno</think>\n\\boxed{Normal}"
    good, bad = reward([[{"content": perfect}], [{"content": wrong}]], id=[rec.id, rec.id])
    assert good == pytest.approx(1.0) and bad < 0.25
    # boxes_required reaches the scorer: an empty list on a row with a region loses format credit there only
    empty = "<think>```json\n[]\n```\nno</think>\n\\boxed{" + rec.answer + "}"
    plain, strict = (make_reward_function(facts, boxes_required=flag)([[{"content": empty}]], id=[rec.id])[0]
                     for flag in (None, True))
    assert strict == pytest.approx(plain - 0.2 / 3)  # format weight 0.2, one third of it
    other = next(r for r in records if not r.boxes and r.mask_image is None)
    text = "<think>```json\n[]\n```\nno</think>\n\\boxed{" + other.answer + "}"
    assert (make_reward_function(facts, boxes_required=True)([[{"content": text}]], id=[other.id])
            == make_reward_function(facts)([[{"content": text}]], id=[other.id]))


def test_warm_start_lowers_loss(records, tiny, tmp_path):
    processor, model = tiny
    history = warm_start(model, processor, records, tmp_path / "sft",
                         SFTSettings(epochs=4, batch_size=4, logging_steps=1, learning_rate=3e-3))
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("estimator", ["drpo", "grpo"])
def test_two_rl_steps_update_the_model_and_log_domains(records, tiny, tmp_path, estimator):
    processor, model = tiny
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    settings = RLSettings(estimator=estimator, num_generations=2, batch_size=8, max_steps=2,
                          max_completion_length=16, logging_steps=1, learning_rate=1e-2, temperature=1.5)
    logs = train_rl(tmp_path / "start", records, tmp_path / "rl", settings)
    assert len(logs["domains"]) == 2
    for entry in logs["domains"]:
        rewards = [v for k, v in entry.items() if k.startswith("reward/")]
        assert rewards and all(0.0 <= r <= 1.0 for r in rewards)
    assert QoQMedForConditionalGeneration.from_pretrained(tmp_path / "rl" / "model") is not None
    assert json.loads((tmp_path / "rl" / "rl_logs.json").read_text())["settings"]["estimator"] == estimator
    if estimator == "drpo":
        assert (tmp_path / "rl" / "model" / "drpo_state.npz").exists()


def _length_reward(completions, **_):
    """Varies between rollouts of one prompt, so advantages are non-zero even for an untrained model."""
    return [len(c[0]["content"]) / 64 for c in completions]


def test_ecg_reaches_every_trl_forward_and_rl_trains_the_encoder(records, tiny, tmp_path):
    """Generation, log-prob and loss passes over ECG rows all call the encoder; the RL update reaches it."""
    processor, model = tiny
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    ecg_only = [r for r in records if r.ecg]
    dataset, facts = build_rl_dataset(ecg_only, processor)
    from trl import GRPOConfig

    loaded = QoQMedForConditionalGeneration.from_pretrained(tmp_path / "start")
    seen = []
    loaded.model.ecg_encoder.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    before = loaded.model.ecg_encoder.patch_embed.weight.detach().clone()
    args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=8, report_to=[], save_strategy="no",
                      use_cpu=True, beta=0.1, gradient_checkpointing=False, logging_steps=1,
                      learning_rate=1e-2, temperature=2.0)
    trainer = QoQMedRLTrainer(model=loaded, reward_funcs=_length_reward, args=args,
                                train_dataset=dataset, processing_class=processor,
                                settings=RLSettings(num_generations=2, batch_size=4), facts=facts)
    ref_seen = []
    trainer.ref_model.model.ecg_encoder.register_forward_hook(lambda m, a, o: ref_seen.append(a[0].shape[0]))
    trainer.train()
    # generation prefill, the sampling-time log-probs DRPO's KL damping needs (beta > 0) and the loss forward of
    # the policy, and the reference log-probs, each see the ECGs of all 4 rollouts
    assert seen == [4, 4, 4] and ref_seen == [4]
    assert not torch.equal(before, loaded.model.ecg_encoder.patch_embed.weight.detach())


def test_drpo_gets_per_rollout_kl_when_generations_are_reused(records, tiny, tmp_path):
    processor, model = tiny
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    from qoqmed.algos.drpo import DRPO

    seen_kl = []
    original = DRPO.__call__

    def spy(self, rewards, question_ids, domains, kl=None):
        seen_kl.append(kl)
        return original(self, rewards, question_ids, domains, kl=kl)

    DRPO.__call__ = spy
    try:
        settings = RLSettings(num_generations=2, num_iterations=2, batch_size=4, max_steps=2,
                              max_completion_length=8, beta=0.1)
        train_rl(tmp_path / "start", records, tmp_path / "rl", settings)
    finally:
        DRPO.__call__ = original
    assert seen_kl and all(k is not None and k.shape == (4,) and torch.isfinite(k).all() for k in seen_kl)


def test_checkpoints_carry_the_drpo_state_and_resume_restores_it(records, tiny, tmp_path):
    processor, model = tiny
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    from qoqmed.algos.drpo import DRPO

    settings = RLSettings(num_generations=2, batch_size=4, max_steps=2, max_completion_length=8, save_steps=1,
                          drpo_mode="reference")
    train_rl(tmp_path / "start", records, tmp_path / "rl", settings)
    saved = read_drpo_state(tmp_path / "rl" / "checkpoint-2" / "drpo_state.npz")
    assert sum(len(v) for v in saved["domains"].values()) == 4  # 2 steps x 2 questions of history

    restored = []
    original = DRPO.load_state_dict

    def spy(self, state):
        restored.append(state)
        return original(self, state)

    DRPO.load_state_dict = spy
    try:
        settings = RLSettings(num_generations=2, batch_size=4, max_steps=3, max_completion_length=8,
                              save_steps=1, drpo_mode="reference")
        train_rl(tmp_path / "start", records, tmp_path / "rl", settings,
                 resume_from=str(tmp_path / "rl" / "checkpoint-2"))
    finally:
        DRPO.load_state_dict = original
    assert restored and sum(len(v) for v in restored[0]["domains"].values()) == 4
    final = read_drpo_state(tmp_path / "rl" / "checkpoint-3" / "drpo_state.npz")
    assert sum(len(v) for v in final["domains"].values()) == 6

    # someone else's checkpoint whose state carries a code payload: refused, the payload never runs
    evil = tmp_path / "shared" / "checkpoint-2"
    shutil.copytree(tmp_path / "rl" / "checkpoint-2", evil)
    (evil / "drpo_state.npz").unlink()
    marker = tmp_path / "payload-ran"
    torch.save({"domains": {}, "x": _Payload(marker)}, evil / "drpo_state.pt")
    with pytest.raises(DataError, match="drpo_state.pt: refused to load"):
        train_rl(tmp_path / "start", records, tmp_path / "shared", settings, resume_from=str(evil))
    assert not marker.exists()


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_trl_overridden_hooks_and_config_fields_exist():
    """Further TRL/transformers internals the trainer relies on: resume hooks and GRPOConfig's loss fields."""
    from trl import GRPOConfig

    expected = {
        "_load_rng_state": ["self", "checkpoint"],
        "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
        "_get_output_dir": ["self", "trial"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params, name
    fields = set(GRPOConfig.__dataclass_fields__)
    assert {"delta", "epsilon", "epsilon_high", "beta", "loss_type", "num_iterations"} <= fields


def test_rl_settings_map_onto_trl_and_reject_bad_values(tmp_path):
    from qoqmed.train.rl import make_grpo_config

    s = RLSettings(estimator="rloo", dual_clip=3.0, loss_type="sequence_mean", epsilon_low=0.2, epsilon_high=0.3,
                   beta=1e-4, num_generations=2, batch_size=4)
    cfg = make_grpo_config(s, tmp_path)
    assert (cfg.delta, cfg.loss_type, cfg.epsilon, cfg.epsilon_high, cfg.beta) == (3.0, "grpo", 0.2, 0.3, 1e-4)
    assert make_grpo_config(RLSettings(loss_type="token_mean"), tmp_path).loss_type == "dapo"
    assert make_grpo_config(RLSettings(), tmp_path).delta is None
    for bad, match in [(dict(estimator="ppo"), "estimator"), (dict(drpo_mode="exact"), "drpo_mode"),
                       (dict(dual_clip=1.1), "dual_clip"), (dict(loss_type="mean"), "loss_type"),
                       (dict(drpo_mode="reference", drpo_history=8), "drpo_history"),
                       (dict(batch_size=6, num_generations=4), "multiple"), (dict(freeze=["eyes"]), "freeze"),
                       (dict(model_dtype="bfloat17"), "model_dtype"), (dict(probe_steps=0), "probe_steps"),
                       (dict(drpo_k_max=0), "k_max"), (dict(domain_key=""), "domain_key"),
                       (dict(reward_preset="reference", boxes_required=True), "boxes_required")]:
        with pytest.raises(ValueError, match=match):
            RLSettings(**bad)


@pytest.mark.parametrize("estimator", ["rloo", "disco"])
def test_rl_estimators_log_accuracy_csv_and_periodic_eval(records, tiny, tmp_path, estimator):
    import csv

    processor, model = tiny
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    settings = RLSettings(estimator=estimator, num_generations=2, batch_size=4, max_steps=2, max_completion_length=8,
                          logging_steps=1, eval_steps=2, dual_clip=3.0, loss_type="sequence_mean", beta=0.0,
                          progress_bar=False)
    logs = train_rl(tmp_path / "start", records[4:], tmp_path / "rl", settings, eval_records=records[:2])
    assert len(logs["domains"]) == 2 and logs["eval_domains"]  # two train steps, one evaluation
    assert all(any(k.startswith("accuracy/") for k in e) for e in logs["domains"])
    with open(tmp_path / "rl" / "rl_metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = {(r["split"], r["metric"]) for r in rows}
    assert {("train", "reward"), ("train", "accuracy"), ("eval", "reward")} <= metrics
    assert {r["domain"] for r in rows} <= {"ecg", "chest_xray"}
    assert any(k.startswith("domain/reward/") for h in logs["log_history"] for k in h)  # reaches report_to


def test_tensorboard_gets_per_domain_scalars(records, tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    processor, model = tiny
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    settings = RLSettings(num_generations=2, batch_size=4, max_steps=1, max_completion_length=8, logging_steps=1,
                          report_to=["tensorboard"], progress_bar=False, drpo_mode="bounded")
    train_rl(tmp_path / "start", records, tmp_path / "rl", settings)
    events = list((tmp_path / "rl" / "runs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert any(t.startswith("train/domain/reward/") for t in tags), sorted(tags)[:20]
    assert any(t.startswith("train/domain/mean_abs_scale/") for t in tags)


def test_probe_curve_is_logged_from_step_zero_and_does_not_change_training(records, tiny, tmp_path):
    """The probe set is scored at step 0 and every probe_steps; its fixed draws leave the training RNG alone."""
    import csv

    processor, model = tiny
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    base = dict(estimator="grpo", num_generations=2, batch_size=4, max_steps=2, max_completion_length=8,
                logging_steps=1, beta=0.0, progress_bar=False, learning_rate=1e-2, temperature=1.5)
    plain = train_rl(tmp_path / "start", records, tmp_path / "plain", RLSettings(**base))
    probed = train_rl(tmp_path / "start", records, tmp_path / "probed",
                      RLSettings(**base, probe_steps=1, probe_per_domain=2))
    steps = [e["step"] for e in probed["probe_domains"]]
    assert steps[0] == 0 and 2 in steps
    first = probed["probe_domains"][0]
    assert {"reward/ecg", "reward/chest_xray", "pass@2/ecg", "constant_accuracy/ecg"} <= set(first)
    assert first["rollouts/ecg"] == 4  # 2 probe questions x 2 rollouts
    # training rewards and advantages are identical with and without probes
    assert [e["reward/ecg"] for e in plain["domains"]] == [e["reward/ecg"] for e in probed["domains"]]
    with open(tmp_path / "probed" / "rl_metrics.csv", newline="") as f:
        assert {r["split"] for r in csv.DictReader(f)} == {"train", "probe"}
    # the probe draws are fixed: scoring the same model twice gives the same numbers
    again = train_rl(tmp_path / "start", records, tmp_path / "again", RLSettings(**base, probe_steps=1,
                                                                                  probe_per_domain=2))
    assert again["probe_domains"][0] == probed["probe_domains"][0]
    # with eval records beside the probe set each set is logged once per evaluation, under its own split
    both = train_rl(tmp_path / "start", records[::2], tmp_path / "both",
                    RLSettings(**base, probe_steps=1, probe_per_domain=2, eval_steps=1), eval_records=records[1::2])
    assert [e["step"] for e in both["probe_domains"]] == [0, 1, 2]
    assert [e["step"] for e in both["eval_domains"]] == [0, 1, 2]
    assert {e["split"] for e in both["eval_domains"]} == {"eval"}


def test_drpo_gets_the_sampling_time_kl_for_damping(records, tiny, tmp_path, monkeypatch):
    """With beta > 0 the KL to the reference reaches DRPO on every step, also when batches are not reused."""
    from qoqmed.algos.drpo import DRPO

    processor, model = tiny
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    seen = []
    original = DRPO.__call__

    def spy(self, rewards, question_ids, domains, kl=None):
        seen.append(None if kl is None else torch.as_tensor(kl).clone())
        return original(self, rewards, question_ids, domains, kl=kl)

    monkeypatch.setattr(DRPO, "__call__", spy)
    settings = RLSettings(estimator="drpo", drpo_mode="paper", num_generations=2, batch_size=8, max_steps=2,
                          max_completion_length=8, logging_steps=1, beta=0.04, temperature=1.5, progress_bar=False)
    train_rl(tmp_path / "start", records, tmp_path / "rl", settings)
    assert len(seen) == 2 and all(k is not None and k.shape == (8,) and torch.isfinite(k).all() for k in seen)
    assert seen[0].abs().max() < 1e-5  # step 0: the policy is the reference
    # a policy that has moved away from the reference: the KL DRPO damps with is positive
    from qoqmed.train.rl import build_rl_trainer

    seen.clear()
    trainer = build_rl_trainer(tmp_path / "start", records, tmp_path / "moved", RLSettings(**{**settings.__dict__,
                                                                                         "max_steps": 1}))
    with torch.no_grad():
        trainer.model.lm_head.weight.add_(torch.randn_like(trainer.model.lm_head.weight))
    trainer.train()
    assert len(seen) == 1 and seen[0].min() > 0
    seen.clear()
    train_rl(tmp_path / "start", records, tmp_path / "rl0",
             RLSettings(**{**settings.__dict__, "beta": 0.0, "max_steps": 1}))
    assert seen == [None]  # no reference model: no KL, no damping


def test_domain_key_groups_drpo_by_dataset(records, tiny):
    from qoqmed.train.rl import group_of

    processor, _ = tiny
    dataset, _ = build_rl_dataset(records, processor, domain_key="dataset")
    assert set(dataset["group"]) == {r.dataset for r in records}
    assert set(dataset["domain"]) == {r.domain for r in records}
    by_label, _ = build_rl_dataset(records, processor, domain_key="answer")  # rarity and difficulty per label
    assert list(by_label["group"]) == [r.answer for r in records]
    with pytest.raises(ValueError, match="domain_key"):
        group_of(records[0], "no_such_field")
