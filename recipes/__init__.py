"""lmtune's recipes: each file is one workflow on fairseq2's recipe runtime.

Installed as ``lmtune.recipes`` (see pyproject.toml), so no generic top-level
``recipes`` module lands on users' import path.
"""
