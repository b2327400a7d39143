"""Request bodies of the HTTP API as pydantic models: strict types, unknown fields refused (the chat endpoint
accepts and ignores OpenAI's other parameters), one error per bad field."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from ..infer.pipeline import Decoding

MAX_FILES = 32
# Text caps, checked when the request is parsed, before anything is tokenized.
MAX_QUESTION_CHARS = 20_000  # a question, or one text part of a chat message
MAX_EHR_CHARS = 50_000       # clinical notes
MAX_CHAT_CHARS = 50_000      # all text of a chat request's messages together
MAX_CHAT_MESSAGES = 64
MAX_CHAT_PARTS = 64          # content parts of one message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FilePart(_Strict):
    """A file as base64 (or a ``data:`` URL); ``filename`` only hints at the format."""

    data: StrictStr
    filename: StrictStr | None = None


class ECGPart(_Strict):
    """One ECG, in exactly one of these forms:

    - ``npy``: base64 ``.npy`` of shape (8, 2500): leads I, II, V1..V6, 10 s at 250 Hz, in mV (with ``fs``: any
      (leads, samples) array at that rate, lead names from ``leads``, default I, II, V1..V6);
    - ``hea`` + ``dat``: a WFDB record, both base64;
    - ``dicom``: a base64 DICOM 12-lead waveform;
    - ``signal`` + ``fs`` (+ ``leads``): numbers in mV, (leads, samples);
    - ``csv`` + ``fs`` (+ ``leads``): a base64 CSV file, a header row naming the leads, then one row per sample, mV.
    """

    npy: StrictStr | None = None
    csv: StrictStr | None = None
    hea: StrictStr | None = None
    dat: StrictStr | None = None
    dicom: StrictStr | None = None
    signal: list[list[float]] | None = None
    fs: StrictFloat | StrictInt | None = Field(None, gt=0)
    leads: list[StrictStr] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        forms = [name for name, on in (("npy", self.npy is not None), ("hea+dat", self.hea is not None
                 or self.dat is not None), ("dicom", self.dicom is not None), ("signal", self.signal is not None),
                 ("csv", self.csv is not None)) if on]
        if len(forms) != 1:
            raise ValueError(f"give exactly one of npy, hea+dat, dicom, signal or csv (got {forms or 'none'})")
        if forms == ["hea+dat"] and (self.hea is None or self.dat is None):
            raise ValueError("a WFDB record needs both hea and dat")
        if (self.signal is not None or self.csv is not None) and self.fs is None:
            raise ValueError(f"{forms[0]} needs fs (sampling rate in Hz)")
        return self


class VolumePart(_Strict):
    """A volume: one NIfTI (.nii/.nii.gz) or multi-frame DICOM file, or ``series``: single-slice DICOM files."""

    data: StrictStr | None = None
    filename: StrictStr | None = None
    series: list[StrictStr] | None = Field(None, min_length=1, max_length=2048)

    @model_validator(mode="after")
    def _one_form(self):
        if (self.data is None) == (self.series is None):
            raise ValueError("give either data (one file) or series (DICOM slices)")
        return self


class SamplingOptions(BaseModel):
    """Decoding: greedy unless ``temperature > 0`` (then nucleus sampling with ``top_p``; ``seed`` reproduces)."""

    temperature: StrictFloat | StrictInt | None = Field(None, ge=0, le=2)
    top_p: StrictFloat | StrictInt | None = Field(None, gt=0, le=1)
    seed: StrictInt | None = Field(None, ge=0, lt=2**63 - 8)  # room for the seeds of n choices

    def decoding(self) -> Decoding:
        return Decoding(float(self.temperature or 0.0), float(1.0 if self.top_p is None else self.top_p), self.seed)


class PredictRequest(_Strict, SamplingOptions):
    question: StrictStr = Field(max_length=MAX_QUESTION_CHARS)
    images: list[FilePart | StrictStr] = Field(default_factory=list, max_length=MAX_FILES)
    volumes: list[VolumePart] = Field(default_factory=list, max_length=8)
    ecg: list[ECGPart] = Field(default_factory=list, max_length=8)
    ehr: StrictStr | None = Field(None, max_length=MAX_EHR_CHARS)
    window: StrictStr | None = None
    max_new_tokens: StrictInt | None = Field(None, ge=1)
    return_previews: StrictBool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr = Field(max_length=MAX_QUESTION_CHARS)


class ImageURL(_Strict):
    url: StrictStr
    detail: StrictStr | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class ECGContent(_Strict):
    type: Literal["ecg"]
    ecg: ECGPart


class VolumeContent(_Strict):
    type: Literal["volume"]
    volume: VolumePart


ContentPart = Annotated[Union[TextPart, ImagePart, ECGContent, VolumeContent], Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: Annotated[StrictStr, Field(max_length=MAX_QUESTION_CHARS)] | Annotated[
        list[ContentPart], Field(max_length=MAX_CHAT_PARTS)]


class ChatRequest(SamplingOptions):
    # OpenAI clients send many optional parameters; unknown ones are accepted and ignored. Unlike OpenAI's default
    # temperature of 1, an absent temperature means greedy decoding, as in evaluation.
    model_config = ConfigDict(extra="allow", strict=True)
    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    stream: StrictBool = False
    n: StrictInt = Field(1, ge=1, le=8)
