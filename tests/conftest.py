"""Shared test setup."""

from collections.abc import Iterator

import faiss
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    # Small models with 2 intra-op threads crawl when the other core is busy (CI shares it).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def one_faiss_thread() -> Iterator[None]:
    # FAISS's OpenMP threads contend with torch's on the two cores the same way.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(autouse=True)
def torch_threads_restored() -> Iterator[None]:
    # `emit ...` run through cli.main sets torch's threads (to the cores, without --threads):
    # a test must not leave that to the tests after it, whose float results can depend on it.
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
