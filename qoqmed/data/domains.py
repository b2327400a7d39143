"""Domain names: the built-in clinical domains, the folder names other collections use for them, and user domains.

A row's domain is the group DRPO balances and the unit of every per-domain metric. qoqmed knows nine clinical
domains (:data:`DOMAINS`); the released QoQ-Med data and CLIMB name some of them differently in their folder names
(``derm/``, ``mammo/``, ``xray/``, in upper or lower case), and those names map to the built-in ones through
:data:`DOMAIN_ALIASES`. Any other well-formed name (``oct``, ``dental``) is a *user domain*: it is kept, lower-cased,
and trained and evaluated like the built-in ones, because DRPO works on any grouping key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["DOMAINS", "DOMAIN_ALIASES", "DOMAIN_NAME_RULE", "canonical_domain", "is_user_domain"]

DOMAINS: tuple[str, ...] = (
    "ecg",
    "chest_xray",
    "mammography",
    "dermoscopy",
    "fundus",
    "pathology",
    "ct",
    "ultrasound",
    "mri",
)

# Folder names used for modalities in the released QoQ-Med data, CLIMB and other collections -> qoqmed domains.
# Keys are lower case; names are matched case-insensitively (the released tables write DERM/HAM10000, MAMMO/CBIS).
DOMAIN_ALIASES: Mapping[str, str] = MappingProxyType({
    **{d: d for d in DOMAINS},
    "xray": "chest_xray", "x-ray": "chest_xray", "cxr": "chest_xray", "chestxray": "chest_xray",
    "chest-xray": "chest_xray", "chest_x-ray": "chest_xray",
    "mammo": "mammography", "mammogram": "mammography",
    "derm": "dermoscopy", "dermatology": "dermoscopy", "skin": "dermoscopy",
    "retina": "fundus", "ophthalmology": "fundus",
    "histopathology": "pathology", "histology": "pathology",
    "us": "ultrasound", "echo": "ultrasound",
    "mr": "mri",
    "ekg": "ecg",
})

_NAME = re.compile(r"[a-z0-9][a-z0-9_.+-]{0,63}")
DOMAIN_NAME_RULE = ("a domain name is 1-64 characters: letters, digits, '_', '.', '+' or '-', starting with a "
                    "letter or digit")


def canonical_domain(name: str) -> str | None:
    """The domain a name stands for: a built-in domain for itself or an alias (any case), else the name in lower
    case as a user domain; None when the name breaks :data:`DOMAIN_NAME_RULE` (spaces, slashes, empty...)."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key in DOMAIN_ALIASES:
        return DOMAIN_ALIASES[key]
    return key if _NAME.fullmatch(key) else None


def is_user_domain(domain: str) -> bool:
    """Whether a (canonical) domain is not one of the built-in :data:`DOMAINS`."""
    return domain not in DOMAINS
