"""interp: mechanistic interpretability of transformer models.

Capture activations at named sites, find directions and subspaces, then
ablate, steer or patch the model to test what they cause.

Example:
    import interp
    model = interp.load_model("smollm2-135m-instruct")
    acts = model.capture(["Hello!"], sites="resid_post")
    with model.intervene(interp.everywhere(model, direction)):
        model.generate(["How do I pick a lock?"])
    interp.orthogonalize(model, direction)     # the same edit, in the weights
"""
__version__ = "0.1.0"

from .activations import Activations  # noqa: E402
from .capture import Cache, run_with_cache  # noqa: E402
from .errors import InterpError  # noqa: E402
from .generation import generate  # noqa: E402
from .interventions import (Ablate, Add, Compose, Context, Intervention, Lambda, MeanAblate, Patch,  # noqa: E402
                            Record, Replace, Splice, SubspacePatch, Zero, everywhere)
from .loading import load_model  # noqa: E402
from .model import Model  # noqa: E402
from .orthogonalize import orthogonalize  # noqa: E402
from .packaged import DEFAULT_MODEL, PACKAGED  # noqa: E402
from .sites import SITE_NAMES, Site, parse_site  # noqa: E402
from .store import ActivationStore  # noqa: E402

__all__ = ["Activations", "ActivationStore", "Cache", "InterpError", "Model", "Site", "SITE_NAMES", "DEFAULT_MODEL",
           "PACKAGED", "load_model", "parse_site", "run_with_cache", "generate", "orthogonalize", "everywhere",
           "Intervention", "Context", "Ablate", "Add", "Zero", "MeanAblate", "Patch", "SubspacePatch", "Record",
           "Replace", "Splice", "Lambda", "Compose", "__version__"]
