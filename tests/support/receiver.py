"""The example backend of examples/backend, loaded as a team would copy it:
a file of its own, not part of the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

RECEIVER = Path(__file__).resolve().parents[2] / "examples" / "backend" / "receiver.py"


def load_receiver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_receiver", RECEIVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
