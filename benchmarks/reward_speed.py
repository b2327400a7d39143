"""Speed of the reward function: ``qoqmed.rewards`` against a straightforward per-box tensor baseline.

    python benchmarks/reward_speed.py [--n 2560] [--out benchmarks/results/reward_speed.json]

The workload is an RL step's: ``n / 5`` questions, each with its own 512x512 lesion mask, 5 rollouts each.
The baseline scores IoU the way the released scorer does: per call the mask becomes a float tensor, and for
every predicted box a zero ``(H, W)`` float tensor is filled over the box, multiplied with the mask and
clamped-added to it. Both sides parse with ``parse_response`` and share the accuracy and format logic, so the
difference is the IoU computation and call overhead. ``score`` is timed per call, ``score_batch`` as the
trainer calls it (a question's rollouts share one prepared mask). IoU and overall values are checked equal to
the baseline's before anything is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from qoqmed.rewards import score
from qoqmed.rewards.parsing import parse_response
from qoqmed.rewards.scores import WEIGHTS, accuracy_reward, format_reward, score_batch

_SIZE = 512
_LABELS = ["pneumonia", "effusion", "nodule", "cardiomegaly", "fracture", "mass", "edema", "normal"]
_ROLLOUTS = 5  # responses per question, sharing the question's mask


def _make_masks(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    masks = []
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE]
    for _ in range(n):
        m = np.zeros((_SIZE, _SIZE), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):  # 1-3 ellipses, irregular enough to differ from boxes
            cy, cx = rng.uniform(60, _SIZE - 60, size=2)
            ry, rx = rng.uniform(15, 90, size=2)
            m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = 1
        masks.append(m)
    return masks


def _box(r: random.Random) -> list[float]:
    x1, y1 = r.uniform(-20, _SIZE - 10), r.uniform(-20, _SIZE - 10)
    return [round(x1, 1), round(y1, 1), round(x1 + r.uniform(1, 220), 1), round(y1 + r.uniform(1, 220), 1)]


def _make_response(r: random.Random) -> tuple[str, list[str]]:
    truth = r.sample(_LABELS, r.randint(1, 2))
    pred = truth if r.random() < 0.5 else r.sample(_LABELS, r.randint(1, 3))
    boxes = [{"bbox_2d": _box(r), "label": r.choice(pred)} for _ in range(r.randint(1, 4))]
    body = json.dumps(boxes)
    think = "<think>" + " ".join(r.choices(["opacity", "lobe", "left", "right", "margin", "density"], k=40)) + "</think>"
    kind = r.random()
    if kind < 0.08:  # truncated JSON
        body = body[: len(body) // 2]
    elif kind < 0.14:  # trailing comma, which the parser tolerates
        body = body[:-1] + ",]"
    elif kind < 0.18:  # unclosed think
        think = think.replace("</think>", "")
    answer = "\\boxed{" + ", ".join(pred) + "}"
    if 0.18 <= kind < 0.22:  # no boxed answer
        answer = "The answer is " + pred[0]
    return f"{think}\n```json\n{body}\n```\n{answer}", truth


def baseline_score(response: str, answer: list[str], gt_mask: np.ndarray, iou_reduce: str) -> dict:
    """Released-scorer-style IoU: float tensors, a dense (H, W) tensor per predicted box."""
    parsed = parse_response(response)
    mask = (torch.from_numpy(gt_mask) > 0).float()
    h, w = mask.shape
    ious = []
    if torch.sum(mask) == 0:
        iou = None
    else:
        for b in parsed.boxes:
            x1, y1, x2, y2 = b.bbox
            box = torch.zeros((h, w), dtype=torch.float32)
            if x2 > x1 and y2 > y1:
                # our pixel convention (every touched pixel), clamped so a negative slice end cannot wrap
                c0, r0 = min(w, max(0, math.floor(x1))), min(h, max(0, math.floor(y1)))
                c1, r1 = min(w, max(0, math.ceil(x2))), min(h, max(0, math.ceil(y2)))
                box[r0:r1, c0:c1] = 1.0
            inter = torch.sum(box * mask)
            union = torch.sum(torch.clamp(box + mask, 0, 1))
            ious.append(float(inter / union))
        iou = (max(ious) if iou_reduce == "max" else sum(ious) / len(ious)) if ious else 0.0
    comp = {"accuracy": accuracy_reward(parsed.labels, answer), "iou": iou, "format": format_reward(parsed)}
    wts = WEIGHTS["paper"]
    avail = {k: v for k, v in comp.items() if v is not None}
    overall = sum(wts[k] * v for k, v in avail.items()) / sum(wts[k] for k in avail)
    return {"overall": overall, **comp}


def _timed(fn, items, repeats: int) -> tuple[float, list]:
    """Best wall time over ``repeats`` passes (the least disturbed by other load) and the last outputs."""
    times, out = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = [fn(*it) for it in items]
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2560, help="number of responses")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/reward_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # both sides on one core: the comparison is per-core work, not thread count

    rng = np.random.default_rng(args.seed)
    r = random.Random(args.seed)
    masks = _make_masks(rng, math.ceil(args.n / _ROLLOUTS))
    data = [(*_make_response(r), masks[i // _ROLLOUTS]) for i in range(args.n)]
    n_boxes = [len(parse_response(resp).boxes) for resp, _, _ in data]

    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__,
        },
        "n_responses": args.n,
        "rollouts_per_question": _ROLLOUTS,
        "image_size": [_SIZE, _SIZE],
        "mean_boxes_per_response": round(statistics.fmean(n_boxes), 3),
        "repeats": args.repeats,
        "reduce": {},
    }
    # Both sides parse the same way, so parsing alone bounds the reachable speed-up.
    t_parse, _ = _timed(parse_response, [(resp,) for resp, _, _ in data], args.repeats)
    results["parse_only_responses_per_s"] = round(args.n / t_parse, 1)
    responses, answers, gt = map(list, zip(*data))
    for reduce in ("mean", "max"):
        ours = lambda resp, ans, m: score(resp, ans, m, iou_reduce=reduce)  # noqa: E731
        base = lambda resp, ans, m: baseline_score(resp, ans, m, reduce)  # noqa: E731
        batch = lambda: score_batch(responses, answers, gt, iou_reduce=reduce)  # noqa: E731
        t_ours, out_ours = _timed(ours, data, args.repeats)
        t_batch, out_batch = _timed(lambda: batch(), [()], args.repeats)
        t_base, out_base = _timed(base, data, args.repeats)
        for a, c, b in zip(out_ours, out_batch[0], out_base):
            assert a["iou"] == c["iou"] and a["overall"] == c["overall"]
            assert (a["iou"] is None) == (b["iou"] is None), (a["iou"], b["iou"])
            if a["iou"] is not None:
                assert abs(a["iou"] - b["iou"]) < 1e-6, (a["iou"], b["iou"])
            assert abs(a["overall"] - b["overall"]) < 1e-6, (a["overall"], b["overall"])
        diffs = [abs(a["iou"] - b["iou"]) for a, b in zip(out_ours, out_base) if a["iou"] is not None]
        results["reduce"][reduce] = {
            "score_responses_per_s": round(args.n / t_ours, 1),
            "score_batch_responses_per_s": round(args.n / t_batch, 1),
            "baseline_responses_per_s": round(args.n / t_base, 1),
            "speedup_score": round(t_base / t_ours, 2),
            "speedup_score_batch": round(t_base / t_batch, 2),
            "max_abs_iou_diff": max(diffs) if diffs else 0.0,
            "mean_iou": round(statistics.fmean(a["iou"] for a in out_ours if a["iou"] is not None), 4),
        }

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    m = results["machine"]
    print(f"{args.n} responses, {_SIZE}x{_SIZE} masks, {results['mean_boxes_per_response']} boxes/response")
    print(f"{m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"{'iou_reduce':<11}{'score/s':>10}{'batch/s':>10}{'baseline/s':>12}{'x score':>9}{'x batch':>9}")
    for reduce, row in results["reduce"].items():
        print(f"{reduce:<11}{row['score_responses_per_s']:>10.0f}{row['score_batch_responses_per_s']:>10.0f}"
              f"{row['baseline_responses_per_s']:>12.0f}{row['speedup_score']:>8.1f}x"
              f"{row['speedup_score_batch']:>8.1f}x")
    print(f"parse_response alone: {results['parse_only_responses_per_s']:.1f} resp/s")
    print(f"written {out}")


if __name__ == "__main__":
    main()
