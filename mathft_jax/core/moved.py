"""Where modules lived before the package was split into layer folders, and the alias that
keeps those names importable.

Finished run directories record functions by module path (`provenance.stable_repr`:
"@mathft_jax.objectives.lm_objective"), and users' scripts import the old names. `install`
(run by `import mathft_jax`) makes `import mathft_jax.objectives` give the module that now
lives at `mathft_jax.training.objectives` (the same module object, not a copy), and
`current_name` rewrites a recorded path to today's, so the rerun check of a run made before
the move still passes. `mathft_jax.scoring` is not aliased: it is now the package of
`scoring.evaluator` (the old `scoring` module), `likelihood` and `reference`.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import re
import sys

MOVED = {
    "mathft_jax.storage": "mathft_jax.core.storage",
    "mathft_jax.atomic": "mathft_jax.core.atomic",
    "mathft_jax.settings": "mathft_jax.core.settings",
    "mathft_jax.preemption": "mathft_jax.core.preemption",
    "mathft_jax.parallel": "mathft_jax.core.pool",
    "mathft_jax.distributed": "mathft_jax.core.distributed",
    "mathft_jax.provenance": "mathft_jax.core.provenance",
    "mathft_jax.metrics_writer": "mathft_jax.core.metrics_writer",
    "mathft_jax.user_errors": "mathft_jax.core.errors",
    "mathft_jax.cli_errors": "mathft_jax.core.cli_errors",
    "mathft_jax.entry": "mathft_jax.core.entry",
    "mathft_jax.gin_utils": "mathft_jax.core.gin_utils",
    "mathft_jax.partitioning": "mathft_jax.models.partitioning",
    "mathft_jax.trainer": "mathft_jax.training.trainer",
    "mathft_jax.objectives": "mathft_jax.training.objectives",
    "mathft_jax.losses": "mathft_jax.training.losses",
    "mathft_jax.fused_loss": "mathft_jax.training.fused_loss",
    "mathft_jax.optim": "mathft_jax.training.optim",
    "mathft_jax.hardware": "mathft_jax.training.hardware",
    "mathft_jax.batching": "mathft_jax.sampling.batching",
    "mathft_jax.decoding": "mathft_jax.sampling.decoding",
    "mathft_jax.engine": "mathft_jax.sampling.engine",
    "mathft_jax.likelihood": "mathft_jax.scoring.likelihood",
    "mathft_jax.preferences": "mathft_jax.scoring.reference",
    "mathft_jax.candidates": "mathft_jax.results.candidates",
    "mathft_jax.voting": "mathft_jax.results.voting",
    "mathft_jax.diagnostics": "mathft_jax.results.diagnostics",
    "mathft_jax.report": "mathft_jax.results.report",
    "mathft_jax.checkpoints": "mathft_jax.convert.checkpoints",
    "mathft_jax.model_files": "mathft_jax.convert.model_files",
}
_RECORDED = re.compile(r"\b(" + "|".join(re.escape(old) for old in MOVED) + r")(?=\.)")


def current_name(text: str) -> str:
    """A recorded dotted path ("@mathft_jax.objectives.lm_objective") with its module renamed
    to where it lives now; text naming no moved module comes back unchanged."""
    return _RECORDED.sub(lambda m: MOVED[m.group(1)], text)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import an old module name as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder; exec_module swaps the real module in

    def exec_module(self, module):
        # The import system reads the module back from sys.modules after this call, so the
        # old name ends up bound to the new module itself.
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
