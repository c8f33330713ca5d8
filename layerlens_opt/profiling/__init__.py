"""Profiling a torch model into a manifest, one file per signal: the all-method probe (``method_probe.py``, the
default ``probe``), the LoRA-only probe (``probe.py``, ``lora-probe``) and the first-order signals (``profiler.py``).
Needs the torch extra; the solve path never imports this package."""

from __future__ import annotations

from ..errors import LayerlensError


SIGNALS = ("probe", "lora-probe", "first-order")

#: tokens kept per row of a causal LM's data by default (a classifier keeps 64)
CAUSAL_MAX_LENGTH = 256


def profile_manifest(model_spec: str, data_path: str, signal: str = "probe", *, kind_pattern=(), block_pattern=None, progress=True,
                     probe_steps=None, probe_rank=4, probe_lr=2e-3, method_lrs=None, probe_methods=None, probe_estimate="gradient",
                     probe_shrink=None, probe_fidelity=False, held_out=None, interactions=None, probe_values="leave-one-out",
                     probe_masks=256, batches=8, batch_size=32, seed=0, device="cpu", head_steps=100, objective="auto",
                     dtype="float32", max_length=None):
    """The :class:`~layerlens_opt.manifest.Manifest` of ``profile --signal SIGNAL`` (what is written must read back:
    it is parsed once, here; :func:`layerlens_opt.manifest.save_manifest` writes it).

    ``probe_steps``, ``held_out`` and ``interactions`` left None take each signal's default: the all-method probe
    trains until its held-out loss stops improving within 125 steps, holds out a fifth of the rows (100 to 512) and
    measures no pair terms; the LoRA-only probe trains 100 steps, holds out 512 rows and measures pair terms."""
    try:
        from .method_probe import MethodProbeConfig, method_probe
        from .probe import ProbeConfig, probe
        from .profiler import ProfileConfig, profile
    except ImportError as exc:
        raise LayerlensError(f"profiling needs torch ({exc.name} is missing): pip install torch==2.13.0 && pip install -e '.[profile]'") from None
    from ..manifest import parse_manifest
    from ..naming import parse_block_pattern, parse_kind_patterns
    from .dist import finish, init_from_env, world

    init_from_env(device)  # under torchrun: join the process group; each rank profiles its share of the data
    rank, size = world()
    if size > 1 and batch_size < size:
        raise LayerlensError(f"--batch-size {batch_size} is smaller than the {size} processes sharing each batch; raise it")

    if signal != "probe" and (method_lrs or probe_methods or probe_shrink is not None):
        raise LayerlensError(f"--method-lr, --probe-methods and --probe-shrink set only the default --signal probe, not --signal "
                             f"{signal}; drop them or use --signal probe")
    naming = dict(kind_patterns=parse_kind_patterns(kind_pattern), block_pattern=parse_block_pattern(block_pattern), progress=progress)
    from .objective import is_causal

    causal = is_causal(model_spec, objective)
    shape = dict(objective=objective, dtype=dtype, max_length=max_length or (CAUSAL_MAX_LENGTH if causal else 64))
    if dtype != "float32" and not causal:
        raise LayerlensError(f"--dtype {dtype} is for causal language models; a classification profile runs in float32")
    if signal == "probe":
        extra = {"methods": tuple(probe_methods)} if probe_methods else {}
        if probe_shrink is not None:
            if probe_shrink and probe_estimate != "gradient":
                raise LayerlensError("--probe-shrink needs --probe-estimate gradient: the values' noise is measured from its "
                                     "held-out chunks; drop --probe-shrink or use the gradient estimate")
            extra["shrink"] = probe_shrink
        config = MethodProbeConfig(max_steps=probe_steps or MethodProbeConfig.max_steps, rank=probe_rank, lr=probe_lr,
                                   lrs=dict(method_lrs or {}), batch_size=batch_size, held_out=held_out, estimate=probe_estimate,
                                   fidelity=probe_fidelity, interactions=bool(interactions), seed=seed, device=device, **extra, **naming,
                                   **shape)
        manifest = method_probe(model_spec, data_path, config)
    elif signal == "lora-probe":
        config = ProbeConfig(steps=probe_steps or 100, rank=probe_rank, lr=probe_lr, batch_size=batch_size,
                             held_out=held_out, interactions=interactions is not False, values=probe_values,
                             masks=probe_masks, seed=seed, device=device, **naming, **shape)
        manifest = probe(model_spec, data_path, config)
    elif signal == "first-order":
        config = ProfileConfig(batches=batches, batch_size=batch_size, seed=seed, device=device, head_steps=head_steps,
                               **shape, **naming)
        manifest = profile(model_spec, data_path, config)
    else:
        raise LayerlensError(f"unknown signal {signal!r}; use one of {', '.join(SIGNALS)}")
    if size > 1:
        manifest["model"]["processes"] = size
        finish()
    return parse_manifest(manifest, source="profiled manifest")


def parse_method_lrs(items) -> dict[str, float]:
    """``("ia3=0.03", "prefix=1e-2")`` -> ``{"ia3": 0.03, "prefix": 0.01}``; a malformed item names itself and the form."""
    import math

    out: dict[str, float] = {}
    for item in items or ():
        method, sep, value = str(item).partition("=")
        method = method.strip()
        try:
            lr = float(value) if sep else float("nan")
        except ValueError:
            lr = float("nan")
        if not method or not (math.isfinite(lr) and lr > 0):
            raise LayerlensError(f"--method-lr {item!r}: write METHOD=LR with a positive rate, e.g. --method-lr ia3=0.03")
        out[method] = lr
    return out


def parse_methods(text: str) -> tuple[str, ...]:
    """``"lora, ia3"`` -> ``("lora", "ia3")`` (the probe checks that it can measure them)."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods:
        raise LayerlensError(f"--probe-methods {text!r}: name at least one method, e.g. --probe-methods lora,ia3")
    return methods


def is_main() -> bool:
    """True on the process that writes (rank 0, or the only process)."""
    from .dist import is_main as main_rank

    return main_rank()


def summary(manifest, signal: str) -> str:
    """'profiled 36 layers (attention 24, mlp 12) of NAME (probe) in 12.3 s' for a profiled Manifest."""
    kinds: dict[str, int] = {}
    for layer in manifest.layers:
        kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
    return (f"profiled {len(manifest.layers)} layers ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) "
            f"of {manifest.model['name']} ({signal}) in {manifest.model['seconds']:.1f} s")
