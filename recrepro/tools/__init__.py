"""The agent's evidence: seven recommendation tools (PAPER.md 1.3) and the user profiles behind one.

Layout:

* :mod:`~recrepro.tools.registry`: the one definition of every tool (name, description, arguments,
  implementation); JSON schemas and the :class:`ToolMethods` mixin are generated from it;
* :mod:`~recrepro.tools.toolkit`: :class:`ToolKit` (indexes built once per dataset) and
  :class:`InstanceTools` (the tools bound to one instance; ``call`` never raises);
* :mod:`~recrepro.tools.impl`: the seven implementations and their text formats;
* :mod:`~recrepro.tools.space`: the SASRec embedding space, item neighbours, user snapshots;
* :mod:`~recrepro.tools.resolve`: turning a name the model wrote into an item;
* :mod:`~recrepro.tools.profiles`: template and LLM profile generators, the cache, and the stage
  function :func:`run_user_profiles` (notebook 03).
"""

from recrepro.tools.base import ERROR_KINDS, Instance, ToolError, ToolResult
from recrepro.tools.registry import TOOL_NAMES, TOOL_SPECS, TOOLS, ToolMethods, ToolSpec, tool_schemas
from recrepro.tools.space import EmbeddingSpace, load_embedding_space, mean_pooling_space, snapshot_grid, space_from_scorer
from recrepro.tools.toolkit import InstanceTools, ToolKit

__all__ = [
    "ERROR_KINDS", "TOOL_NAMES", "TOOL_SPECS", "TOOLS", "EmbeddingSpace", "Instance", "InstanceTools",
    "ToolError", "ToolKit", "ToolMethods", "ToolResult", "ToolSpec", "load_embedding_space",
    "mean_pooling_space", "snapshot_grid", "space_from_scorer", "tool_schemas",
]
