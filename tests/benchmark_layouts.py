"""Small copies of each benchmark's published release, in its exact layout, with images made with Pillow."""

import csv
import io
import json
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage


def png_bytes(seed: int, size=(40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PILImage.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def save_image(path: Path, seed: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(seed)
    if fmt == "PNG":
        path.write_bytes(data)
    else:
        PILImage.open(io.BytesIO(data)).convert("RGB").save(path, format=fmt)


def _parquet(path: Path, rows: dict, features: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(path))


QA_FEATURES = Features({"image": Image(), "question": Value("string"), "answer": Value("string")})


def make_vqa_rad(root: Path) -> Path:
    """flaviagiammarino/vqa-rad: data/{train,test}-*.parquet with image, question, answer."""
    test = {"image": [{"bytes": png_bytes(i), "path": f"synpic{i}.jpg"} for i in range(4)],
            "question": ["is there a fracture?", "is the liver normal?", "what organ is shown?",
                         "where is the lesion?"],
            "answer": ["yes", "No", "liver", "right lower lobe"]}
    _parquet(root / "data" / "test-00000-of-00001-aaaa.parquet", test, QA_FEATURES)
    train = {k: v[:1] for k, v in test.items()}
    _parquet(root / "data" / "train-00000-of-00001-bbbb.parquet", train, QA_FEATURES)
    return root


def make_pathvqa(root: Path) -> Path:
    """flaviagiammarino/path-vqa: data/{train,validation,test}-0000N-of-0000M-*.parquet (sharded)."""
    shards = [{"image": [{"bytes": png_bytes(10), "path": "test_0001.jpg"}],
               "question": ["is this inflammation?"], "answer": ["yes"]},
              {"image": [{"bytes": png_bytes(11), "path": "test_0002.jpg"}, {"bytes": png_bytes(12), "path": None}],
               "question": ["what is present?", "does this show necrosis?"], "answer": ["granuloma", "no"]}]
    for k, shard in enumerate(shards):
        _parquet(root / "data" / f"test-0000{k}-of-00002-cccc.parquet", shard, QA_FEATURES)
    return root


def make_slake(root: Path) -> Path:
    """BoKelvin/SLAKE: {train,validation,test}.json and imgs/xmlabN/source.jpg."""
    for n in range(3):
        save_image(root / "imgs" / f"xmlab{n}" / "source.jpg", 20 + n, fmt="JPEG")
    base = dict(location="Abdomen", base_type="vqa", triple=["vhead", "_", "_"])
    rows = [
        dict(img_id=0, img_name="xmlab0/source.jpg", question="Is the liver healthy?", answer="Yes", q_lang="en",
             answer_type="CLOSED", modality="CT", content_type="Abnormality", qid=11, **base),
        dict(img_id=0, img_name="xmlab0/source.jpg", question="肝脏健康吗?", answer="是", q_lang="zh",
             answer_type="CLOSED", modality="CT", content_type="Abnormality", qid=12, **base),
        dict(img_id=1, img_name="xmlab1/source.jpg", question="Which is bigger, the liver or the spleen?",
             answer="Liver", q_lang="en", answer_type="CLOSED", modality="MRI", content_type="Size", qid=13, **base),
        dict(img_id=2, img_name="xmlab2/source.jpg", question="What organ is abnormal?", answer="Left Lung",
             q_lang="en", answer_type="OPEN", modality="X-Ray", content_type="Organ", qid=14, **base),
    ]
    (root / "test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (root / "train.json").write_text(json.dumps(rows[:1]), encoding="utf-8")
    return root


def make_pmc_vqa(root: Path) -> Path:
    """xmcmic/PMC-VQA: test_2.csv (index, Figure_path, Caption, Question, Choice A..D, Answer, split) and the
    figures in figures/; test_clean.csv (v1 columns with Answer_label) with images in images/."""
    save_image(root / "figures" / "PMC100_F1.jpg", 30, fmt="JPEG")
    save_image(root / "figures" / "PMC101_F2.jpg", 31, fmt="JPEG")
    save_image(root / "images" / "PMC102_F3.jpg", 32, fmt="JPEG")
    with open(root / "test_2.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
                    "Answer", "split"])
        w.writerow([0, "PMC100_F1.jpg", "CT of the chest.", "What imaging modality is used?", "A:CT", "B:MRI",
                    "C:PET", "D:Ultrasound", "A", "test"])
        w.writerow([1, "PMC101_F2.jpg", "A stained section.", "Which stain is shown?", "A:Giemsa", "B:H&E",
                    "C:PAS", "D:Trichrome", "B", "test"])
    with open(root / "test_clean.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                    "Answer_label"])
        w.writerow(["PMC102_F3.jpg", "Where is the mass?", "Left kidney", " A:Liver", " B:Left kidney",
                    " C:Spleen", " D:Pancreas", "B"])
    return root


def make_omnimedvqa(root: Path) -> Path:
    """foreverbeliever/OmniMedVQA: QA_information/{Open,Restricted}-access/<dataset>.json and Images/<dataset>/."""
    save_image(root / "Images" / "ACRIMA" / "Im1.png", 40)
    save_image(root / "Images" / "Chest CT Scan" / "ct1.png", 41)
    open_access = root / "QA_information" / "Open-access"
    open_access.mkdir(parents=True)
    (open_access / "ACRIMA.json").write_text(json.dumps([
        {"dataset": "ACRIMA", "question_id": "ACRIMA_0001", "question_type": "Disease Diagnosis",
         "question": "What is the diagnosis?", "gt_answer": "Glaucoma", "image_path": "Images/ACRIMA/Im1.png",
         "option_A": "Cataract", "option_B": "Glaucoma", "option_C": "Normal", "option_D": "Myopia",
         "modality_type": "Fundus Photography"},
        {"dataset": "ACRIMA", "question_id": "ACRIMA_0002", "question_type": "Modality Recognition",
         "question": "What imaging modality is this?", "gt_answer": "Fundus photography",
         "image_path": "Images/ACRIMA/Im1.png", "option_A": "Fundus photography", "option_B": "CT",
         "modality_type": "Fundus Photography"}]), encoding="utf-8")
    (open_access / "Chest CT Scan.json").write_text(json.dumps([
        {"dataset": "Chest CT Scan", "question_id": "Chest CT Scan_0001", "question_type": "Anatomy Identification",
         "question": "Which organ is shown?", "gt_answer": "Lung", "image_path": "Images/Chest CT Scan/ct1.png",
         "option_A": "Heart", "option_B": "Liver", "option_C": "Lung", "modality": "CT(Computed Tomography)"}]),
        encoding="utf-8")
    restricted = root / "QA_information" / "Restricted-access"
    restricted.mkdir(parents=True)
    save_image(root / "Images" / "AIDA" / "r1.png", 42)
    (restricted / "AIDA.json").write_text(json.dumps([
        {"dataset": "AIDA", "question_id": "AIDA_0001", "question_type": "Disease Diagnosis",
         "question": "Is there disease?", "gt_answer": "Yes", "image_path": "Images/AIDA/r1.png",
         "option_A": "No", "option_B": "Yes", "modality_type": "Endoscopy"}]), encoding="utf-8")
    return root


MMMU_SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
                 "Public_Health")


def make_mmmu(root: Path, images_in_first: int = 1) -> Path:
    """MMMU/MMMU: <Subject>/validation-00000-of-00001.parquet with id, question, options (text of a Python
    list), answer, image_1..image_7, question_type, subfield, topic_difficulty ..."""
    features = Features({"id": Value("string"), "question": Value("string"), "options": Value("string"),
                         "explanation": Value("string"), **{f"image_{k}": Image() for k in range(1, 8)},
                         "img_type": Value("string"), "answer": Value("string"),
                         "topic_difficulty": Value("string"), "question_type": Value("string"),
                         "subfield": Value("string")})
    for s, subject in enumerate(MMMU_SUBJECTS):
        n_images = images_in_first if s == 0 else 1
        row = {"id": f"validation_{subject}_1",
               "question": "<image 1> Which structure is labelled? " + ("" if n_images == 1 else "See <image 2>."),
               "options": str(["Aorta", "Vena cava", "Pulmonary artery", "Trachea"]), "explanation": "",
               "img_type": "['Diagrams']", "answer": "ABCD"[s % 4], "topic_difficulty": "Easy" if s % 2 else "Hard",
               "question_type": "multiple-choice", "subfield": f"{subject} field"}
        for k in range(1, 8):
            row[f"image_{k}"] = {"bytes": png_bytes(50 + 10 * s + k), "path": None} if k <= n_images else None
        rows = {key: [value] for key, value in row.items()}
        if s == 4:  # one open question
            rows = {key: [value, value] for key, value in row.items()}
            rows["id"][1] = f"validation_{subject}_2"
            rows["options"][1] = "[]"
            rows["question_type"][1] = "open"
            rows["answer"][1] = "0.25"
        _parquet(root / subject / "validation-00000-of-00001.parquet", rows, features)
    return root


def make_medxpertqa(root: Path) -> Path:
    """TsinghuaC3I/MedXpertQA: MM/{test,dev}.jsonl and images/."""
    for name, seed in (("MM-1-a.jpeg", 70), ("MM-2-a.jpeg", 71), ("MM-2-b.png", 72)):
        save_image(root / "images" / name, seed, fmt="JPEG" if name.endswith("jpeg") else "PNG")
    options = {"A": "Erythema infectiosum", "B": "Cutaneous larva migrans", "C": "Cold agglutinin disease",
               "D": "Cutis marmorata", "E": "Erythema ab igne"}
    choices = " ".join(f"({k}) {v}" for k, v in options.items())
    rows = [
        {"id": "MM-1", "question": f"A 70-year-old woman has a rash. What is the diagnosis?\nAnswer Choices: {choices}",
         "options": options, "label": "C", "images": ["MM-1-a.jpeg"], "medical_task": "Diagnosis",
         "body_system": "Integumentary", "question_type": "Reasoning"},
        {"id": "MM-2", "question": f"Which finding is shown in both images?\nAnswer Choices: {choices}",
         "options": options, "label": "E", "images": ["MM-2-a.jpeg", "MM-2-b.png"], "medical_task": "Basic Science",
         "body_system": "Skeletal", "question_type": "Understanding"},
    ]
    (root / "MM").mkdir(parents=True, exist_ok=True)
    (root / "MM" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "MM" / "dev.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    return root


MAKERS = {"vqa-rad": make_vqa_rad, "pathvqa": make_pathvqa, "slake": make_slake, "pmc-vqa": make_pmc_vqa,
          "omnimedvqa": make_omnimedvqa, "mmmu-med": make_mmmu, "medxpertqa-mm": make_medxpertqa}
