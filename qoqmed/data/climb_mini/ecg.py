"""Simulated 8-lead ECGs of CLIMB-mini's six ECG classes."""

from __future__ import annotations

import math

import numpy as np

from ..ecg import ECG_SAMPLES, ECG_SAMPLING_RATE, ENCODER_LEADS
from .domains import LABELS


# Waves of one beat: (name, offset from the R peak in s, width sigma in s). T is placed per beat (QT follows RR).
_WAVES = ("P", "Q", "R", "S", "T", "R2", "ST")
# Lead gains (mV) of each wave for a normal heart, leads I, II, V1..V6; R2 (R') and ST are off unless a class
# turns them on.
_GAINS = np.array(
    [
        # P     Q      R     S      T     R2   ST
        [0.10, -0.05, 0.80, -0.15, 0.25, 0.0, 0.0],  # I
        [0.15, -0.05, 1.10, -0.20, 0.30, 0.0, 0.0],  # II
        [0.08, 0.00, 0.30, -0.90, 0.05, 0.0, 0.0],  # V1
        [0.08, 0.00, 0.55, -1.10, 0.40, 0.0, 0.0],  # V2
        [0.08, 0.00, 0.85, -0.70, 0.45, 0.0, 0.0],  # V3
        [0.08, -0.05, 1.20, -0.40, 0.45, 0.0, 0.0],  # V4
        [0.08, -0.08, 1.10, -0.20, 0.35, 0.0, 0.0],  # V5
        [0.08, -0.08, 0.90, -0.10, 0.30, 0.0, 0.0],  # V6
    ],
    dtype=np.float64,
)
_W = {name: i for i, name in enumerate(_WAVES)}
_L = {name: i for i, name in enumerate(ENCODER_LEADS)}
_MI_TERRITORIES = (("V1", "V2", "V3", "V4", "V5"), ("I", "V3", "V4", "V5", "V6"))  # anterior, anterolateral


def _beat_times(rng: np.random.Generator, mean_rr: float, cv: float, duration: float) -> np.ndarray:
    """R-peak times covering ``duration`` seconds (with one beat of margin at either end)."""
    times = [rng.uniform(-mean_rr, 0.0)]
    while times[-1] < duration + mean_rr:
        rr = mean_rr * math.exp(cv * rng.standard_normal() - cv * cv / 2)
        times.append(times[-1] + min(max(rr, 0.28), 2.2))
    return np.asarray(times)


def simulate_ecg(rng: np.random.Generator, label: str, hard: bool = False) -> np.ndarray:
    """Simulate a 10 s, 250 Hz, 8-lead (I, II, V1..V6) ECG of one class, in millivolts, shape (8, 2500).

    Every beat is a sum of Gaussian P, Q, R, S and T waves with lead-specific gains. The classes differ in ways
    that show in simple statistics (mean, spread, extremes) of short (200 ms) windows of each lead, not only in fine
    wave shapes:

    - Normal: regular sinus rhythm at 62-78 bpm, narrow QRS, flat baseline.
    - A. Fib/Aflutter: fast (140-170 bpm) irregularly irregular rhythm without P waves, on a coarse 4-8 Hz
      fibrillatory (or sawtooth flutter) baseline present in every window.
    - Conduction Delay: slow (48-58 bpm) rhythm with very wide (about 200 ms), tall, notched R waves in I, II,
      V5-V6, deep broad QS in V1-V3 and discordant T waves.
    - Hypertrophy: left-ventricular-hypertrophy-like high voltage: narrow, very tall R in I and V4-V6, very deep S
      in V1-V3, and a lateral strain pattern (ST depression, inverted T in I, V5-V6) at a normal rate.
    - Myocardial Infarction: deep wide Q waves, small R and strong ST elevation merging into the T wave in one
      territory (anterior V1-V5 or anterolateral I, V3-V6); reciprocal ST depression and inverted T elsewhere.
    - ST/T change: normal QRS without Q waves, diffuse ST depression and deeply inverted T waves in II and V2-V6
      (ischaemia-like repolarisation change without infarction), rate 80-95 bpm.

    ``hard`` keeps each class's character but shrinks the differences (rates closer to normal, smaller QRS
    widening, ST shift and fibrillation), doubles the white noise and, outside AF, adds one premature beat as a
    distractor.
    """
    if label not in LABELS["ecg"]:
        raise ValueError(f"unknown ECG label {label!r}; expected one of {LABELS['ecg']}")
    t = np.arange(ECG_SAMPLES) / ECG_SAMPLING_RATE
    shape = _BeatShape(rng, hard)
    _CLASS_SHAPES[label](shape)
    beats, amp = _beat_times_and_amplitudes(rng, shape, label, hard, t[-1])
    ecg = _sum_of_waves(shape, beats, amp, t)
    if label == "A. Fib/Aflutter":
        ecg += _fibrillation(shape, t)
    ecg += _ecg_noise(rng, t, hard)
    return ecg.astype(np.float32)


class _BeatShape:
    """Rate, rhythm irregularity, per-lead wave gains, wave widths and offsets of one record, which each class's
    function below changes from a normal heart's. Draws come from ``rng`` in a fixed order, so a seed gives the
    same record."""

    def __init__(self, rng: np.random.Generator, hard: bool):
        self.rng, self.hard = rng, hard
        self.hr = 0.0
        self.cv = 0.02
        self.gains = _GAINS.copy()
        self.width = {"P": 0.022, "Q": 0.008, "R": 0.010, "S": 0.009, "T": 0.045, "R2": 0.014, "ST": 0.05}
        self.offset = {"P": -0.16, "Q": -0.022, "R": 0.0, "S": 0.024, "R2": 0.075, "ST": 0.13}

    def pick(self, easy: tuple[float, float], faint: tuple[float, float]) -> float:
        """A uniform draw from the easy range, or from the fainter one in hard rows."""
        return float(self.rng.uniform(*(faint if self.hard else easy)))


def _normal(m: _BeatShape) -> None:
    m.hr = m.rng.uniform(62, 78)


def _atrial_fibrillation(m: _BeatShape) -> None:
    m.hr, m.cv = m.pick((140, 170), (105, 120)), m.pick((0.18, 0.26), (0.10, 0.15))
    m.gains[:, _W["P"]] = 0.0


def _conduction_delay(m: _BeatShape) -> None:
    """Left-bundle-branch-block-like: slow, very wide, tall QRS."""
    m.hr = m.pick((48, 58), (55, 64))
    grow = m.pick((1.9, 2.2), (1.3, 1.45))
    m.width["R"], m.width["R2"], m.width["S"] = m.pick((0.034, 0.04), (0.018, 0.022)), 0.024, 0.032
    m.offset["R2"], m.offset["S"] = 0.06, 0.04
    lateral, septal = [_L["I"], _L["II"], _L["V5"], _L["V6"]], [_L["V1"], _L["V2"], _L["V3"]]
    gains = m.gains
    gains[:, _W["R"]] *= grow
    gains[lateral, _W["R2"]] = 0.7 * grow  # notched (M-shaped) broad R
    gains[lateral, _W["S"]] = 0.0
    gains[septal, _W["R"]] *= 0.3
    gains[septal, _W["S"]] = -1.3 * grow  # deep broad QS
    gains[lateral, _W["T"]] = -0.25  # discordant T


def _hypertrophy(m: _BeatShape) -> None:
    """LVH: high voltage with a narrow QRS (unlike Conduction Delay) and strain."""
    m.hr = m.rng.uniform(66, 80)
    grow = m.pick((2.1, 2.5), (1.4, 1.6))
    lateral, septal = [_L["I"], _L["V4"], _L["V5"], _L["V6"]], [_L["V1"], _L["V2"], _L["V3"]]
    m.width["R"] = 0.012
    m.gains[lateral, _W["R"]] *= grow
    m.gains[septal, _W["S"]] *= grow
    strain = [_L["I"], _L["V5"], _L["V6"]]
    m.width["ST"], m.offset["ST"] = 0.08, 0.2
    m.gains[strain, _W["ST"]] = -m.pick((0.2, 0.3), (0.07, 0.1))
    m.gains[strain, _W["T"]] = -m.pick((0.3, 0.4), (0.08, 0.12))


def _st_t_change(m: _BeatShape) -> None:
    """Repolarisation only: QRS untouched, no Q waves, no ST elevation."""
    m.hr = m.pick((80, 95), (72, 84))
    leads = [_L[name] for name in ("II", "V2", "V3", "V4", "V5", "V6")]
    m.width["ST"], m.offset["ST"] = 0.1, 0.2
    m.gains[leads, _W["ST"]] = -m.pick((0.3, 0.4), (0.1, 0.14))
    m.gains[leads, _W["T"]] = -m.pick((0.4, 0.55), (0.1, 0.15))


def _myocardial_infarction(m: _BeatShape) -> None:
    m.hr = m.rng.uniform(65, 85)
    territory = _MI_TERRITORIES[int(m.rng.integers(len(_MI_TERRITORIES)))]
    leads = [_L[name] for name in territory]
    others = [i for i in range(len(ENCODER_LEADS)) if i not in leads]
    # ST elevation merging into the T wave, held over most of each beat (a level shift, not a spike)
    m.width["Q"], m.width["ST"], m.offset["ST"] = 0.016, 0.1, 0.21
    m.gains[leads, _W["Q"]] = -m.pick((0.7, 0.95), (0.3, 0.4))
    m.gains[leads, _W["R"]] *= 0.35 if not m.hard else 0.7
    m.gains[leads, _W["ST"]] = m.pick((0.7, 0.9), (0.22, 0.3))
    m.gains[others, _W["ST"]] = -m.pick((0.25, 0.35), (0.08, 0.12))  # reciprocal ST depression
    m.gains[others, _W["T"]] = -m.pick((0.3, 0.45), (0.1, 0.15))  # and inverted T


_CLASS_SHAPES = {
    "Normal": _normal,
    "A. Fib/Aflutter": _atrial_fibrillation,
    "Conduction Delay": _conduction_delay,
    "Hypertrophy": _hypertrophy,
    "ST/T change": _st_t_change,
    "Myocardial Infarction": _myocardial_infarction,
}


def _beat_times_and_amplitudes(rng: np.random.Generator, m: _BeatShape, label: str, hard: bool,
                               duration: float) -> tuple[np.ndarray, np.ndarray]:
    """R-peak times (hard rows outside AF get one premature beat) and per-beat amplitudes; also varies the gains
    per lead (electrical axis, electrode placement)."""
    beats = _beat_times(rng, 60.0 / m.hr, m.cv, duration)
    if hard and label != "A. Fib/Aflutter":
        j = int(rng.integers(2, len(beats) - 2))
        beats[j] -= rng.uniform(0.25, 0.35) * (beats[j] - beats[j - 1])
    m.gains *= 1.0 + 0.1 * rng.standard_normal((len(ENCODER_LEADS), 1))  # electrical axis / electrode placement
    amp = 1.0 + 0.05 * rng.standard_normal(len(beats)) + 0.06 * np.sin(2 * np.pi * 0.25 * beats)  # respiration
    return beats, amp


def _sum_of_waves(m: _BeatShape, beats: np.ndarray, amp: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Every beat as a sum of Gaussian waves, each lead a gain-weighted mix of them: (leads, samples)."""
    rr_prev = np.diff(beats, prepend=beats[0] - 60.0 / m.hr)
    waves = np.empty((len(_WAVES), ECG_SAMPLES))
    for name, w in _W.items():
        centre = beats + (0.27 * np.sqrt(rr_prev) if name == "T" else m.offset[name])
        d = t[None, :] - centre[:, None]
        waves[w] = (amp[:, None] * np.exp(-0.5 * (d / m.width[name]) ** 2)).sum(axis=0)
    return m.gains @ waves


def _fibrillation(m: _BeatShape, t: np.ndarray) -> np.ndarray:
    """The fibrillatory (4-8 Hz) or flutter (sawtooth) baseline of AF, in every lead."""
    rng = m.rng
    if rng.random() < 0.3:  # flutter: sawtooth at 4-5.5 Hz
        phase = rng.uniform(4.0, 5.5) * t + rng.uniform(0, 1)
        f = 2.0 * (phase - np.floor(phase)) - 1.0
    else:
        f = sum(rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(4, 8) * t + rng.uniform(0, 2 * np.pi))
                for _ in range(3)) / 2
    f_amp = m.pick((0.35, 0.5), (0.08, 0.12))
    f_gain = np.array([0.6, 0.9, 1.0, 0.9, 0.7, 0.6, 0.5, 0.5])
    return f_amp * f_gain[:, None] * f[None, :] * (1 + 0.2 * np.sin(2 * np.pi * 0.3 * t))[None, :]


def _ecg_noise(rng: np.random.Generator, t: np.ndarray, hard: bool) -> np.ndarray:
    """Baseline wander, mains hum and white noise for 8 leads."""
    n_leads = len(ENCODER_LEADS)
    wander = sum(
        rng.uniform(0.02, 0.05, (n_leads, 1))
        * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 7, (n_leads, 1)))
        for _ in range(2)
    )
    hum = rng.uniform(0.0, 0.01) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t + rng.uniform(0, 7))
    white = rng.normal(0.0, 0.03 if hard else 0.015, (n_leads, len(t)))
    return wander + hum[None, :] + white
