"""QoQ-Med through vLLM against the transformers model, on the same saved folder: prompt ids, greedy answers token
for token, log-probabilities, and the pipeline on either engine. Needs vLLM (``make test-vllm``); skipped without."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qoqmed.infer import QoQMedPipeline
from qoqmed.modeling import QoQMedForConditionalGeneration, QoQMedProcessor, chat_messages, volume_parts
from qoqmed.modeling.vllm_plugin import blocked_words, vllm_request

pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` builds an environment with it")
pytestmark = pytest.mark.vllm
MAX_NEW = 16


def _image(rng, w, h):
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def _cases():
    """name -> (chat messages, images in prompt order, ECG records in prompt order)."""
    rng = np.random.default_rng(0)
    ecgs = [rng.standard_normal((8, 2500)).astype(np.float32) * 0.5 for _ in range(2)]
    img = _image(rng, 112, 84)
    frames = [_image(rng, 96, 96) for _ in range(4)]
    volume = [{"role": "user", "content": [*volume_parts(frames), {"type": "text", "text": "Which findings?"}]}]
    return {
        "ecg": (chat_messages("<ecg>\nWhich rhythm is this?"), [], ecgs[:1]),
        "image": (chat_messages("<image>\nWhich findings are present?", [img]), [img], []),
        "ecg_image": (chat_messages("<ecg> then <image>, and a second <ecg>. Diagnosis?", [img]), [img], ecgs),
        "volume": (volume, frames, []),
    }


@pytest.fixture(scope="module")
def pair(tiny_vllm):
    folder, engine = tiny_vllm
    processor = QoQMedProcessor.from_pretrained(folder)
    model = QoQMedForConditionalGeneration.from_pretrained(folder).eval()
    return processor, model, engine


@pytest.fixture(scope="module")
def runs(pair):
    """Every case through transformers (one prompt at a time) and vLLM (all in one call)."""
    from vllm import SamplingParams

    processor, model, engine = pair
    cases = _cases()
    prompts = {name: processor.apply_chat_template(msgs, add_generation_prompt=True)
               for name, (msgs, _, _) in cases.items()}
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, logprobs=0, prompt_logprobs=0,
                            bad_words=blocked_words(model.config, processor.tokenizer))
    outs = engine.llm.generate([vllm_request(prompts[n], imgs, ecgs) for n, (_, imgs, ecgs) in cases.items()],
                               params, use_tqdm=False)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    result = {}
    for (name, (_, imgs, ecgs)), out in zip(cases.items(), outs):
        enc = processor(text=[prompts[name]], images=imgs or None, ecg=ecgs or None, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False,
                                 suppress_tokens=model.placeholder_token_ids())
        hf_new = gen[0, enc["input_ids"].shape[1]:].tolist()
        hf_new = hf_new[:hf_new.index(eos) + 1] if eos in hf_new else hf_new
        result[name] = dict(enc=enc, hf_new=hf_new, out=out)
    return result


@pytest.mark.parametrize("case", ["ecg", "image", "ecg_image", "volume"])
def test_greedy_answers_equal_transformers_token_for_token(runs, case):
    run = runs[case]
    out = run["out"]
    # vLLM expanded every image and ECG placeholder exactly as QoQMedProcessor does
    assert list(out.prompt_token_ids) == run["enc"]["input_ids"][0].tolist()
    assert list(out.outputs[0].token_ids) == run["hf_new"]
    assert len(run["hf_new"]) > 1


def _hf_logprobs(model, enc, new_ids: list[int]) -> torch.Tensor:
    """log p(token t | tokens before t) under transformers, for every token after the first of prompt + answer."""
    ids = torch.cat([enc["input_ids"], torch.tensor([new_ids])], dim=1)
    inputs = {**enc, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inputs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros(1, len(new_ids), dtype=torch.long)],
                                            dim=1)
    with torch.no_grad():
        logits = model(**inputs).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]


def test_logprobs_match_transformers_on_a_fixed_prompt(pair, runs):
    """ECG + image + text: vLLM's log-probability of every prompt and answer token (rotary positions of image and
    ECG tokens included) is that of the transformers model."""
    _, model, _ = pair
    run = runs["ecg_image"]
    out = run["out"]
    new = list(out.outputs[0].token_ids)
    prompt_lp = [d[t].logprob for d, t in zip(out.prompt_logprobs[1:], out.prompt_token_ids[1:])]
    answer_lp = [d[t].logprob for d, t in zip(out.outputs[0].logprobs, new)]
    theirs = torch.tensor(prompt_lp + answer_lp)
    ours = _hf_logprobs(model, run["enc"], new)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() < 1e-4, (theirs - ours).abs().max().item()  # measured: 1e-6


def test_the_ecg_record_changes_what_vllm_computes(pair):
    """The ECG embeddings are used: another record in the same prompt changes the next-token log-probabilities."""
    from vllm import SamplingParams

    processor, _, engine = pair
    prompt = processor.apply_chat_template(chat_messages("<ecg>\nWhich rhythm?"), add_generation_prompt=True)
    rng = np.random.default_rng(1)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    a, b = (engine.llm.generate([vllm_request(prompt, [], [rng.standard_normal((8, 2500)).astype(np.float32)])],
                                params, use_tqdm=False)[0].outputs[0].logprobs[0] for _ in range(2))
    shared = set(a) & set(b)
    assert not shared or max(abs(a[t].logprob - b[t].logprob) for t in shared) > 1e-4


def test_pipeline_answers_alike_on_both_engines(pair):
    """QoQMedPipeline over the vLLM engine gives the transformers engine's answers: text, length, stop reason."""
    processor, model, engine = pair
    hf = QoQMedPipeline(model, processor, max_new_tokens=12)
    vl = QoQMedPipeline(engine, processor, max_new_tokens=12)
    rng = np.random.default_rng(2)
    ecg = rng.standard_normal((8, 2500)).astype(np.float32)
    queries = [dict(question="Rhythm?", ecg=ecg), dict(question="Findings?", images=_image(rng, 90, 70)),
               dict(question="Both?", images=_image(rng, 64, 64), ecg=ecg, ehr="Chest pain."),
               dict(question="Tumour?", volumes=rng.random((6, 48, 48)))]
    for q in queries:
        a, b = hf(**q), vl(**q)
        assert (b.text, b.completion_tokens, b.finish_reason, b.prompt_tokens) == \
            (a.text, a.completion_tokens, a.finish_reason, a.prompt_tokens), q["question"]
    assert [im["source"] for im in b.images] == [f"volumes[0] slice {k}/4" for k in range(1, 5)]


def test_inputs_beyond_the_engine_limits_name_the_field(pair):
    processor, _, engine = pair
    pipe = QoQMedPipeline(engine, processor)
    ecg = np.zeros((8, 2500), np.float32)
    from qoqmed.infer import InputError

    with pytest.raises(InputError, match=rf"ecg: .*{engine.limits['ecg'] + 1} ecg inputs.*at most"):
        pipe.prepare("Rhythm?", ecg=[ecg] * (engine.limits["ecg"] + 1))


def test_qoqmed_imports_no_vllm_and_installs_the_plugin():
    """vLLM finds the plugin through the installed entry point; importing qoqmed itself loads nothing of vLLM."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("qoqmed") == "qoqmed.modeling.vllm_plugin:register"
    code = ("import sys, qoqmed.modeling, qoqmed.modeling.vllm_plugin, qoqmed.infer, qoqmed.serve, qoqmed.cli; "
            "print(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
