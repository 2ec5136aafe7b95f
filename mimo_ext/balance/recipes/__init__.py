"""Benchmark recipes: the field's audio-visual data sets in the layouts their public code prepares (CREMA-D,
Kinetics-Sounds, AVE, AV-MNIST), the literature's networks and published training settings, and every balancing
method trained on them under identical settings.

``python -m mimo_ext.balance.recipes NAME --root DIR`` (NAME in :data:`RECIPES`) prints the main command's tables
with the MIMO paper's number beside them; ``docs/benchmarks.md`` says how to prepare each data set.
"""

from .ave import RECIPE as AVE
from .avmnist import RECIPE as AVMNIST
from .cremad import RECIPE as CREMAD
from .kinetics_sounds import RECIPE as KINETICS_SOUNDS
from .layout import LayoutError
from .recipe import Recipe
from .runner import RunConfig, run_recipe

__all__ = ["RECIPES", "LayoutError", "Recipe", "RunConfig", "run_recipe"]

RECIPES: dict[str, Recipe] = {r.name: r for r in (CREMAD, KINETICS_SOUNDS, AVE, AVMNIST)}
