"""The stage layer: one module per notebook, the only place that orchestrates.

``setup`` (00), ``data`` (01), ``baselines`` (02), ``profiles`` (03), ``rta`` (04), ``ppr`` (05),
``evaluate`` (06), ``sweeps`` and ``figures`` (07), and ``seeds`` (the seed repeat outside the chain).
Each ``run_*`` reads earlier artifacts, writes its own and returns tables; the CLIs
(``python -m recrepro.stages.rta``, ``.ppr``, ``.sweeps``, ``.seeds``) run the same functions. The
library below never imports this package.

Importing the package quiets the known, harmless warnings (:func:`recrepro.quiet.quiet_known_warnings`)
before the stage modules import transformers: tqdm's "IProgress not found" fires at that import, before
any entry point runs. The ``run_*`` entry points (:func:`recrepro.progress.stage_entry`) then send their
output to the stage's log file when the chain runner set one, and report progress with an ETA.
"""

from recrepro.quiet import quiet_known_warnings

quiet_known_warnings()
