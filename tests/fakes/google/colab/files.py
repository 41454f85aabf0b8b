"""Stand-in for ``google.colab.files``: download() records its calls in $PRODESC_FAKE_DOWNLOADS."""

from __future__ import annotations

import json
import os

DOWNLOADS_ENV = "PRODESC_FAKE_DOWNLOADS"


def download(filename: str) -> None:
    """Append ``{"path": absolute path, "bytes": size}`` to $PRODESC_FAKE_DOWNLOADS (JSON lines)."""
    if not os.path.exists(filename):
        raise FileNotFoundError(f"Cannot find file: {filename}")
    record = {"path": os.path.abspath(filename), "bytes": os.path.getsize(filename)}
    with open(os.environ[DOWNLOADS_ENV], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
