"""One-command GPU check: random-init QoQ-Med at 3B and 7B in bf16, timed and measured. No downloads.

For each size it measures the time to build the model on the device (random init), then per row the wall time and
peak memory of one supervised step and one DRPO step, each with full fine-tuning and with LoRA, and generation
tokens/s (transformers; vLLM too when it is installed). A row that runs out of memory is recorded as OOM with the
message and the check carries on. Writes one JSON and a markdown table to paste into the README.

    python benchmarks/gpu_check.py                 # 3B and 7B on the GPU, about 5 minutes on one H100
    python benchmarks/gpu_check.py --size toy      # the tiny model on the CPU in seconds (run by the tests)

What a step is. The inputs are one synthetic sample of the shape the recipes train on: a text prompt, one image
(448 x 448: 256 merged image tokens), one ECG record, an answer. Training follows qoqmed/configs/gpu_single.yaml:
weights, gradients and AdamW states in bf16, vision tower frozen, activation checkpointing. An SFT step is forward,
backward and AdamW on a batch of such samples. A DRPO step is what the RL trainer does for one question: sample G
rollouts, score them (random rewards in [0, 1]: a random-init model's answers would all score 0), DRPO
advantages (qoqmed.algos), reference log-probs (full: a second bf16 copy of the model, as TRL keeps one; LoRA: the
same model with its adapters off, as TRL does with peft), the policy's, the clipped loss plus the k3 KL, AdamW.
It is assembled here rather than run through TRL's trainer, which would need a tokenizer matching the 152k
vocabulary and the model written to disk first. Times are the second of two steps (the first compiles kernels);
the first is kept as ``first_step_s``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_sizes import real_config  # the published configurations

from qoqmed.algos.drpo import DRPO
from qoqmed.modeling import QoQMedForConditionalGeneration, freeze
from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.train.settings import LoRASettings

GIB = 1024**3
BUDGET_S = 570  # the whole check stays under 10 minutes
# Per size: batch geometry. toy keeps every part but runs in seconds on a CPU.
GEOMETRY = {
    "toy": dict(prompt=16, answer=16, image_side=28, sft_batch=2, generations=2, new_tokens=8, gen_batch=2),
    "3B": dict(prompt=256, answer=512, image_side=448, sft_batch=4, generations=8, new_tokens=256, gen_batch=8),
    "7B": dict(prompt=256, answer=512, image_side=448, sft_batch=4, generations=8, new_tokens=256, gen_batch=8),
}


def config_of(size: str):
    if size == "toy":
        _, model = build_tiny(spec=TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32))
        return model.config
    return real_config(size)


class Device:
    """Timing and peak memory on the GPU (allocator peak per row) or the CPU (process peak RSS)."""

    def __init__(self, name: str):
        self.type = name
        self.cuda = name == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.cuda:
            return round(torch.cuda.max_memory_allocated() / GIB, 3)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)  # KiB on Linux

    def describe(self) -> dict:
        info = {"device": self.type, "torch": torch.__version__, "platform": platform.platform(),
                "python": platform.python_version()}
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            info.update(name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                        memory_gib=round(props.total_memory / GIB, 1), capability=f"{props.major}.{props.minor}")
        else:
            info.update(name=platform.processor() or platform.machine(), cuda=None)
        return info


def sample(config, geometry: dict, batch: int, device: str) -> tuple[dict, int]:
    """(model inputs for ``batch`` identical samples, prompt length): text, one image, one ECG record, answer."""
    g = torch.Generator().manual_seed(0)
    vision = config.vision_config
    side = geometry["image_side"] // vision.patch_size
    image_tokens = side * side // vision.spatial_merge_size ** 2
    reserved = {config.image_token_id, config.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id, config.ecg_token_id, config.ecg_start_token_id, config.ecg_end_token_id}

    def text(n):
        ids = torch.randint(0, config.text_config.vocab_size, (n,), generator=g)
        ids[torch.isin(ids, torch.tensor(sorted(reserved)))] = min(set(range(len(reserved) + 1)) - reserved)
        return ids

    prompt = torch.cat([text(geometry["prompt"]), torch.tensor([config.vision_start_token_id]),
                        torch.full((image_tokens,), config.image_token_id), torch.tensor([config.vision_end_token_id]),
                        torch.tensor([config.ecg_start_token_id]),
                        torch.full((config.num_ecg_tokens,), config.ecg_token_id),
                        torch.tensor([config.ecg_end_token_id])])
    ids = torch.cat([prompt, text(geometry["answer"])]).repeat(batch, 1)
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    enc = config.ecg_encoder_config
    inputs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == config.image_token_id).long(),
        "pixel_values": torch.randn(batch * side * side, width, generator=g),
        "image_grid_thw": torch.tensor([[1, side, side]] * batch),
        "ecg_values": torch.randn(batch, enc.num_leads, enc.num_samples, generator=g),
    }
    return {k: v.to(device) for k, v in inputs.items()}, len(prompt)


def cut(inputs: dict, length: int) -> dict:
    """The first ``length`` tokens of every row (the prompt), with the image and ECG inputs unchanged."""
    return {k: v[:, :length] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
            for k, v in inputs.items()}


def timed(dev: Device, fn, steps: int = 2) -> dict:
    """Run ``fn`` ``steps`` times; the last run's seconds, the first's, and the peak memory over all."""
    dev.reset_peak()
    times = []
    for _ in range(steps):
        dev.sync()
        start = time.perf_counter()
        extra = fn() or {}
        dev.sync()
        times.append(time.perf_counter() - start)
    return {"step_s": round(times[-1], 4), "first_step_s": round(times[0], 4), "peak_memory_gib": dev.peak_gib(),
            **extra}


def optimizer(model, dev: Device):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-6, fused=dev.cuda)


def sft_step(model, inputs: dict, prompt_len: int, opt) -> None:
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_len] = -100
    model(**inputs, labels=labels, use_cache=False).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def completion_logps(model, ids, mask, extra: dict, n: int) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == model.config.image_token_id).long(),
                   logits_to_keep=n + 1, use_cache=False, **extra).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, -n:, None]).squeeze(-1)


def drpo_step(model, reference, prompt: dict, geometry: dict, opt, estimator: DRPO, beta: float = 1e-4,
              clip: tuple[float, float] = (0.2, 0.3)) -> dict:
    """One question, G rollouts: sample, score, advantages, reference and policy log-probs, clipped loss, AdamW."""
    n = geometry["new_tokens"]
    model.eval()  # sampling with the KV cache (activation checkpointing turns it off in training mode)
    with torch.no_grad():
        ids = model.generate(**prompt, do_sample=True, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    model.train()
    G = ids.shape[0]
    rewards = torch.rand(G)
    mask = torch.ones_like(ids)
    extra = {k: prompt[k] for k in ("pixel_values", "image_grid_thw", "ecg_values")}
    with torch.no_grad():
        ref = completion_logps(reference, ids, mask, extra, n) if reference is not None else None
        if ref is None:
            with model.disable_adapter():  # LoRA: the base model is the reference
                ref = completion_logps(model, ids, mask, extra, n)
    logps = completion_logps(model, ids, mask, extra, n)
    kl = torch.exp(ref - logps) - (ref - logps) - 1
    advantages = estimator(rewards, ["q"] * G, ["domain"] * G, kl=kl.detach().mean(1).cpu()).to(logps.device)
    ratio = torch.exp(logps - logps.detach())  # one policy update per batch: the old policy is this one
    surrogate = torch.minimum(ratio * advantages[:, None], ratio.clamp(1 - clip[0], 1 + clip[1]) * advantages[:, None])
    (-(surrogate - beta * kl).mean()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"rollouts": G, "new_tokens": n}


def generate(model, prompt: dict, n: int) -> dict:
    model.eval()
    with torch.no_grad():
        out = model.generate(**prompt, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    return {"tokens": int(out.shape[0] * (out.shape[1] - prompt["input_ids"].shape[1]))}


def run_row(rows: list, size: str, what: str, fn) -> None:
    """Record one measurement; out-of-memory and other failures become the row's status, and the check goes on."""
    try:
        row = {"size": size, "row": what, "status": "ok", **fn()}
    except torch.OutOfMemoryError as exc:
        row = {"size": size, "row": what, "status": "OOM", "message": str(exc).splitlines()[0]}
    except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others' measurements
        row = {"size": size, "row": what, "status": "error", "message": f"{type(exc).__name__}: {exc}"[:500]}
    rows.append(row)
    print(json.dumps(row), flush=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_size(size: str, dev: Device, rows: list) -> None:
    geometry = GEOMETRY[size]
    config = config_of(size)
    dtype = torch.bfloat16 if dev.cuda else torch.float32
    state: dict = {}

    def build():
        dev.reset_peak()
        start = time.perf_counter()
        with torch.device(dev.type):
            state["model"] = QoQMedForConditionalGeneration._from_config(config, dtype=dtype)
        dev.sync()
        model = state["model"]
        return {"init_s": round(time.perf_counter() - start, 3), "peak_memory_gib": dev.peak_gib(),
                "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(dtype)}

    run_row(rows, size, "init (random weights on the device)", build)
    if "model" not in state:
        return
    model = state["model"]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    freeze(model, vision=True)  # as gpu_single.yaml
    sft_inputs, prompt_len = sample(config, geometry, geometry["sft_batch"], dev.type)
    one, _ = sample(config, geometry, 1, dev.type)
    rollout_prompt = {k: v.repeat(geometry["generations"], *[1] * (v.dim() - 1)) for k, v in cut(one, prompt_len).items()}
    gen_prompt = cut(sample(config, geometry, geometry["gen_batch"], dev.type)[0], prompt_len)

    def tokens_per_s(model=model):
        result = timed(dev, lambda: generate(model, gen_prompt, geometry["new_tokens"]))
        result["tokens_per_s"] = round(result["tokens"] / result["step_s"], 1)
        return {**result, "batch": geometry["gen_batch"]}

    run_row(rows, size, "generate (transformers, greedy)", tokens_per_s)

    # LoRA first: peft wraps the model in place, and unloading it gives the untouched base back for full tuning
    from peft import get_peft_model

    lora = get_peft_model(model, LoRASettings().peft_config())
    training_rows(rows, size, "LoRA", lora, None, dev, geometry, sft_inputs, prompt_len, rollout_prompt)
    model = lora.unload()
    del lora
    freeze(model, vision=True, ecg=False, projector=False, llm=False)

    def reference():  # what TRL keeps for full tuning: a second frozen copy of the model
        with torch.device(dev.type):
            return QoQMedForConditionalGeneration._from_config(config, dtype=dtype).eval().requires_grad_(False)

    training_rows(rows, size, "full", model, reference, dev, geometry, sft_inputs, prompt_len, rollout_prompt)
    del model, state["model"]


def training_rows(rows: list, size: str, mode: str, model, reference, dev: Device, geometry: dict, sft_inputs: dict,
                  prompt_len: int, rollout_prompt: dict) -> None:
    """An SFT step and a DRPO step of ``model`` (``reference``: builds the KL reference; None under LoRA)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def sft():
        opt = optimizer(model, dev)
        return {**timed(dev, lambda: sft_step(model, sft_inputs, prompt_len, opt)), "batch": geometry["sft_batch"],
                "trainable": trainable}

    def drpo():
        opt = optimizer(model, dev)
        ref = reference() if reference is not None else None
        estimator = DRPO(geometry["generations"], mode="bounded", history=256)
        return {**timed(dev, lambda: drpo_step(model, ref, rollout_prompt, geometry, opt, estimator)), "batch": 1,
                "trainable": trainable}

    run_row(rows, size, f"SFT step, {mode}", sft)
    model.zero_grad(set_to_none=True)  # a step that ran out of memory leaves its gradients behind
    run_row(rows, size, f"DRPO step, {mode}" + (" (+ reference copy)" if reference is not None else ""), drpo)
    model.zero_grad(set_to_none=True)


def vllm_row(size: str, timeout: int) -> dict:
    """:func:`vllm_tokens_per_s` in a child process: vLLM keeps GPU memory until its process ends."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "row.json"
        try:
            subprocess.run([sys.executable, __file__, "--vllm-size", size, "--out", str(out)], check=True,
                           timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"vLLM did not finish within {timeout} s") from None
        except subprocess.CalledProcessError as exc:
            raise RuntimeError((exc.stderr or "").strip().splitlines()[-1:] or f"exit status {exc.returncode}") from None
        return json.loads(out.read_text())


def vllm_tokens_per_s(config, geometry: dict) -> dict:
    """The language model (Qwen2) with random weights, from token ids: the QoQ-Med vLLM model would need a processor
    folder with the 152k-token vocabulary, which this check does not build."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    text = config.text_config
    qwen = Qwen2Config(vocab_size=text.vocab_size, hidden_size=text.hidden_size, num_hidden_layers=text.num_hidden_layers,
                       intermediate_size=text.intermediate_size, num_attention_heads=text.num_attention_heads,
                       num_key_value_heads=text.num_key_value_heads, max_position_embeddings=32768,
                       tie_word_embeddings=config.tie_word_embeddings)
    with tempfile.TemporaryDirectory() as folder:
        with torch.device("cuda"):
            Qwen2ForCausalLM._from_config(qwen, dtype=torch.bfloat16).save_pretrained(folder)
        torch.cuda.empty_cache()
        start = time.perf_counter()
        llm = LLM(model=folder, skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.8,
                  max_model_len=4096)
        load_s = time.perf_counter() - start
        n, batch = geometry["new_tokens"], geometry["gen_batch"]
        prompts = [TokensPrompt(prompt_token_ids=list(range(100, 100 + geometry["prompt"])))] * batch
        params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, ignore_eos=True, detokenize=False)
        llm.generate(prompts[:1], params)  # warm-up
        start = time.perf_counter()
        outs = llm.generate(prompts, params)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        del llm
    return {"step_s": round(seconds, 4), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "init_s": round(load_s, 1), "batch": batch}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{m['name']} ({m['device']}, torch {m['torch']}, CUDA {m['cuda']})", "",
             "| size | measurement | status | time (s) | peak memory (GiB) | tokens/s | trainable |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        seconds = r.get("init_s") if r["row"].startswith("init") else r.get("step_s")
        trainable = r.get("trainable")
        lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            r["size"], r["row"], r["status"] if r["status"] == "ok" else f"{r['status']}: {r['message'][:80]}",
            "-" if seconds is None else seconds, r.get("peak_memory_gib", "-"), r.get("tokens_per_s", "-"),
            "-" if trainable is None else f"{trainable / 1e6:.2f}M"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", action="append", choices=list(GEOMETRY),
                        help="repeat for several; default: 3B and 7B on a GPU, toy on a CPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json",
                        help="JSON path; the markdown table is written next to it (.md)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM rows even where vLLM is installed")
    parser.add_argument("--vllm-size", choices=["3B", "7B"], help=argparse.SUPPRESS)  # the child of vllm_row
    args = parser.parse_args(argv)
    if args.vllm_size:
        row = vllm_tokens_per_s(config_of(args.vllm_size), GEOMETRY[args.vllm_size])
        args.out.write_text(json.dumps(row))
        return row
    dev = Device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.size or (["3B", "7B"] if dev.cuda else ["toy"])
    if not dev.cuda and set(sizes) - {"toy"}:
        parser.error("3B and 7B need a CUDA GPU; on a CPU run --size toy")
    torch.manual_seed(0)
    rows: list = []
    start = time.perf_counter()
    for size in sizes:
        check_size(size, dev, rows)
    if dev.cuda and not args.no_vllm and importlib.util.find_spec("vllm") is not None:
        for n, size in enumerate(sizes):  # vLLM gets what is left of the 10 minutes, shared among the sizes
            timeout = int((BUDGET_S - (time.perf_counter() - start)) / (len(sizes) - n))
            run_row(rows, size, "generate (vLLM, language model only)", lambda size=size, timeout=timeout:
                    vllm_row(size, timeout) if timeout >= 60 else {"status": "skipped", "message": "no time left"})
    result = {"machine": dev.describe(), "geometry": {s: GEOMETRY[s] for s in sizes},
              "vllm_installed": importlib.util.find_spec("vllm") is not None,
              "total_s": round(time.perf_counter() - start, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {result['total_s']} s")
    return result


if __name__ == "__main__":
    main()
