"""The service's view of the schemas, which live in `edgetune.schemas` (shared with the client,
so a pipeline never imports the top-level `app` package, a name many projects use)."""

from edgetune.schemas import *  # noqa: F403
from edgetune.schemas import __all__ as __all__
