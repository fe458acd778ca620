"""Helpers of the config tests: a YAML file from text, and an error that names a dotted key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def _raises_naming(key: str):
    """ValueError whose message names `key` as a whole dotted key (not as part of a longer one)."""
    return pytest.raises(ValueError, match=rf"(?<![\w.]){re.escape(key)}(?![\w])")
