"""RL scores the rollouts it sampled: per-token log-probs of every sampled completion agree between

(a) generation (the logits ``generate`` sampled from), (b) a fresh forward of that one row encoded alone, and
(c) the trainer's loss pass after TRL's shuffle and split,

on a batch mixing ECG, one-image, several-image, NIfTI-volume, ECG+image and text-only rows, for every estimator,
gradient accumulation 1 and 2 and ``num_iterations`` 1 and 2. The model is loaded from disk as users do, so what the
saved processor remembers (padding side) is part of what is tested.
"""

import json
from collections import defaultdict

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from qoqmed.data.prompts import load_record, messages_for
from qoqmed.data.schema import load_records
from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.train.rl import build_rl_trainer
from qoqmed.train.settings import ESTIMATORS, RLSettings

SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)
TOL = 1e-4


def _png(path, w, h, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(path)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """12 rows of six kinds, images of different sizes so prompt lengths differ within every batch."""
    root = tmp_path_factory.mktemp("mixed")
    for d in ("ecg", "chest_xray", "mammography", "ct", "pathology"):
        (root / d).mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        np.save(root / "ecg" / f"e{i}.npy", rng.standard_normal((8, 2500)).astype("float32"))
        rows.append(dict(id=f"ecg-{i}", domain="ecg", dataset="mix/ecg", problem="<ecg>\nRhythm? Options: Normal, AF.",
                         answer=["Normal", "AF"][i], ecg=[f"ecg/e{i}.npy"]))
        _png(root / "chest_xray" / f"c{i}.png", 56 + 28 * i, 84, i)
        rows.append(dict(id=f"one-{i}", domain="chest_xray", dataset="mix/cxr",
                         problem="<image>\nFindings? Options: Effusion, Normal.", answer=["Effusion", "Normal"][i],
                         images=[f"chest_xray/c{i}.png"], boxes=[{"bbox_2d": [5, 5, 30, 30], "label": "Effusion"}]))
        for j in range(3):
            _png(root / "mammography" / f"m{i}{j}.png", 56 + 28 * j, 56 + 28 * i, 10 + 3 * i + j)
        rows.append(dict(id=f"many-{i}", domain="mammography", dataset="mix/mammo",
                         problem="<image><image><image>\nBI-RADS? Options: 1, 2.", answer=str(i + 1),
                         images=[f"mammography/m{i}{j}.png" for j in range(3)]))
        vol = (rng.random((40, 48, 6 + 2 * i)) * 400 - 200).astype("float32")
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "ct" / f"v{i}.nii.gz")
        rows.append(dict(id=f"vol-{i}", domain="ct", dataset="mix/ct", problem="<volume>\nLesion? Options: Yes, No.",
                         answer=["Yes", "No"][i], volumes=[{"path": f"ct/v{i}.nii.gz", "slices": 2 + i}]))
        _png(root / "chest_xray" / f"x{i}.png", 84, 56, 20 + i)
        np.save(root / "ecg" / f"x{i}.npy", rng.standard_normal((8, 2500)).astype("float32"))
        rows.append(dict(id=f"ecgimg-{i}", domain="chest_xray", dataset="mix/fusion",
                         problem="<ecg>\n<image>\nDiagnosis? Options: Effusion, Normal.",
                         answer=["Normal", "Effusion"][i], ecg=[f"ecg/x{i}.npy"], images=[f"chest_xray/x{i}.png"]))
        rows.append(dict(id=f"text-{i}", domain="pathology", dataset="mix/text",
                         problem="A biopsy report reads: glands are regular." + " Benign or malignant?" * (1 + 3 * i)
                         + " Options: Benign, Malignant.", answer=["Benign", "Malignant"][i]))
    for n, row in enumerate(rows):  # prompts must differ: the recorder finds a row's record by its prompt ids
        row["problem"] = f"Case {n}. " + row["problem"]
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps({"split": "train", **r}) + "\n" for r in rows))
    records = load_records(path)
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records], SPEC, seed=0)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model", records


class LogpRecorder:
    """Collects per-completion log-probs from generation, a fresh one-row forward and the trainer's passes."""

    def __init__(self, trainer, records):
        self.trainer = trainer
        self.processor = trainer.processing_class
        self.temperature = trainer.args.temperature
        self.gen: dict[tuple, tuple[int, torch.Tensor]] = {}
        self.fresh: dict[tuple, torch.Tensor] = {}
        self.loss: list[tuple[tuple, int, torch.Tensor]] = []
        self.prompts = {}
        for rec in records:  # each record's prompt ids encoded alone (no padding at all)
            enc = self._encode(rec)
            self.prompts[tuple(enc["input_ids"][0].tolist())] = (rec, enc)
        assert len(self.prompts) == len(records), "prompts must be distinct to match rows to records"
        self.eos = set(trainer.eos_token_ids)
        self.pad = self.processor.tokenizer.pad_token_id
        model = trainer.model
        self._generate = model.generate
        model.generate = self._recording_generate
        self._logps = trainer._get_per_token_logps_and_entropies
        trainer._get_per_token_logps_and_entropies = self._recording_logps

    def _encode(self, rec):
        loaded = load_record(rec)
        text = self.processor.apply_chat_template(messages_for(loaded), add_generation_prompt=True)
        ecg = [torch.from_numpy(e) for e in loaded.ecgs] or None
        return self.processor(images=loaded.images or None, text=[text], ecg=ecg, return_tensors="pt")

    def _logp_at(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.float() / self.temperature, -1).gather(-1, tokens[:, None])[:, 0]

    def _recording_generate(self, *args, **kwargs):
        out = self._generate(*args, **kwargs, output_logits=True, return_dict_in_generate=True)
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        p = ids.shape[1]
        logits = torch.stack(out.logits, 1)  # (B, C, V): raw logits, before the suppress-token processor
        for b in range(ids.shape[0]):
            prompt = ids[b][mask[b].bool()]
            comp = out.sequences[b, p:]
            stop = next((j for j, t in enumerate(comp.tolist()) if t in self.eos), len(comp) - 1)
            comp = comp[: stop + 1]
            key = tuple(prompt.tolist()) + tuple(comp.tolist())
            self.gen[key] = (self.trainer.state.global_step, self._logp_at(logits[b, : len(comp)], comp))
            self.fresh[key] = self._fresh(tuple(prompt.tolist()), comp)
        return out.sequences

    @torch.no_grad()
    def _fresh(self, prompt: tuple, comp: torch.Tensor) -> torch.Tensor:
        rec, enc = self.prompts[prompt]
        model = self.trainer.model
        ids = torch.cat([enc["input_ids"], comp[None]], 1)
        inputs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        mm = enc.get("mm_token_type_ids")
        if mm is not None:
            inputs["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(comp)[None]], 1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs).logits
        return self._logp_at(logits[0, enc["input_ids"].shape[1] - 1: -1], comp)

    def _recording_logps(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        logps, ent, aux = self._logps(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        if torch.is_grad_enabled():  # the loss pass (the old-policy and reference passes run without grad)
            for b in range(input_ids.shape[0]):
                head, tail = slice(None, -logits_to_keep), slice(-logits_to_keep, None)
                prompt = tuple(input_ids[b, head][attention_mask[b, head].bool()].tolist())
                comp = input_ids[b, tail][attention_mask[b, tail].bool()]
                now = self._fresh(prompt, comp)  # the current policy, which the loss must score
                self.loss.append((prompt + tuple(comp.tolist()), self.trainer.state.global_step,
                                  logps[b, : len(comp)].detach(), now))
        return logps, ent, aux

    def discrepancies(self) -> dict[str, float]:
        """Largest |difference| per comparison; loss-pass rows only while the policy is still the sampling one."""
        worst = defaultdict(float)
        for key, (_, g) in self.gen.items():
            worst["generation vs fresh"] = max(worst["generation vs fresh"], float((g - self.fresh[key]).abs().max()))
        matched = later = 0
        for key, step, logps, now in self.loss:
            worst["loss vs fresh"] = max(worst["loss vs fresh"], float((logps - now).abs().max()))
            gen_step, g = self.gen[key]
            if step == gen_step:  # before the first optimizer step on this generation batch
                matched += 1
                worst["loss vs generation"] = max(worst["loss vs generation"], float((logps - g).abs().max()))
            else:
                later += 1
        worst["loss rows at sampling"], worst["loss rows after an update"] = matched, later
        return dict(worst)


def _kinds(records):
    kinds = set()
    for r in records:
        kinds.add("ecg+image" if r.ecg and r.images else "ecg" if r.ecg else "volume" if r.volumes else
                  "several images" if len(r.images) > 1 else "image" if r.images else "text")
    return kinds


CASES = [("drpo", 1, 1), ("drpo", 2, 1), ("drpo", 1, 2), ("drpo", 2, 2)] + [(e, 1, 1) for e in ESTIMATORS if e != "drpo"]


@pytest.mark.parametrize("estimator,accumulation,iterations", CASES)
def test_loss_pass_scores_the_sampled_rollouts(mixed, tmp_path, estimator, accumulation, iterations):
    model_dir, records = mixed
    assert _kinds(records) == {"ecg", "image", "several images", "volume", "ecg+image", "text"}
    settings = RLSettings(estimator=estimator, num_generations=2, batch_size=12, max_steps=iterations,
                          learning_rate=1e-3,
                          gradient_accumulation_steps=accumulation, num_iterations=iterations, beta=0.04,
                          max_completion_length=8, temperature=0.9, logging_steps=1, progress_bar=False,
                          drpo_mode="bounded")
    trainer = build_rl_trainer(model_dir, records, tmp_path / "rl", settings)
    assert trainer.processing_class.padding_side == "left"
    recorder = LogpRecorder(trainer, records)
    trainer.train()
    rollouts = 12 * accumulation
    assert len(recorder.gen) >= rollouts * 0.75  # distinct (prompt, completion) keys; duplicates are rare
    worst = recorder.discrepancies()
    assert worst["loss rows at sampling"] >= rollouts
    if iterations > 1:  # the second pass over the batch scores it under the updated policy
        assert worst["loss rows after an update"] >= rollouts
    assert worst["generation vs fresh"] < TOL, worst
    assert worst["loss vs generation"] < TOL, worst
    assert worst["loss vs fresh"] < TOL, worst


def test_right_padding_is_refused_where_it_would_shift_images(mixed, tmp_path):
    """A processor saved with right padding is switched to left by the trainer; the alignment check guards the rest."""
    model_dir, records = mixed
    settings = RLSettings(estimator="grpo", num_generations=2, batch_size=12, max_steps=1, progress_bar=False,
                          max_completion_length=4)
    trainer = build_rl_trainer(model_dir, records, tmp_path / "rl", settings)
    assert trainer.processing_class.tokenizer.padding_side == "left"
    ids = torch.tensor([[1, 2, trainer.processing_class.image_token_id, 3]])
    with pytest.raises(RuntimeError, match="line up"):
        trainer._check_alignment(ids, torch.tensor([[0, 1, 0, 0]]))
    trainer._check_alignment(ids, torch.tensor([[0, 0, 1, 0]]))
