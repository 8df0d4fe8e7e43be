"""Known, harmless warnings and the libraries' own progress bars, silenced in one place.

:func:`quiet_known_warnings` is called when :mod:`recrepro.stages` is imported (tqdm's warning fires
as transformers is first imported, before any entry point runs) and again by every stage entry point
(:func:`recrepro.progress.stage_entry`). Each filter matches one message from its start (a regular
expression) and its category, so every other warning still shows; :data:`KNOWN_WARNINGS` says where
each comes from and why it is harmless. The kit reports its own progress (:mod:`recrepro.progress`),
so the libraries' tqdm bars ("Loading weights", "Writing model shards", "Building labels for train
dataset"), which filled the executed notebooks, are switched off unless the user set the libraries'
own switches (``HF_HUB_DISABLE_PROGRESS_BARS``, ``HF_DATASETS_DISABLE_PROGRESS_BARS``).

Output only: nothing here changes what is computed.
"""

from __future__ import annotations

import os
import sys
import warnings

from tqdm import TqdmWarning

# (message regex, category, where it comes from and why it is harmless)
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"IProgress not found\. Please update jupyter and ipywidgets", TqdmWarning,
     "tqdm.auto imported in a Jupyter kernel without ipywidgets (papermill's kernels): tqdm falls back to "
     "text bars, and the kit reports progress itself"),
    (r"You are using 'environment_factory', which is an experimental feature", UserWarning,
     "TRL 1.16's GRPOTrainer, once per trainer (six times in notebook 04): the kit pins that TRL version and "
     "tests its tool loop (tests/unit/test_rta.py); the jobs set TRL_EXPERIMENTAL_SILENCE=1 for the same reason"),
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning,
     "transformers 5.23 renamed the property that TRL 1.16's unwrap_model_for_generation reads at every "
     "generation; the old name still returns is_activation_checkpointing"),
    (r"`gradient_checkpointing(_kwargs)?` is deprecated and will be removed in v6", FutureWarning,
     "transformers 5.23's TrainingArguments when TRL's SFTConfig default sets the old field name; the value is "
     "copied onto activation_checkpointing, so the setting still applies"),
)

# Environment switches the libraries read once, at import; set only when the user has not set them.
PROGRESS_BAR_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


def quiet_known_warnings() -> None:
    """Ignore :data:`KNOWN_WARNINGS` and switch the libraries' progress bars off (idempotent)."""
    for message, category, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)  # re-adding replaces, never piles up
    for name in PROGRESS_BAR_SWITCHES:
        os.environ.setdefault(name, "1")
    # Libraries imported before this call read the switches already; tell them directly.
    transformers = sys.modules.get("transformers")
    if transformers is not None and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        transformers.utils.logging.disable_progress_bar()
    datasets = sys.modules.get("datasets")
    if datasets is not None and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        datasets.disable_progress_bars()
