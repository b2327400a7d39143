"""Each benchmark read from a small copy of its published release, and the errors a broken copy gives."""

import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmark_layouts import MAKERS, make_medxpertqa, make_mmmu, make_omnimedvqa, make_pmc_vqa, make_slake, \
    make_vqa_rad
from qoqmed.data.errors import DataError
from qoqmed.eval.benchmarks import BENCHMARKS, get_benchmark


def _load(name, tmp_path, split=None):
    return get_benchmark(name).load(MAKERS[name](tmp_path / name), split)


def test_every_benchmark_has_a_reader_and_a_fixture():
    assert set(BENCHMARKS) == set(MAKERS) == {"vqa-rad", "slake", "pathvqa", "pmc-vqa", "omnimedvqa", "mmmu-med",
                                              "medxpertqa-mm"}


def test_vqa_rad_closed_means_a_yes_no_answer(tmp_path):
    items = _load("vqa-rad", tmp_path)
    assert [(i.kind, i.answer) for i in items] == [("closed", "yes"), ("closed", "No"), ("open", "liver"),
                                                   ("open", "right lower lobe")]
    assert items[0].images[0].data[:8] == b"\x89PNG\r\n\x1a\n" and items[0].images[0].name == "synpic0.jpg"
    assert len(get_benchmark("vqa-rad").load(tmp_path / "vqa-rad", "train")) == 1


def test_pathvqa_reads_every_shard(tmp_path):
    items = _load("pathvqa", tmp_path)
    assert [i.answer for i in items] == ["yes", "granuloma", "no"]
    assert [i.kind for i in items] == ["closed", "open", "closed"]
    with pytest.raises(DataError, match="validation"):
        get_benchmark("pathvqa").load(tmp_path / "pathvqa", "validation")


def test_slake_reads_english_questions_and_the_release_answer_type(tmp_path):
    items = _load("slake", tmp_path)
    assert [i.id for i in items] == ["11", "13", "14"]              # the Chinese question 12 is left out
    assert [i.kind for i in items] == ["closed", "closed", "open"]
    assert items[1].subsets == {"modality": "MRI", "content_type": "Size"}
    assert items[2].images[0].path == tmp_path / "slake" / "imgs" / "xmlab2" / "source.jpg"


def test_pmc_vqa_splits_letters_and_image_folders(tmp_path):
    items = _load("pmc-vqa", tmp_path)
    assert [i.answer for i in items] == ["A", "B"]
    assert items[1].options == {"A": "Giemsa", "B": "H&E", "C": "PAS", "D": "Trichrome"}
    assert items[0].images[0].path.parent.name == "figures"
    clean = get_benchmark("pmc-vqa").load(tmp_path / "pmc-vqa", "test_clean")
    assert clean[0].answer == "B" and clean[0].options["B"] == "Left kidney"
    assert clean[0].images[0].path.parent.name == "images"


def test_omnimedvqa_open_access_and_all(tmp_path):
    items = _load("omnimedvqa", tmp_path)
    assert [(i.id, i.answer) for i in items] == [("ACRIMA_0001", "B"), ("ACRIMA_0002", "A"),
                                                 ("Chest CT Scan_0001", "C")]
    assert list(items[1].options) == ["A", "B"]
    assert items[2].subsets == {"question_type": "Anatomy Identification", "modality_type": "CT(Computed Tomography)"}
    assert len(get_benchmark("omnimedvqa").load(tmp_path / "omnimedvqa", "all")) == 4


def test_mmmu_med_reads_the_five_subjects(tmp_path):
    items = get_benchmark("mmmu-med").load(make_mmmu(tmp_path / "m", images_in_first=3))
    assert len(items) == 6 and sum(i.kind == "open" for i in items) == 1
    first = items[0]
    assert first.kind == "choice" and first.answer == "A" and first.options["D"] == "Trachea"
    assert len(first.images) == 3 and first.subsets["subject"] == "Basic_Medical_Science"
    assert [i.answer for i in items if i.kind == "open"] == ["0.25"]


def test_medxpertqa_mm_shows_options_once(tmp_path):
    items = _load("medxpertqa-mm", tmp_path)
    assert [i.answer for i in items] == ["C", "E"] and len(items[1].images) == 2
    assert "Answer Choices" not in items[0].question and items[0].question.endswith("What is the diagnosis?")
    assert items[0].subsets == {"medical_task": "Diagnosis", "body_system": "Integumentary",
                                "question_type": "Reasoning"}


def test_errors_name_the_file_the_field_and_the_reason(tmp_path):
    root = make_vqa_rad(tmp_path / "rad")
    shard = next((root / "data").glob("test-*.parquet"))
    pq.write_table(pq.read_table(shard).drop(["answer"]), shard)
    with pytest.raises(DataError, match=r"test-00000-of-00001-aaaa\.parquet: no column 'answer'"):
        get_benchmark("vqa-rad").load(root)

    root = make_slake(tmp_path / "slake")
    (root / "imgs" / "xmlab1" / "source.jpg").unlink()
    with pytest.raises(DataError, match=r"test\.json qid 13 field 'img_name'.*not found"):
        get_benchmark("slake").load(root)

    root = make_pmc_vqa(tmp_path / "pmc")
    text = (root / "test_2.csv").read_text().replace(",A,test", ",F,test")
    (root / "test_2.csv").write_text(text)
    with pytest.raises(DataError, match=r"test_2\.csv row 2: answer 'F' is not one of the option letters"):
        get_benchmark("pmc-vqa").load(root)

    root = make_omnimedvqa(tmp_path / "omni")
    path = root / "QA_information" / "Open-access" / "ACRIMA.json"
    rows = json.loads(path.read_text())
    rows[0]["gt_answer"] = "Retinoblastoma"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"ACRIMA_0001: field 'gt_answer' 'Retinoblastoma' matches 0 of the options"):
        get_benchmark("omnimedvqa").load(root)

    root = make_medxpertqa(tmp_path / "mx")
    rows = [json.loads(line) for line in (root / "MM" / "test.jsonl").read_text().splitlines()]
    del rows[1]["label"]
    (root / "MM" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"test\.jsonl id MM-2: field 'label' is missing"):
        get_benchmark("medxpertqa-mm").load(root)

    root = make_mmmu(tmp_path / "mmmu")
    for f in (root / "Pharmacy").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"Pharmacy/validation-\*\.parquet"):
        get_benchmark("mmmu-med").load(root)

    with pytest.raises(DataError, match="split 'train' is not one of test, dev"):
        get_benchmark("medxpertqa-mm").load(root, "train")
    with pytest.raises(ValueError, match="choose one of vqa-rad"):
        get_benchmark("vqa-rad-2")


def test_an_image_cell_without_bytes_is_refused(tmp_path):
    root = make_vqa_rad(tmp_path / "rad")
    shard = next((root / "data").glob("test-*.parquet"))
    table = pq.read_table(shard).to_pylist()
    table[2]["image"] = {"bytes": None, "path": "synpic2.jpg"}
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)
    with pytest.raises(DataError, match=r"row 2 field 'image': image cell holds no bytes \(it refers to the file"):
        get_benchmark("vqa-rad").load(root)


def test_fixture_images_are_real_images(tmp_path):
    items = _load("medxpertqa-mm", tmp_path)
    with Image.open(items[1].images[1].path) as img:
        assert img.format == "PNG" and img.size == (40, 32)
