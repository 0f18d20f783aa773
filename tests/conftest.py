"""Shared test helpers: where the repository and ../shared live, and skips when data is absent."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BABYLLAMA_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))  # the top-level scripts (model.py, export.py, ...) are modules too

AIDREAMS = SHARED / "models" / "aidreams260K"
TINYSTORIES = SHARED / "data" / "tinystories"
META_TOKENIZER = SHARED / "tokenizers" / "llama2" / "tokenizer.model"


def need(path: Path) -> Path:
    """Return path, or skip the test with a reason saying what is missing."""
    if not path.exists():
        pytest.skip(f"{path} is absent (it lives in ../shared, next to the repository; "
                    f"set BABYLLAMA_SHARED to point elsewhere)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: tiny models run faster so, and the cores are shared.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_stories(path: Path, n_stories: int) -> Path:
    """Write the first n_stories of the shared TinyStories text to path (native .txt layout)."""
    src = need(TINYSTORIES / "TinyStories-train.head.txt")
    lines, n = [], 0
    with open(src, encoding="utf-8") as f:
        for line in f:
            lines.append(line)
            n += line.strip() == "<|endoftext|>"
            if n >= n_stories:
                break
    path.write_text("".join(lines), encoding="utf-8")
    return path
