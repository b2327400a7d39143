import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qoqmed.data import DOMAINS, Box, DataError, Record, load_records, parse_record, split_labels, write_records


def _row(**over):
    row = {
        "id": "ct-000001",
        "domain": "ct",
        "dataset": "climb_mini/ct",
        "split": "train",
        "problem": "<image><image>\nWhich hemorrhage? Options: a, b.",
        "answer": "subdural hemorrhage",
        "images": ["ct/x/000001/slice_0.png", "ct/x/000001/slice_1.png"],
        "ecg": [],
        "boxes": [{"bbox_2d": [1, 2, 10, 20], "label": "subdural hemorrhage", "image": 1}],
        "segmentation_path": "ct/x/000001/mask.png",
        "difficulty": "easy",
    }
    row.update(over)
    return row


def _write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row))
            fh.write("\n")
    return path


def _touch(base: Path, *rels: str) -> None:
    for rel in rels:
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"x")


# ----------------------------------------------------------------------------------------------------------------
# split_labels


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Pleural Effusion, Cardiomegaly", ["Pleural Effusion", "Cardiomegaly"]),
        ("A and B & C,D", ["A", "B", "C", "D"]),
        ("  A ,, B , A ", ["A", "B"]),
        ("A. Fib/Aflutter", ["A. Fib/Aflutter"]),
        ("Sandy band", ["Sandy band"]),  # "and" inside words does not split
        ("", []),
        (" , & ", []),
    ],
)
def test_split_labels(answer, expected):
    assert split_labels(answer) == expected


@given(st.lists(st.text(alphabet="abcdefgh XYZ./-", min_size=1, max_size=12), min_size=1, max_size=5))
def test_split_labels_round_trips_joined_labels(labels):
    clean = [" ".join(lab.split()) for lab in labels]
    clean = [lab for lab in clean if lab and lab != "and" and not lab.startswith("and ") and not lab.endswith(" and")
             and " and " not in lab]
    expected = list(dict.fromkeys(clean))
    assert split_labels(", ".join(clean)) == expected


# ----------------------------------------------------------------------------------------------------------------
# parse_record


def test_parse_native_row(tmp_path):
    rec = parse_record(_row(), tmp_path)
    assert isinstance(rec, Record)
    assert rec.domain == "ct" and rec.split == "train" and rec.difficulty == "easy"
    assert rec.boxes == [Box((1, 2, 10, 20), "subdural hemorrhage", 1)]
    assert rec.labels == ["subdural hemorrhage"]
    assert rec.mask_image == 1
    assert rec.resolve(rec.images[0]) == tmp_path / "ct/x/000001/slice_0.png"
    assert rec.to_dict() == _row()


def test_domains_constant():
    assert DOMAINS == ("ecg", "chest_xray", "mammography", "dermoscopy", "fundus", "pathology", "ct", "ultrasound",
                       "mri")


def test_parse_collects_every_problem_with_field_and_reason(tmp_path):
    bad = _row(
        domain="chest x ray",
        answer=" ",
        split="dev",
        boxes=[
            {"bbox_2d": [10, 2, 5, 20], "label": "x", "image": 0},
            {"bbox_2d": [1, 2, 3], "label": "x", "image": 0},
            {"bbox_2d": [1, 2, 3, 4], "label": "x", "image": 7},
            {"bbox_2d": [1, 2, 3, 4], "label": "", "image": 0},
        ],
        problem="<image>\nonly one placeholder",
    )
    with pytest.raises(DataError) as info:
        parse_record(bad, tmp_path, line_no=12)
    msg = str(info.value)
    expected = [
        "line 12: domain: 'chest x ray' is not a domain name",
        "line 12: answer: must not be empty",
        "line 12: split: 'dev' is not one of train, val, test",
        "line 12: boxes[0].bbox_2d: needs x1 < x2 and y1 < y2",
        "line 12: boxes[1].bbox_2d: must be 4 finite numbers",
        "line 12: boxes[2].image: index 7 out of range for 2 image(s)",
        "line 12: boxes[3].label: must not be empty",
        "line 12: problem: has 1 <image> placeholder(s) but images lists 2 file(s)",
    ]
    for part in expected:
        assert part in msg
    assert len(info.value.problems) == len(expected)


@pytest.mark.parametrize(
    "over, field, reason",
    [
        ({"problem": None}, "problem", "missing"),
        ({"images": "a/b/c.png", "problem": "<image> q", "boxes": []}, None, None),  # one path string is accepted
        ({"images": [3]}, "images[0]", "must be a non-empty path string"),
        ({"images": ["/abs/x.png", "ct/x/1.png"]}, "images[0]", "absolute"),
        ({"ecg": ["e.npy", "f.npy"], "problem": "<image><image><ecg> q"}, "problem", "1 <ecg> placeholder(s) but ecg"),
        ({"boxes": {"bbox_2d": [1, 2, 3, 4]}}, "boxes", "must be a list"),
        ({"boxes": [{"bbox_2d": [1, 2, 3, 4], "label": "x"}]}, "boxes[0].image", "required when the record has 2"),
        ({"boxes": [{"bbox_2d": [-1, 2, 3, 4], "label": "x", "image": 0}]}, "boxes[0].bbox_2d", ">= 0"),
        ({"boxes": [{"bbox_2d": [True, 2, 3, 4], "label": "x", "image": 0}]}, "boxes[0].bbox_2d", "finite numbers"),
        ({"boxes": [{"bbox_2d": [1, 2, 3, 4], "label": "x", "image": 1.0}]}, "boxes[0].image", "integer index"),
        ({"segmentation_path": 5}, "segmentation_path", "path string or null"),
        ({"difficulty": "medium"}, "difficulty", "not one of easy, hard"),
        ({"id": 17}, "id", "must be a string"),
        ({"videos": ["v.mp4"], "volumes": ["w.mp4"]}, "videos", "together with `volumes`"),
        ({"volumes": [{"path": "ct/x/s", "slices": 0}]}, "volumes[0].slices", "integer 1..64"),
        ({"volumes": [{"path": "ct/x/s", "window": "lungs"}]}, "volumes[0].window", "not a window preset"),
        ({"volumes": [{"path": "ct/x/s", "window": [40, 0]}]}, "volumes[0].window", "width >= 1"),
        ({"volumes": [{"path": "ct/x/s", "axis": "oblique"}]}, "volumes[0].axis", "must be axial"),
        ({"volumes": [{"slices": 2}]}, "volumes[0].path", "missing"),
        ({"volumes": [{"path": "ct/x/s", "frames": 2}]}, "volumes[0]", "unknown key(s) frames"),
        ({"volumes": ["/abs/ct"]}, "volumes[0]", "absolute"),
        ({"volumes": ["a", "b"], "problem": "<volume> q"}, "problem", "1 <volume> placeholder(s) but volumes"),
        ({"volumes": ["a"], "problem": "<video> q"}, "problem", "rows with `volumes` use <volume>"),
    ],
)
def test_parse_single_problems(tmp_path, over, field, reason):
    row = _row(**over)
    if field is None:
        parse_record(row, tmp_path)
        return
    with pytest.raises(DataError) as info:
        parse_record(row, tmp_path)
    assert any(p.startswith("record") and f": {field}: " in p and reason in p for p in info.value.problems), (
        info.value.problems
    )


def test_parse_rejects_non_object(tmp_path):
    with pytest.raises(DataError, match="must be a JSON object"):
        parse_record(["not", "a", "dict"], tmp_path, line_no=3)


def test_missing_id_is_an_error_without_line_number(tmp_path):
    row = _row()
    del row["id"]
    with pytest.raises(DataError, match="id: missing"):
        parse_record(row, tmp_path)
    assert parse_record(row, tmp_path, line_no=9).id == "row-9"


def test_reference_image_row_is_accepted(tmp_path):
    ref = {
        "problem": "<image>\nWhat is shown? Options: Cardiomegaly, No Finding.",
        "answer": "Cardiomegaly",
        "images": ["chest_xray/chexpert/p1/view1.jpg"],
        "bbox": [10, 20, 110, 90],
        "segmentation_path": None,
        "conversations": [{"from": "human", "value": "?"}],
    }
    rec = parse_record(ref, tmp_path, line_no=4)
    assert rec.id == "row-4"
    assert rec.domain == "chest_xray" and rec.dataset == "chest_xray/chexpert"
    assert rec.boxes == [Box((10, 20, 110, 90), "Cardiomegaly", 0)]
    assert rec.split is None and rec.difficulty is None
    assert rec.extra == {"conversations": [{"from": "human", "value": "?"}]}


def test_reference_ecg_row_is_accepted(tmp_path):
    ref = {
        "problem": "What is the rhythm? Options: Normal, A. Fib/Aflutter.",
        "answer": "Normal",
        "images": [],
        "time-series": ["ecg/ptbxl/00001.npy"],
        "dataset": "ecg/ptbxl",
    }
    rec = parse_record(ref, tmp_path, line_no=1)
    assert rec.domain == "ecg" and rec.dataset == "ecg/ptbxl"
    assert rec.ecg == ["ecg/ptbxl/00001.npy"] and rec.images == []
    # a series without a placeholder goes before the text, as in the rows qoqmed writes and in inference prompts
    assert rec.problem.startswith("<ecg>\n") and rec.problem.count("<ecg>") == 1
    assert rec.boxes == []


def test_reference_placeholder_conventions(tmp_path):
    ref = {"problem": "Which?", "answer": "glioma", "images": ["mri/brain/1/a.png", "mri/brain/1/b.png"],
           "bbox": [0, 0, 0, 0]}
    rec = parse_record(ref, tmp_path, line_no=2)
    assert rec.problem == "<image><image>\nWhich?"
    assert rec.boxes == []  # the reference's [0, 0, 0, 0] means "no box"


def test_reference_row_without_domain_source(tmp_path):
    with pytest.raises(DataError) as info:
        parse_record({"problem": "q", "answer": "a", "images": []}, tmp_path, line_no=1)
    text = str(info.value)
    assert "domain: missing and cannot be derived" in text
    assert "dataset: missing and cannot be derived" in text


def test_derived_domain_is_a_built_in_alias_or_a_user_domain(tmp_path):
    row = {"problem": "<image>q", "answer": "a", "images": ["Radiology/x/1.png"]}
    assert parse_record(row, tmp_path, line_no=1).domain == "radiology"
    row["images"] = ["DERM/HAM10000/1.png"]
    assert parse_record(row, tmp_path, line_no=1).domain == "dermoscopy"
    with pytest.raises(DataError, match=r"domain: 'a b' \(from images\[0\]\) is not a domain name"):
        parse_record({**row, "images": ["a b/x/1.png"]}, tmp_path, line_no=1)


# ----------------------------------------------------------------------------------------------------------------
# load_records / write_records


def test_load_records_reports_all_problems_at_once(tmp_path):
    good = _row()
    _touch(tmp_path, *good["images"], good["segmentation_path"])
    rows = [
        good,
        "{not json",
        _row(id="ct-2", domain="bone/x"),
        "",
        _row(),  # duplicate id
        _row(id="ct-3", images=["ct/x/000001/slice_0.png", "ct/missing.png"]),
        "[1, 2]",
    ]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_records(path)
    problems = info.value.problems
    assert len(problems) == 5, problems
    assert problems[0].startswith(f"{path}:2: <json>: invalid JSON")
    assert problems[1].startswith(f"{path}:3: domain: 'bone/x' is not a domain name")
    assert problems[2] == f"{path}:5: id: 'ct-000001' duplicates line 1"
    assert problems[3].startswith(f"{path}:6: images[1]: ") and problems[3].endswith("missing.png: file not found")
    assert problems[4].startswith(f"{path}:7: <row>: must be a JSON object")
    assert "5 problem(s)" in str(info.value)


def test_load_records_check_files_toggle(tmp_path):
    path = _write_jsonl(tmp_path / "val.jsonl", [_row()])
    with pytest.raises(DataError) as info:
        load_records(path)
    assert {p.split(": ")[1] for p in info.value.problems} == {"images[0]", "images[1]", "segmentation_path"}
    recs = load_records(path, check_files=False)
    assert len(recs) == 1 and recs[0].base_dir == tmp_path


def test_load_records_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no records"):
        load_records(empty)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        load_records(binary)


def test_write_then_load_round_trip_and_rebase(tmp_path):
    src = tmp_path / "data"
    row = _row()
    _touch(src, *row["images"], row["segmentation_path"])
    path = _write_jsonl(src / "train.jsonl", [row, _row(id="ct-2", boxes=[], segmentation_path=None)])
    recs = load_records(path)

    same = write_records(recs, src / "copy.jsonl")
    assert same.read_text(encoding="utf-8").splitlines()[0] == json.dumps(recs[0].to_dict(), ensure_ascii=False)
    assert load_records(same) == recs

    moved = write_records(recs, tmp_path / "elsewhere" / "sub" / "train.jsonl")
    with pytest.raises(DataError, match="leaves the dataset folder"):  # "../" paths need the explicit option
        load_records(moved)
    again = load_records(moved, allow_outside=True)  # files still resolve from the new folder
    assert again[0].images[0] == "../../data/ct/x/000001/slice_0.png"
    assert again[0].resolve(again[0].images[0]).resolve() == (src / row["images"][0]).resolve()
    assert [r.id for r in again] == ["ct-000001", "ct-2"]


def test_llava_rows_are_read_directly(tmp_path):
    row = {"id": "c1", "image": "fundus/aptos/1.png", "label": ["Mild DR", "Edema"],
           "conversations": [{"from": "human", "value": "<image>\nGrade?"}, {"from": "gpt", "value": "Mild DR"}]}
    rec = parse_record(row, tmp_path)
    assert (rec.problem, rec.answer, rec.images) == ("<image>\nGrade?", "Mild DR, Edema", ["fundus/aptos/1.png"])
    assert rec.domain == "fundus" and rec.dataset == "fundus/aptos" and rec.extra == {}
    boxed = {"id": "c2", "videos": ["ultrasound/covid_us/v.gif"],
             "conversations": [{"from": "human", "value": "<video> What?"},
                               {"from": "gpt", "value": "<think>lines</think>\\boxed{COVID-19}"}]}
    rec = parse_record(boxed, tmp_path)
    assert rec.answer == "COVID-19" and rec.problem == "<volume> What?" and rec.volumes[0].path.endswith("v.gif")
    with pytest.raises(DataError) as info:
        parse_record({"id": "c3", "images": ["a/b/c.png"], "conversations": [{"from": "gpt", "value": "x"}]}, tmp_path)
    assert any("conversations: has no human turn" in p for p in info.value.problems)


# ----------------------------------------------------------------------------------------------------------------
# paths that leave the dataset folder


@pytest.mark.parametrize("field, value, named", [
    ("images", ["ct/x/../../../secret.png", "ct/x/000001/slice_1.png"], "images[0]"),
    ("images", ["ct/x/000001/slice_0.png", "..\\..\\secret.png"], "images[1]"),
    ("ecg", ["../ecg/a.npy"], "ecg[0]"),
    ("segmentation_path", "ct/../../mask.png", "segmentation_path"),
    ("volumes", [{"path": "../vol.nii.gz"}], "volumes[0]"),
    ("volumes", ["../../vol.nii.gz"], "volumes[0]"),
])
def test_paths_leaving_the_dataset_folder_are_refused_unless_allowed(tmp_path, field, value, named):
    over = {field: value}
    if field in ("ecg", "volumes"):
        over |= {"images": [], "boxes": [], "segmentation_path": None, "domain": "ecg" if field == "ecg" else "ct",
                 "problem": "Which finding? Options: a, b."}
    path = _write_jsonl(tmp_path / "data.jsonl", [_row(**over)])
    with pytest.raises(DataError) as err:
        load_records(path, check_files=False)
    assert any(named in line and "leaves the dataset folder" in line and "data.jsonl:1" in line
               for line in err.value.problems), err.value.problems
    assert load_records(path, check_files=False, allow_outside=True)[0].id == "ct-000001"
    with pytest.raises(DataError, match="leaves the dataset folder"):
        parse_record(_row(**over), tmp_path)


def test_dot_dot_inside_the_folder_is_fine(tmp_path):
    row = _row(images=["ct/x/../x/000001/slice_0.png", "ct/./x/000001/slice_1.png"], segmentation_path=None)
    _touch(tmp_path, "ct/x/000001/slice_0.png", "ct/x/000001/slice_1.png")
    record = load_records(_write_jsonl(tmp_path / "data.jsonl", [row]))[0]
    assert record.images[0] == "ct/x/../x/000001/slice_0.png"
