"""Adding a method is one catalog entry plus one injector: a toy method is solved, validated, exported and applied."""

import pytest

from layerlens_opt.allocation import Allocation

from layerlens_opt import methods as catalog
from layerlens_opt.export import others_than_lora
from layerlens_opt.integrity import integrity_failures
from layerlens_opt.manifest import parse_manifest
from layerlens_opt.problem import Constraints, ModelOptions, build_problem
from layerlens_opt.solvers import solve

from conftest import layer, manifest


@pytest.fixture
def toy_method():
    """'scale_shift': a learned scale and shift per output and a rank-r bias table; cost d_out * 2 + r."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from layerlens_opt import inject

    spec = catalog.register_method(catalog.MethodSpec(
        "scale_shift", efficiency=0.5, half_rank=2.0, fits=frozenset({"attention", "mlp"}), ranked=True,
        cost=lambda r, d_in, d_out: 2 * d_out + r, rank_cap=lambda d_in, d_out: 4, color="#123456"))

    class ScaleShift(nn.Module):
        def __init__(self, base, rank):
            super().__init__()
            self.wrapped = base
            d_out = base.out_features
            self.scale = nn.Parameter(torch.ones(d_out))
            self.shift = nn.Parameter(torch.zeros(d_out))
            self.table = nn.Parameter(torch.zeros(rank))

        def forward(self, x):
            return self.wrapped(x) * self.scale + self.shift + self.table.sum()

    inject.register_injector("scale_shift", lambda model, name, base, rank, alpha, modules: (name, ScaleShift(base, rank)))
    yield spec
    del catalog.METHODS["scale_shift"]
    catalog.METHOD_NAMES.remove("scale_shift")
    del inject.INJECTORS["scale_shift"]


def test_a_toy_method_solves_validates_exports_and_applies(toy_method):
    import torch

    from layerlens_opt import apply
    from tiny_models import TinyEncoder

    model = TinyEncoder(dim=16, blocks=2)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    layers = [layer(n, "attention" if "attn" in n else "mlp", m.in_features, m.out_features, block=int(n.split(".")[1]), ge=1 + i)
              for i, (n, m) in enumerate((n, model.get_submodule(n)) for n in names)]
    m = parse_manifest(manifest(layers))
    assert catalog.param_cost("scale_shift", 3, 16, 32) == 67 and catalog.default_ranks("scale_shift", 16, 32) == (1, 2, 4)
    problem = build_problem(m, Constraints(600, 0.5, 1.0), ModelOptions(methods=("scale_shift", "lora", "none")))
    alloc = solve(problem, "auto")
    assert alloc.status.value == "optimal"
    cbc = solve(problem, "cbc")
    assert cbc.objective == pytest.approx(alloc.objective, rel=1e-9)
    used = {l.method for l in alloc.layers}
    assert "scale_shift" in used, used
    assert integrity_failures(alloc, m) == []
    assert others_than_lora(alloc).get("scale_shift") == sum(1 for l in alloc.layers if l.method == "scale_shift")
    added = apply(model, alloc.to_dict())  # a `solve --json` object works as well as the Allocation
    assert added == alloc.total_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    data = alloc.to_dict()
    tampered = dict(data, layers=[dict(l, rank=5) if l["method"] == "scale_shift" else l for l in data["layers"]])
    assert any("at most 4" in f for f in integrity_failures(Allocation.from_dict(tampered), m))


def test_registering_twice_or_injecting_an_unknown_method_is_refused():
    from layerlens_opt import inject

    with pytest.raises(ValueError, match="already registered"):
        catalog.register_method(catalog.MethodSpec("lora", 1.0, 8.0, frozenset({"mlp"}), ranked=True))
    with pytest.raises(ValueError, match="before its injector"):
        inject.register_injector("not_a_method", lambda *a: None)


def test_no_method_name_comparisons_outside_the_catalog_and_injectors():
    """The solve, report, validation and export code read the catalog, not method-name strings."""
    import re
    from pathlib import Path

    root = Path(catalog.__file__).resolve().parent
    files = [p for p in list(root.glob("*.py")) + list((root.parent / "solvers").glob("*.py"))
             if p.name not in ("methods.py", "inject.py", "train_bench.py", "bench.py", "generate.py", "tasks.py")]
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?["'](lora|adapter|prefix|ia3)["']|["'](lora|adapter|prefix|ia3)["']\s*(==|!=)""")
    hits = [f"{p.name}:{i}: {line.strip()}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
