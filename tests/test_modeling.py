"""The QoQ-Med model, ECG encoder and processor on CPU with a tiny random-init configuration."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from qoqmed.modeling import QoQMedConfig, QoQMedForConditionalGeneration, chat_messages, volume_parts
from qoqmed.modeling.processing_qoqmed import ECG_BLOCK
from qoqmed.modeling.ecg_encoder import ECGEncoderConfig, ECGJEPAEncoder, cross_pattern_mask, num_ecg_tokens
from qoqmed.modeling.tiny import TinySpec, build_tiny

SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(["Which findings are present? Options: Normal, Cardiomegaly."], SPEC, seed=0)


def _image(seed=0, size=(112, 84)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def _ecg(seed=0):
    return np.random.default_rng(seed).standard_normal((8, 2500)).astype("float32")


def _mixed_batch(processor):
    """Rows: image + ECG, image only, ECG only, text only."""
    prompts = [("<image><ecg>\nWhat is shown?", [_image(0)], [_ecg(0)]),
               ("<image>\nWhat is shown here?", [_image(1, (56, 56))], []),
               ("<ecg>\nRhythm?", [], [_ecg(1)]),
               ("Text only question about a patient.", [], [])]
    texts, images, ecgs = [], [], []
    for problem, imgs, recs in prompts:
        texts.append(processor.apply_chat_template(chat_messages(problem, imgs), add_generation_prompt=True))
        images += imgs
        ecgs += recs
    return processor(text=texts, images=images, ecg=ecgs, padding=True, return_tensors="pt")


# --- ECG encoder ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,expected", [("pooled", 1), ("per_lead", 8), ("patch", 400)])
def test_ecg_encoder_token_modes(mode, expected):
    cfg = ECGEncoderConfig(hidden_size=16, num_layers=1, num_heads=2)
    enc = ECGJEPAEncoder(cfg)
    out = enc.tokens(torch.randn(3, 8, 2500), mode)
    assert out.shape == (3, expected, 16)
    assert num_ecg_tokens(cfg, mode) == expected


def test_cross_pattern_mask_same_lead_or_same_patch():
    m = cross_pattern_mask(num_leads=3, num_patches=4)
    for a in range(12):
        for b in range(12):
            same_lead, same_patch = a // 4 == b // 4, a % 4 == b % 4
            assert bool(m[a, b]) == (same_lead or same_patch)
    assert m.sum() == 12 * (4 + 3 - 1)


def test_ecg_encoder_attention_respects_mask():
    """A perturbation of lead 0, patch 0 reaches only tokens of lead 0 or of patch 0 after one block."""
    enc = ECGJEPAEncoder(ECGEncoderConfig(hidden_size=16, num_layers=1, num_heads=2)).eval()
    x = torch.randn(1, 8, 2500)
    y = x.clone()
    y[0, 0, :50] += 5.0
    diff = (enc(x) - enc(y)).abs().sum(-1).view(8, 50) > 1e-6
    assert diff[0].all() and diff[:, 0].all()
    assert not diff[1:, 1:].any()


def test_ecg_encoder_rejects_wrong_shape():
    enc = ECGJEPAEncoder(ECGEncoderConfig(hidden_size=16, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match=r"\(batch, 8, 2500\)"):
        enc(torch.randn(2, 12, 2500))


def test_config_validation():
    with pytest.raises(ValueError, match="ecg_token_mode"):
        QoQMedConfig(ecg_token_mode="bogus")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        QoQMedConfig(ecg_config={"num_samples": 2501})


# --- processor --------------------------------------------------------------------------------------------------

def test_processor_token_counts(tiny):
    processor, model = tiny
    enc = _mixed_batch(processor)
    ids = enc["input_ids"]
    image_id, ecg_id = model.config.image_token_id, model.config.ecg_token_id
    # 112x84 -> (112/28)*(84/28) = 12 merged patches; 56x56 -> 4
    assert (ids[0] == image_id).sum() == 12 and (ids[1] == image_id).sum() == 4
    n_ecg = model.config.num_ecg_tokens
    assert [(row == ecg_id).sum().item() for row in ids] == [n_ecg, 0, n_ecg, 0]
    assert enc["ecg_values"].shape == (2, 8, 2500)
    assert processor.model_image_size(112, 84) == (112, 84)


def test_processor_rejects_mismatched_ecg(tiny):
    processor, _ = tiny
    text = processor.apply_chat_template(chat_messages("<ecg>\nRhythm?"), add_generation_prompt=True)
    with pytest.raises(ValueError, match="2 ECG records for 1 ECG placeholders"):
        processor(text=[text], ecg=[_ecg(0), _ecg(1)])
    with pytest.raises(ValueError, match=r"shape \(12, 2500\)"):
        processor(text=[text], ecg=[np.zeros((12, 2500))])
    bad = _ecg(0)
    bad[3, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        processor(text=[text], ecg=[bad])


# --- model ------------------------------------------------------------------------------------------------------

def test_mixed_batch_forward_and_ecg_routing(tiny):
    processor, model = tiny
    model.eval()
    enc = _mixed_batch(processor)
    with torch.no_grad():
        base = model(**enc).logits
        enc2 = dict(enc)
        enc2["ecg_values"] = enc["ecg_values"].clone()
        enc2["ecg_values"][1] += 1.0  # the second ECG belongs to row 2
        moved = model(**enc2).logits
    assert torch.isfinite(base).all()
    changed = (base - moved).abs().amax(dim=(1, 2)) > 1e-6
    assert changed.tolist() == [False, False, True, False]


def test_missing_ecg_values_is_an_error(tiny):
    processor, model = tiny
    enc = _mixed_batch(processor)
    enc.pop("ecg_values")
    with pytest.raises(ValueError, match="ECG placeholder tokens but no `ecg_values`"):
        model(**enc)


def test_save_load_roundtrip_identical_logits(tiny, tmp_path):
    processor, model = tiny
    model.eval()
    enc = _mixed_batch(processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "qoqmed"
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is QoQMedForConditionalGeneration
    assert proc2.num_ecg_tokens == processor.num_ecg_tokens
    enc2 = _mixed_batch(proc2)
    assert torch.equal(enc2["input_ids"], enc["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, loaded(**enc2).logits)


def test_greedy_generate_matches_teacher_forcing(tiny):
    processor, model = tiny
    _assert_greedy_matches_teacher_forcing(model, _mixed_batch(processor))


def _assert_greedy_matches_teacher_forcing(model, enc, steps=6):
    model.eval()
    banned = model.placeholder_token_ids()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=steps, do_sample=False, suppress_tokens=banned,
                             eos_token_id=None)
        prompt_len = enc["input_ids"].shape[1]
        new = out[:, prompt_len:]
        assert not torch.isin(new, torch.tensor(banned)).any()
        full = dict(enc)
        full["input_ids"] = out
        full["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(new)], dim=1)
        full["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(new)], dim=1)
        logits = model(**full).logits[:, prompt_len - 1:-1].clone()
    logits[..., banned] = -torch.inf
    assert torch.equal(logits.argmax(-1), new)


def test_gradients_reach_ecg_encoder_and_projector(tiny):
    processor, model = tiny
    model.train()
    enc = _mixed_batch(processor)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    model.zero_grad()
    model(**enc, labels=labels).loss.backward()
    enc_grad = model.model.ecg_encoder.patch_embed.weight.grad
    proj_grad = model.model.ecg_projector.weight.grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0
    assert proj_grad is not None and proj_grad.abs().sum() > 0
    model.zero_grad()


# --- positions, placeholders, cost, prompt layouts ----------------------------------------------------------------

def test_ecg_tokens_take_text_rotary_positions(tiny):
    """In Qwen2.5-VL's 3D rotary positions, ECG tokens advance one step on every axis, exactly like text tokens."""
    processor, model = tiny
    text = processor.apply_chat_template(chat_messages("<image><ecg>\nWhat is shown?"), add_generation_prompt=True)
    enc = processor(text=[text], images=[_image(0)], ecg=[_ecg(0)], return_tensors="pt")
    ids, ecg_id = enc["input_ids"], model.config.ecg_token_id
    rope = dict(mm_token_type_ids=enc["mm_token_type_ids"], image_grid_thw=enc["image_grid_thw"],
                attention_mask=enc["attention_mask"])
    pos, _ = model.model.get_rope_index(ids, **rope)
    slots = (ids[0] == ecg_id).nonzero().squeeze(1)
    p = pos[:, 0, slots]
    assert len(slots) == model.config.num_ecg_tokens
    assert torch.equal(p[0], p[1]) and torch.equal(p[1], p[2])
    assert (p[0].diff() == 1).all()
    before = pos[:, 0, slots[0] - 1]  # <|ecg_start|>, itself right after the image block
    assert (p[:, 0] == before + 1).all()
    assert (enc["mm_token_type_ids"][0, slots] == 0).all()
    # identical to what ordinary text tokens in the same places get
    as_text = ids.masked_fill(ids == ecg_id, processor.tokenizer.convert_tokens_to_ids("<|im_start|>"))
    assert torch.equal(model.model.get_rope_index(as_text, **rope)[0], pos)


def test_placeholders_suppressed_by_the_saved_generation_config(tiny):
    """A model that would rather emit placeholders still cannot, through its generation config alone."""
    from transformers import LogitsProcessor, LogitsProcessorList

    processor, model = tiny
    banned = model.placeholder_token_ids()
    assert set(model.generation_config.suppress_tokens) == set(banned)

    class PreferPlaceholders(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, banned] += 1e4
            return scores

    enc = _mixed_batch(processor)
    prefer = LogitsProcessorList([PreferPlaceholders()])
    with torch.no_grad():
        free = model.eval().generate(**enc, max_new_tokens=3, do_sample=False, logits_processor=prefer,
                                     suppress_tokens=[], eos_token_id=None)
        kept = model.generate(**enc, max_new_tokens=3, do_sample=False, logits_processor=prefer, eos_token_id=None)
    n = enc["input_ids"].shape[1]
    assert torch.isin(free[:, n:], torch.tensor(banned)).all()  # the test can fail: placeholders do win unsuppressed
    assert not torch.isin(kept[:, n:], torch.tensor(banned)).any()


def test_rows_without_ecg_cost_nothing(tiny):
    processor, model = tiny
    text = processor.apply_chat_template(chat_messages("Text only question about a patient."),
                                         add_generation_prompt=True)
    enc = processor(text=[text], return_tensors="pt")
    assert enc["input_ids"][0].tolist() == processor.tokenizer(text)["input_ids"]  # no dummy ECG tokens
    calls = []
    hook = model.model.ecg_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            model.eval()(**processor(text=[text], ecg=[], return_tensors="pt"))
            model(**_mixed_batch(processor))
    finally:
        hook.remove()
    assert calls == [2]  # only the mixed batch's two ECG records were encoded, once


def test_ecg_parts_in_any_position_reach_their_slots(tiny):
    """ECG and image parts interleaved with text; each record's features land on its own block, in prompt order."""
    processor, model = tiny
    messages = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "ecg"}, {"type": "image"}, {"type": "text", "text": "then"},
                                             {"type": "ecg"}, {"type": "image"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    first_ecg, first_img = text.index(ECG_BLOCK), text.index("<|vision_start|>")
    second_ecg = text.index(ECG_BLOCK, first_ecg + 1)
    assert first_ecg < first_img < text.index("then") < second_ecg < text.index("<|vision_start|>", first_img + 1)
    ecgs = [_ecg(3), _ecg(4)]
    enc = processor(text=[text], images=[_image(0), _image(1, (56, 56))], ecg=ecgs, return_tensors="pt")
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model.eval()(**enc)
            features = model.model.get_ecg_features(enc["ecg_values"])
    finally:
        hook.remove()
    slots = (enc["input_ids"][0] == model.config.ecg_token_id).nonzero().squeeze(1)
    n = model.config.num_ecg_tokens
    torch.testing.assert_close(seen["embeds"][0, slots[:n]], features[0])
    torch.testing.assert_close(seen["embeds"][0, slots[n:]], features[1])


def test_volume_frames_and_ecg_in_one_prompt(tiny):
    """A 4-slice volume (frames as labelled images) plus an ECG: processed, and greedy decoding is consistent."""
    processor, model = tiny
    frames = [_image(10 + i, (56, 56)) for i in range(4)]
    parts = volume_parts(frames, "Slice")
    assert [p["type"] for p in parts] == ["text", "image"] * 4 and parts[4]["text"] == "Slice 3/4: "
    messages = [{"role": "user", "content": [*parts, {"type": "ecg"}, {"type": "text", "text": "Findings?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.count("<|vision_start|>") == 4 and "Slice 4/4: " in text
    # a shorter text-only second row: left padding and per-row rotary offsets are exercised too
    enc = processor(text=[text, "Text only."], images=frames, ecg=[_ecg(5)], padding=True, return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 4, 4]] * 4
    assert (enc["input_ids"][0] == model.config.image_token_id).sum() == 16
    _assert_greedy_matches_teacher_forcing(model, enc, steps=4)



def test_left_padding_is_saved_with_the_processor(tiny, tmp_path):
    """Generation and RL both need left padding; a reloaded processor (and its tokenizer alone) must keep it."""
    from transformers import AutoTokenizer

    processor, _ = tiny
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.padding_side == "left" and reloaded.tokenizer.padding_side == "left"
    assert AutoTokenizer.from_pretrained(tmp_path).padding_side == "left"
    batch = reloaded(text=["a", "a b c d e f"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # pads on the left
    right = reloaded(text=["a", "a b c d e f"], padding=True, padding_side="right", return_tensors="pt")
    assert right["attention_mask"][0, -1] == 0  # an explicit side still wins
    with pytest.raises(ValueError, match="padding_side"):
        type(processor)(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                        padding_side="middle")


@pytest.mark.parametrize("rows", ["text", "ecg", "image"])
def test_training_runs_every_encoder_and_adds_exactly_zero(tiny, rows):
    """Sharded ranks must run the same encoders: in training the encoders a batch does not use run on a dummy
    input, and the loss and every gradient stay exactly what they are without them."""
    processor, model = tiny
    problem, images, ecgs = {"text": ("Text only question about a patient.", [], []),
                             "ecg": ("<ecg>\nRhythm?", [], [_ecg(1)]),
                             "image": ("<image>\nWhat is shown here?", [_image(1, (56, 56))], [])}[rows]
    text = processor.apply_chat_template(chat_messages(problem, images), add_generation_prompt=True)
    enc = processor(text=[text], images=images or None, ecg=ecgs, return_tensors="pt")
    results = {}
    try:
        model.train()
        for every in (False, True):
            model.config.encoders_every_step = every
            model.zero_grad(set_to_none=True)
            out = model(**enc, labels=enc["input_ids"])
            out.loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[every] = out.loss.detach(), grads
    finally:
        model.config.encoders_every_step = True
        model.zero_grad(set_to_none=True)
        model.eval()
    (loss_off, grads_off), (loss_on, grads_on) = results[False], results[True]
    assert torch.equal(loss_off, loss_on)
    assert set(grads_off) <= set(grads_on)
    for name, grad in grads_off.items():
        assert torch.equal(grad, grads_on[name]), name
    added = set(grads_on) - set(grads_off)
    assert any("ecg_encoder" in n for n in added) == (rows != "ecg")
    assert any("visual" in n for n in added) == (rows != "image")
    assert all(float(grads_on[n].abs().max()) == 0.0 for n in added)
