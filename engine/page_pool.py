"""Free-page bookkeeping for the paged KV cache (pure Python, no torch).

Page 0 is reserved as a scratch page (padding slots of captured CUDA graphs write there) and is
never handed out, so ``num_total`` counts the allocatable pages ``1 .. num_pages - 1``.
"""

from __future__ import annotations


class OutOfPagesError(RuntimeError):
    """Raised when an allocation asks for more pages than are free; the pool is unchanged."""


class PagePool:
    """A LIFO free list: freed pages are reused first (warm in caches), ids are deterministic."""

    SCRATCH_PAGE = 0

    def __init__(self, num_pages: int, page_size: int) -> None:
        assert num_pages >= 2, "need at least one allocatable page besides the scratch page"
        assert page_size >= 1, "page_size must be positive"
        self.num_pages = num_pages
        self.page_size = page_size
        # Stack with page 1 on top so a fresh pool hands out 1, 2, 3, ...
        self._free: list[int] = list(range(num_pages - 1, 0, -1))
        self._is_free = [False] + [True] * (num_pages - 1)

    @property
    def num_total(self) -> int:
        return self.num_pages - 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    def pages_for(self, num_tokens: int) -> int:
        """Pages needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.page_size)

    def allocate(self, num: int) -> list[int]:
        if num > len(self._free):
            raise OutOfPagesError(f"asked for {num} pages, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(num)]
        for page in pages:
            self._is_free[page] = False
        return pages

    def free(self, pages: list[int]) -> None:
        for page in reversed(pages):
            assert 0 < page < self.num_pages, f"page {page} out of range"
            assert not self._is_free[page], f"page {page} freed twice"
            self._is_free[page] = True
            self._free.append(page)

    def is_free(self, page: int) -> bool:
        return self._is_free[page]
