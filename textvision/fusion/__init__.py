"""Fusion variants injecting the instruction into every ViT block.

Importing this package imports every module in it, so a variant file dropped here registers its
short name (``@register_fusion``) with no other edit; :data:`FusionName` is the set of those
names, the type the encoder's ``fusion`` argument accepts beside a class path.
"""

import importlib
import pkgutil
from typing import Literal

from textvision.fusion.adapter_xattn import AdapterCrossAttention
from textvision.fusion.base import (
    FUSIONS,
    Fusion,
    FusionFactory,
    FusionFlops,
    FusionOutput,
    attention_flops,
    register_fusion,
    resolve_fusion,
)
from textvision.fusion.film import FiLMFusion
from textvision.fusion.gated_xattn import GatedCrossAttention
from textvision.fusion.mutual import MutualAttentionFusion
from textvision.fusion.none import NoFusion

# the variant files not named above (a new one needs no edit here)
for _module in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)

# Built after every module above has registered: jsonargparse checks a short name against it at
# parse time and names the choices when one is unknown.
FusionName = Literal[tuple(sorted(FUSIONS))]  # type: ignore[valid-type]

__all__ = [
    "FUSIONS",
    "AdapterCrossAttention",
    "FiLMFusion",
    "Fusion",
    "FusionFactory",
    "FusionFlops",
    "FusionName",
    "FusionOutput",
    "GatedCrossAttention",
    "MutualAttentionFusion",
    "NoFusion",
    "attention_flops",
    "register_fusion",
    "resolve_fusion",
]
