from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_pipe():
    import sdm
    return sdm.load_pipeline("tiny-sdm", FIXTURES)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
