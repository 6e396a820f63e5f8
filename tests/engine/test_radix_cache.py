"""Radix cache and page pool: exact page ids, partial pages, locks and LRU eviction order."""

from __future__ import annotations

import pytest

from engine.page_pool import OutOfPagesError, PagePool
from engine.radix_cache import RANK_IDLE, RANK_PINNED, RadixCache

PS = 4


def test_pool_hands_out_ascending_ids_and_reuses_freed_pages_first():
    pool = PagePool(num_pages=6, page_size=PS)
    assert pool.num_total == 5
    assert pool.allocate(3) == [1, 2, 3]
    pool.free([2])
    assert pool.allocate(2) == [2, 4]
    with pytest.raises(OutOfPagesError):
        pool.allocate(2)
    assert pool.num_free == 1
    with pytest.raises(AssertionError, match="freed twice"):
        pool.free([5])
    assert pool.pages_for(0) == 0 and pool.pages_for(4) == 1 and pool.pages_for(5) == 2


def test_insert_then_match_full_pages_and_partial_tail():
    cache = RadixCache(PS)
    tokens = list(range(10))  # 2 full pages + 2-token tail
    assert cache.insert(tokens, [7, 8, 9]) == []
    assert cache.num_cached_pages == 3 and cache.num_evictable_pages == 3

    match = cache.match_prefix(tokens)
    assert match.pages == [7, 8] and match.num_full_tokens == 8
    assert (match.partial_page, match.partial_len) == (9, 2)
    assert match.num_tokens == 10

    # Diverges inside the tail after one token: reuse one slot of page 9.
    match = cache.match_prefix(list(range(9)) + [99, 100])
    assert match.pages == [7, 8] and (match.partial_page, match.partial_len) == (9, 1)

    # Diverges inside the second page: one full page plus 3 slots copied from page 8.
    match = cache.match_prefix([0, 1, 2, 3, 4, 5, 6, 42, 43])
    assert match.pages == [7] and (match.partial_page, match.partial_len) == (8, 3)
    assert match.lock_node is not match.node  # lock the child that owns page 8
    cache.check_integrity()


def test_insert_returns_duplicates_and_splits_at_page_boundaries():
    cache = RadixCache(PS)
    cache.insert(list(range(12)), [1, 2, 3])
    # Same first page, then different: the node splits after page 1 and our copy of it is freed.
    to_free = cache.insert([0, 1, 2, 3, 50, 51, 52, 53], [4, 5])
    assert to_free == [4]
    assert cache.match_prefix([0, 1, 2, 3, 50, 51, 52, 53, 9]).pages == [1, 5]
    assert cache.match_prefix(list(range(12)) + [77]).pages == [1, 2, 3]
    assert cache.num_cached_pages == 4
    cache.check_integrity()


def test_shorter_tail_is_kept_longer_tail_replaces_it_when_unlocked():
    cache = RadixCache(PS)
    cache.insert([0, 1, 2, 3, 4], [1, 2])
    assert cache.insert([0, 1, 2, 3, 4, 5, 6], [1, 3]) == [2]  # longer tail wins, old page freed
    assert cache.insert([0, 1, 2, 3, 4], [1, 4]) == [4]  # shorter one is not kept
    match = cache.match_prefix([0, 1, 2, 3, 4, 5, 6, 7])
    assert (match.partial_page, match.partial_len) == (3, 3)
    # Less than one page overall is never cached.
    assert cache.insert([9, 9], [6]) == [6]
    cache.check_integrity()


def test_locked_paths_survive_eviction_lru_order_otherwise():
    cache = RadixCache(PS)
    a = list(range(8))
    b = [100 + t for t in range(8)]
    c = [200 + t for t in range(8)]
    cache.insert(a, [1, 2])
    cache.insert(b, [3, 4])
    cache.insert(c, [5, 6])
    cache.match_prefix(a + [1])  # touch a: now b is least recently used
    locked = cache.match_prefix(c + [1])
    cache.lock(locked.lock_node)
    assert cache.num_evictable_pages == 4
    assert cache.evict(1) == [3, 4]  # the whole LRU leaf (b) goes
    assert cache.evict(10) == [1, 2]  # c is locked
    assert cache.num_evictable_pages == 0 and cache.num_cached_pages == 2
    cache.unlock(locked.lock_node)
    assert cache.evict(10) == [5, 6]
    cache.check_integrity()


def test_eviction_goes_leaf_first_then_parent_and_tails_of_internal_nodes():
    cache = RadixCache(PS)
    cache.insert([0, 1, 2, 3, 9], [1, 2])  # node [0..3] with tail (9)
    cache.insert([0, 1, 2, 3, 4, 5, 6, 7], [1, 3])  # child [4..7]
    # The internal node's tail is an eviction unit of its own; then the leaf, then the parent.
    freed = cache.evict(1)
    assert freed in ([2], [3])
    rest = cache.evict(10)
    assert sorted(freed + rest) == [1, 2, 3] and rest[-1] == 1
    assert cache.num_cached_pages == 0
    cache.check_integrity()


def test_split_keeps_lock_counts_consistent():
    cache = RadixCache(PS)
    cache.insert(list(range(12)), [1, 2, 3])
    match = cache.match_prefix(list(range(12)) + [5])
    cache.lock(match.lock_node)
    cache.match_prefix([0, 1, 2, 3, 4, 5, 6, 7, 70])  # splits the locked node
    cache.check_integrity()
    assert cache.evict(10) == []
    cache.unlock(match.lock_node)
    cache.check_integrity()
    assert sorted(cache.evict(10)) == [1, 2, 3]


def test_partial_match_into_a_long_child_locks_only_the_copied_page():
    cache = RadixCache(PS)
    cache.insert(list(range(4)), [1])  # a shared first page...
    cache.insert(list(range(4)) + list(range(50, 66)), [1, 2, 3, 4, 5])  # ...then 4 more pages
    # A new prompt shares the first page and 2 tokens of the second, then diverges.
    match = cache.match_prefix(list(range(4)) + [50, 51, 99, 98, 97])
    assert match.pages == [1] and (match.partial_page, match.partial_len) == (2, 2)
    cache.lock(match.lock_node)
    # Pages 1 (matched) and 2 (being copied) are locked; 3, 4, 5 stay evictable, so a request
    # that needs them can still evict them for itself.
    assert cache.num_evictable_pages == 3
    assert sorted(cache.evict(3)) == [3, 4, 5]
    cache.unlock(match.lock_node)
    cache.check_integrity()


def _path_node(cache, tokens):
    return cache.match_prefix(tokens).node


def test_eviction_rank_plain_then_retired_then_idle_then_pinned_whatever_lru():
    cache = RadixCache(PS)
    paths = {name: [base + t for t in range(8)]
             for name, base in (("plain", 0), ("retired", 100), ("idle", 200), ("pinned", 300))}
    for i, tokens in enumerate(paths.values()):
        cache.insert(tokens, [2 * i + 1, 2 * i + 2])  # plain [1, 2] ... pinned [7, 8]
    cache.drop_ref(cache.add_ref(_path_node(cache, paths["retired"]), RANK_IDLE))
    idle = cache.add_ref(_path_node(cache, paths["idle"]), RANK_IDLE)
    pinned = cache.add_ref(_path_node(cache, paths["pinned"]), RANK_PINNED)
    for name in ("pinned", "idle", "retired", "plain"):  # LRU alone would go the other way
        cache.match_prefix(paths[name])
    assert [cache.evict(1) for _ in range(4)] == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert cache.evicted_by_class == {"plain": 2, "expired": 2, "idle": 2, "pinned": 2}
    assert idle.node is None and pinned.node is None  # nothing of their paths is left
    cache.check_integrity()


def test_prefix_shared_by_two_sessions_outlives_a_path_used_by_one():
    cache = RadixCache(PS)
    system = list(range(8))  # two pages every session of the first kind starts with
    a, b, q = system + [50, 51, 52, 53], system + [60, 61, 62, 63], list(range(100, 108))
    cache.insert(a, [1, 2, 3])
    assert cache.insert(b, [9, 10, 4]) == [9, 10]
    cache.insert(q, [5, 6])
    refs = [cache.add_ref(_path_node(cache, path), RANK_IDLE) for path in (a, b, q)]
    shared = _path_node(cache, system)
    assert shared.ref_counts[RANK_IDLE] == 2
    cache.match_prefix(q)  # q is the most recently used: LRU alone would keep it longest
    assert cache.evict(1) == [3] and cache.evict(1) == [4]  # the per-session suffixes first
    assert refs[0].node is shared and refs[1].node is shared  # their refs moved up the path
    assert cache.evict(1) == [5, 6]  # used by one session: goes before the shared prefix
    assert cache.evict(1) == [1, 2]
    assert all(ref.node is None for ref in refs)
    cache.check_integrity()


def test_ref_counts_stay_exact_through_split_rank_change_and_drop():
    cache = RadixCache(PS)
    cache.insert(list(range(12)), [1, 2, 3])
    ref = cache.add_ref(_path_node(cache, list(range(12))), RANK_PINNED)
    cache.match_prefix([0, 1, 2, 3, 4, 5, 6, 7, 70])  # splits the node the ref ends at
    upper = _path_node(cache, list(range(4)))
    assert upper is not ref.node and upper.ref_counts[RANK_PINNED] == 1
    cache.check_integrity()
    cache.set_rank(ref, RANK_IDLE)
    assert upper.ref_counts[RANK_PINNED] == 0 and upper.ref_counts[RANK_IDLE] == 1
    cache.drop_ref(ref)
    cache.check_integrity()
    assert upper.ref_counts == [0, 0, 0, 0] and upper.retired and upper.evict_key[0] == 1
