"""Profiling a torch model into a manifest: the probe gain model (``probe.py``, the default) and the
first-order signals (``profiler.py``). Needs the torch extra; the solve path never imports this package."""

from __future__ import annotations

from ..errors import LayerlensError


def profile_manifest(model_spec: str, data_path: str, signal: str = "probe", *, kind_pattern=(), block_pattern=None, progress=True,
                     probe_steps=100, probe_rank=4, probe_lr=2e-3, held_out=512, interactions=True, probe_values="leave-one-out",
                     probe_masks=256, batches=8, batch_size=32, seed=0, device="cpu", head_steps=100):
    """The :class:`~layerlens_opt.manifest.Manifest` of ``profile --signal SIGNAL`` (what is written must read back:
    it is parsed once, here; :func:`layerlens_opt.manifest.save_manifest` writes it)."""
    try:
        from .probe import ProbeConfig, probe
        from .profiler import ProfileConfig, profile
    except ImportError as exc:
        raise LayerlensError(f"profiling needs torch ({exc.name} is missing): pip install torch==2.13.0 && pip install -e '.[torch]'") from None
    from ..manifest import parse_manifest
    from ..naming import parse_block_pattern, parse_kind_patterns
    from .dist import finish, init_from_env, world

    init_from_env(device)  # under torchrun: join the process group; each rank profiles its share of the data
    rank, size = world()
    if size > 1 and batch_size < size:
        raise LayerlensError(f"--batch-size {batch_size} is smaller than the {size} processes sharing each batch; raise it")

    naming = dict(kind_patterns=parse_kind_patterns(kind_pattern), block_pattern=parse_block_pattern(block_pattern), progress=progress)
    if signal == "probe":
        config = ProbeConfig(steps=probe_steps, rank=probe_rank, lr=probe_lr, batch_size=batch_size, held_out=held_out,
                             interactions=interactions, values=probe_values, masks=probe_masks, seed=seed, device=device, **naming)
        manifest = probe(model_spec, data_path, config)
    elif signal == "first-order":
        config = ProfileConfig(batches=batches, batch_size=batch_size, seed=seed, device=device, head_steps=head_steps, **naming)
        manifest = profile(model_spec, data_path, config)
    else:
        raise LayerlensError(f"unknown signal {signal!r}; use probe or first-order")
    if size > 1:
        manifest["model"]["processes"] = size
        finish()
    return parse_manifest(manifest, source="profiled manifest")


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
