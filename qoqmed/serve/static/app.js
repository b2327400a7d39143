// qoqmed web page: send the form to /v1/predict/form, then show the answer, the boxes and the ECG.
"use strict";

const COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"];
const $ = (id) => document.getElementById(id);

fetch("/healthz").then((r) => r.json()).then((h) => { $("model-name").textContent = "model: " + h.model; })
  .catch(() => {});

$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData($("ask"));
  form.append("return_previews", "true");
  // Empty file inputs still send an empty part; leave them out.
  for (const name of ["images", "volumes", "ecg"]) {
    const files = form.getAll(name).filter((f) => f.size > 0);
    form.delete(name);
    files.forEach((f) => form.append(name, f, f.name));
  }
  if (!form.get("ecg_fs")) form.delete("ecg_fs");  // only a .csv ECG needs its rate
  setStatus("thinking...", false);
  $("submit").disabled = true;
  $("result").dataset.state = "pending";
  try {
    const response = await fetch("/v1/predict/form", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      const e = body.error || {};
      throw new Error((e.message || response.statusText) + ` (HTTP ${response.status})`);
    }
    render(body);
    setStatus(`answered in ${body.timing.total_s.toFixed(2)} s`, false);
    $("result").dataset.state = "done";
  } catch (err) {
    setStatus(err.message, true);
    $("result").dataset.state = "error";
  } finally {
    $("submit").disabled = false;
  }
});

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function render(p) {
  $("result").hidden = false;
  const dx = $("diagnosis");
  dx.textContent = p.diagnosis ?? "no \\boxed{} diagnosis in the answer";
  dx.className = "diagnosis" + (p.diagnosis ? "" : " none");
  $("labels").replaceChildren(...p.labels.map((l) => Object.assign(document.createElement("li"), { textContent: l })));
  $("reasoning").textContent = p.reasoning ?? "(no <think> section)";
  $("raw").textContent = p.text;
  $("timing").textContent = `prompt ${p.prompt_tokens} tokens, answer ${p.completion_tokens} tokens ` +
    `(${p.finish_reason}); read inputs ${p.timing.prepare_s} s, generate ${p.timing.generate_s} s ` +
    `in a batch of ${p.timing.batch_size}`;
  drawImages(p);
  drawECG(p.previews.ecg[0]);
}

function drawImages(p) {
  const previews = p.previews.images;
  $("image-block").hidden = previews.length === 0;
  if (previews.length === 0) return;
  const boxes = p.boxes.filter((b) => b.image === 0);
  $("box-count").textContent = `${boxes.length} box${boxes.length === 1 ? "" : "es"} on ${p.images[0].source}`;
  const img = new Image();
  img.onload = () => {
    // Boxes are in original pixels; the preview may be downscaled, and small images are drawn larger.
    const display = Math.max(1, 480 / Math.max(img.width, img.height));
    const canvas = $("image-canvas");
    canvas.width = Math.round(img.width * display);
    canvas.height = Math.round(img.height * display);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const scale = canvas.width / p.images[0].width;
    ctx.font = "bold 14px sans-serif";
    boxes.forEach((b, k) => {
      const [x1, y1, x2, y2] = b.bbox_2d.map((v) => v * scale);
      ctx.strokeStyle = ctx.fillStyle = COLORS[k % COLORS.length];
      ctx.lineWidth = 3;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const w = ctx.measureText(b.label).width + 6;
      const ty = y1 >= 18 ? y1 - 18 : y1;
      ctx.fillRect(x1, ty, w, 18);
      ctx.fillStyle = "black";
      ctx.fillText(b.label, x1 + 3, ty + 14);
    });
    canvas.dataset.boxes = String(boxes.length);
    canvas.dataset.ready = "1";
  };
  img.src = previews[0];
  $("thumbs").replaceChildren(...previews.slice(1).map((src, i) =>
    Object.assign(document.createElement("img"), { src, title: p.images[i + 1].source })));
}

function drawECG(ecg) {
  $("ecg-block").hidden = !ecg;
  if (!ecg) return;
  const canvas = $("ecg-canvas");
  const ctx = canvas.getContext("2d");
  const rowH = canvas.height / ecg.signal.length;
  ctx.fillStyle = "#fff8f8";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  // 1 mV per row height / 2, 10 s across the width: the usual paper-like layout, one lead per row.
  ctx.strokeStyle = "#f3caca";
  ctx.lineWidth = 1;
  const seconds = ecg.signal[0].length / ecg.fs;
  for (let s = 0; s <= seconds; s += 0.2) {
    const x = 40 + (canvas.width - 40) * s / seconds;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, canvas.height); ctx.stroke();
  }
  ecg.signal.forEach((lead, r) => {
    const mid = rowH * (r + 0.5);
    ctx.fillStyle = "#333";
    ctx.font = "12px sans-serif";
    ctx.fillText(ecg.leads[r], 4, mid + 4);
    ctx.strokeStyle = "#111";
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    lead.forEach((v, i) => {
      const x = 40 + (canvas.width - 40) * i / lead.length;
      const y = mid - v * rowH / 2;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  canvas.dataset.leads = String(ecg.signal.length);
}
