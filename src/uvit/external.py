"""Files given from outside the pipeline (params.yaml names them): reference statistics, a pretrained
autoencoder, the authors' released weights. Each is checked and stored as a pipeline artifact (DVC hashes it)."""

from __future__ import annotations

from pathlib import Path

from uvit.config import resolve_experiment
from uvit.errors import UserError

KINDS = ("reference", "autoencoder", "weights")


def import_external(
    kind: str,
    source: Path,
    out: Path,
    params: dict,
    key: str,
    protocol: str = "clean",
    experiment: str | None = None,
) -> None:
    """Check `source` (named by params.yaml's `key`) as a `kind` and store it at `out`."""
    if not source.exists():
        raise UserError(f"{source}: not found; set {key} in params.yaml to the {kind} file")
    if kind == "reference":
        from uvit.fid import import_statistics

        import_statistics(source, out, protocol)
    elif kind == "autoencoder":
        from uvit.autoencoder import import_autoencoder

        import_autoencoder(source, out)
    else:
        from uvit.sampling import import_weights

        out.parent.mkdir(parents=True, exist_ok=True)
        name = experiment or (key.split(".")[1] if key.startswith("experiments.") else None)
        if name is None:
            raise UserError(f"{key}: cannot tell which experiment the weights are for; give --experiment")
        import_weights(source, out, params, resolve_experiment(params, name))
