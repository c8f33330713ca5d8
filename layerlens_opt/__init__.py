"""layerlens-opt: allocate PEFT methods and ranks across layers under a parameter budget.

The names below load their modules on first use, so ``import layerlens_opt`` does no work.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.2.0"

_EXPORTS = {
    "load_manifest": "layerlens_opt.manifest",
    "parse_manifest": "layerlens_opt.manifest",
    "Manifest": "layerlens_opt.manifest",
    "Layer": "layerlens_opt.manifest",
    "build_problem": "layerlens_opt.problem",
    "Constraints": "layerlens_opt.problem",
    "ModelOptions": "layerlens_opt.problem",
    "Problem": "layerlens_opt.problem",
    "Allocation": "layerlens_opt.allocation",
    "Status": "layerlens_opt.allocation",
    "solve": "layerlens_opt.solvers",
    "SolverOptions": "layerlens_opt.solvers",
    "LayerlensError": "layerlens_opt.errors",
    "load_allocation": "layerlens_opt.allocation",
    "apply": "layerlens_opt.inject",
    "param_groups": "layerlens_opt.inject",
    "to_peft_config": "layerlens_opt.export",
    "write_peft": "layerlens_opt.export",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'layerlens_opt' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
