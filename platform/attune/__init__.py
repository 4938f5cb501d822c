"""attune: learn and serve personalized loan-servicing rankings on Ray."""

from attune.data.spec import FeatureSpec
from attune.errors import AttuneError
from attune.registry import Registry

__all__ = ["AttuneError", "FeatureSpec", "Registry"]
__version__ = "0.1.0"
