"""Test stand-in for Colab's ``google.colab`` (see tests/fakes/README.md); not the real package."""
