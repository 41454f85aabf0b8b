"""The Hugging Face token: from the environment or Colab's secrets, never from the config.

Gated models (Llama) need a token to download. It is read from exactly two places:

1. the environment variable ``HF_TOKEN`` (``export HF_TOKEN=...``, or in a Colab cell
   ``os.environ["HF_TOKEN"] = userdata.get("HF_TOKEN")`` before the ``!python`` cells);
2. Colab's secrets (the key icon, a secret named ``HF_TOKEN``) through
   ``google.colab.userdata.get``, when running in Colab. That call only works inside the notebook's
   kernel; in a ``!python`` subprocess it fails, which is ignored.

There is no config key for it, so it can never land in config.yaml, a manifest or a log. When it
comes from Colab's secrets it is put into this process's ``HF_TOKEN`` (where huggingface_hub looks
for it), nowhere else; only its source is ever reported, never its value.
"""

from __future__ import annotations

import os

from prodesc.paths import in_colab

TOKEN_ENV = "HF_TOKEN"


def colab_secret(name: str = TOKEN_ENV) -> str | None:
    """``google.colab.userdata.get(name)``, or None outside Colab or when it is missing or refused."""
    if not in_colab():
        return None
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        value = userdata.get(name)
    except Exception:  # absent, not granted, or not in the notebook's kernel: no token
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


def hf_token() -> tuple[str | None, str]:
    """(token, where it came from): ``$HF_TOKEN``, then Colab's secrets; (None, "none") otherwise."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return value, f"${TOKEN_ENV}"
    value = colab_secret()
    if value:
        return value, "Colab secrets"
    return None, "none"


def export_hf_token() -> str:
    """Make the token visible to huggingface_hub in this process; return its source (not its value)."""
    value, source = hf_token()
    if value and source != f"${TOKEN_ENV}":
        os.environ[TOKEN_ENV] = value
    return source
