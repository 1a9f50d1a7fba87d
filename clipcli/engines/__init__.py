"""Engines decide where decoding and encoding run: `local` (this process: torch DataLoader workers or
decode threads, see `batches` and `pipeline`) or `ray` (a Ray cluster, see `engines.ray`).  Both yield
the same (items, features) batches in input order, from the same decode function, to the same scorers."""

ENV_ENGINE = "CLIPCLI_ENGINE"


def default_engine() -> str:
    import os

    return os.environ.get(ENV_ENGINE) or "local"
