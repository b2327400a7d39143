"""CLIMB-mini's nine domains: label sets (real label names from the public datasets CLIMB builds on), prompt wording
and what the synthetic data show for each label."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..domains import DOMAINS
from ..schema import split_labels


@dataclass(frozen=True)
class DomainSpec:
    """Label set and prompt wording of one CLIMB-mini domain."""

    labels: tuple[str, ...]
    normal: str | None  # the label with nothing to localise (None: every class has a lesion)
    source: str  # public dataset(s) the label names come from
    modality: str  # sentence naming the input; "{n}" is the number of slices/frames
    question: str
    cues: Mapping[str, str]  # what each class looks like in the synthetic data
    multi_label: bool = False


DOMAIN_SPECS: dict[str, DomainSpec] = {
    "ecg": DomainSpec(
        labels=("Normal", "A. Fib/Aflutter", "Conduction Delay", "Hypertrophy", "Myocardial Infarction",
                "ST/T change"),
        normal="Normal",
        source="PTB-XL / Chapman-Shaoxing / Georgia / CPSC superclasses (as grouped in CLIMB)",
        modality="This is a 12-lead ECG (8 leads shown: I, II, V1-V6; 10 s at 250 Hz).",
        question="What is the diagnosis?",
        cues={
            "Normal": "regular sinus rhythm 62-78 bpm, P before every QRS, narrow QRS, flat baseline",
            "A. Fib/Aflutter": "fast (140-170 bpm), irregularly irregular RR, no P waves, coarse 4-8 Hz fibrillatory "
            "or sawtooth flutter baseline in every lead",
            "Conduction Delay": "slow (48-58 bpm); very wide (about 200 ms), tall, notched R in I, II, V5-V6 and deep "
            "broad QS in V1-V3, discordant T",
            "Hypertrophy": "left-ventricular hypertrophy: narrow but very tall R in I, V4-V6 and very deep S in V1-V3 "
            "(high voltage), lateral strain pattern (ST depression, inverted T in I, V5-V6), normal rate",
            "Myocardial Infarction": "deep wide Q waves, small R and strong ST elevation merging into T in an anterior "
            "(V1-V5) or anterolateral (I, V3-V6) territory; reciprocal ST depression and inverted T elsewhere",
            "ST/T change": "no Q waves and normal QRS voltage; diffuse horizontal ST depression and deeply inverted T "
            "waves in II and V2-V6, rate 80-95 bpm",
        },
    ),
    "chest_xray": DomainSpec(
        labels=("No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax"),
        normal="No Finding",
        source="CheXpert / MIMIC-CXR findings",
        modality="This is a frontal chest X-ray.",
        question="Which findings are present? Select all that apply.",
        cues={
            "No Finding": "two dark-grey lungs with faint rib markings, normal mid-grey heart shadow",
            "Cardiomegaly": "very bright central heart shadow wider than half the chest (box: the heart)",
            "Pleural Effusion": "light-grey, homogeneous band filling the lower half of one lung, meniscus rising "
            "laterally",
            "Pneumothorax": "black region without lung markings over the upper lateral part of one lung, the "
            "collapsed lung pushed towards the hilum behind a thin pleural line",
        },
        multi_label=True,
    ),
    "mammography": DomainSpec(
        labels=("BI-RADS 1", "BI-RADS 2", "BI-RADS 5"),
        normal="BI-RADS 1",
        source="VinDr-Mammo BI-RADS assessment categories (1, 2 and 5 of 1-5)",
        modality="This is a mammogram (mediolateral oblique view).",
        question="What is the BI-RADS assessment category?",
        cues={
            "BI-RADS 1": "smooth fibroglandular texture and pectoral muscle only",
            "BI-RADS 2": "large oval, smooth, circumscribed mid-grey mass with a dark fat halo",
            "BI-RADS 5": "very bright (dense) spiculated mass with clustered microcalcifications",
        },
    ),
    "dermoscopy": DomainSpec(
        labels=("melanoma", "melanocytic nevus", "basal cell carcinoma"),
        normal=None,
        source="HAM10000 diagnosis names",
        modality="This is a dermoscopic image of a skin lesion.",
        question="What is the diagnosis?",
        cues={
            "melanoma": "large asymmetric, mostly near-black lesion with an irregular border and dark-brown, "
            "blue-grey and red areas",
            "melanocytic nevus": "round symmetric lesion of uniform mid brown with a smooth border",
            "basal cell carcinoma": "pink pearly nodule with red arborizing vessels and blue-grey ovoid nests",
        },
    ),
    "fundus": DomainSpec(
        labels=("No DR", "Moderate DR", "Proliferative DR"),
        normal="No DR",
        source="APTOS / Messidor-2 diabetic retinopathy grades",
        modality="This is a colour fundus photograph.",
        question="What is the diabetic retinopathy grade?",
        cues={
            "No DR": "orange retina, yellow optic disc, vessels, darker macula",
            "Moderate DR": "large bright-yellow patch of confluent hard exudates dotted with dark-red dot-blot "
            "haemorrhages",
            "Proliferative DR": "large dark-red, boat-shaped preretinal haemorrhage under a tangle of fine new "
            "vessels",
        },
    ),
    "pathology": DomainSpec(
        labels=("lung adenocarcinoma", "lung squamous cell carcinoma", "benign lung tissue"),
        normal="benign lung tissue",
        source="LC25000 lung classes",
        modality="This is an H&E-stained lung tissue tile.",
        question="What is the tissue type?",
        cues={
            "lung adenocarcinoma": "large dark-purple region of glands: small white lumens ringed by dark nuclei",
            "lung squamous cell carcinoma": "large solid red-pink sheet of dark nuclei with orange keratin pearls",
            "benign lung tissue": "pale pink-white alveolar spaces with thin pink walls and sparse nuclei",
        },
    ),
    "ct": DomainSpec(
        labels=("intraparenchymal hemorrhage", "subdural hemorrhage", "no hemorrhage"),
        normal="no hemorrhage",
        source="RSNA intracranial hemorrhage subtypes",
        modality="These are {n} axial slices of a non-contrast head CT, from inferior to superior.",
        question="Is there an intracranial hemorrhage, and of which type?",
        cues={
            "intraparenchymal hemorrhage": "large round, very bright (hyperdense) blob inside the brain on 2 "
            "consecutive slices",
            "subdural hemorrhage": "thick, moderately bright crescent along the inner skull on 2 consecutive slices",
            "no hemorrhage": "skull ring, grey brain, dark ventricles",
        },
    ),
    "ultrasound": DomainSpec(
        labels=("normal", "benign", "malignant"),
        normal="normal",
        source="BUSI (breast ultrasound) classes",
        modality="These are {n} frames of a breast ultrasound clip.",
        question="What is the finding?",
        cues={
            "normal": "speckled tissue layers in a fan-shaped field",
            "benign": "large oval, wider-than-tall, smooth dark-grey mass over a bright band of posterior "
            "enhancement",
            "malignant": "irregular, spiculated, taller-than-wide black mass over a dark posterior shadow",
        },
    ),
    "mri": DomainSpec(
        labels=("glioma", "meningioma", "no tumor"),
        normal="no tumor",
        source="Brain Tumor MRI dataset classes",
        modality="These are {n} axial slices of a contrast-enhanced T1-weighted brain MRI, from inferior to "
        "superior.",
        question="What is the diagnosis?",
        cues={
            "glioma": "large irregular mass inside the brain, mostly dark (necrotic) within a thin enhancing rim, on "
            "2 consecutive slices",
            "meningioma": "large smooth, homogeneously very bright mass against the inner skull, on 2 consecutive "
            "slices",
            "no tumor": "brain with dark ventricles only",
        },
    ),
}
LABELS: dict[str, tuple[str, ...]] = {d: s.labels for d, s in DOMAIN_SPECS.items()}

for _spec in DOMAIN_SPECS.values():  # labels must survive the answer format ("A, B") unchanged
    assert all(split_labels(label) == [label] for label in _spec.labels), _spec.labels
assert tuple(DOMAIN_SPECS) == DOMAINS
