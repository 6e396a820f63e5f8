"""Radix prefix cache keyed by token ids, page-granular, with partial last pages (no torch).

Edges hold whole pages: a node's ``key`` is ``len(pages) * page_size`` tokens and children are
keyed by their first page of tokens, so two children never share a page. The tokens after the
last full page of an inserted sequence are kept as the node's *tail*: a page filled only up to
``len(tail_key)`` slots. A later request whose next tokens agree with a tail (or with the first
page of a child) for ``c`` tokens reuses them by copying those ``c`` slots into a fresh page of
its own: a few slots copied instead of recomputed, and the cached page stays immutable.

Ownership: pages in the tree belong to the tree; a request that matched a prefix holds a lock on
its deepest node (``lock``/``unlock``), which keeps that node, its ancestors and their tails from
eviction. A live session holds a ``CacheRef`` on its path instead (``add_ref``): it weighs the
path's pages in eviction order without keeping them; dropping it (the session expired or was
deleted) leaves the path marked *retired*. Unlocked pages are evicted by rank (``RANK_*``: pages
no session ever used, then retired ones, then those of idle sessions, then those of pinned
sessions demoted under pressure), then by how many live sessions share them (a system prompt
used by many outlives a suffix used by one), then least recently used; leaves (and tails) before
the nodes above them. Time is a logical clock so eviction order is deterministic.

Namespaces (a per-tenant cache salt) get separate roots: nothing is ever shared across them.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

# Eviction ranks, first evicted first. A node's rank is the highest rank of the refs on its
# subtree, else RETIRED if a session's path ever ran through it; RANK_PINNED pages are locked
# unless their pin was demoted to make room.
RANK_PLAIN, RANK_RETIRED, RANK_IDLE, RANK_PINNED = 0, 1, 2, 3
# By rank; the keys of ``evicted_by_class``. "expired": sessions past their lease or deleted.
RANK_NAMES = ("plain", "expired", "idle", "pinned")


class RadixNode:
    __slots__ = ("key", "pages", "parent", "children", "lock_ref", "last_access", "tail_key",
                 "tail_page", "uid", "refs", "ref_counts", "retired")

    def __init__(self, key: tuple[int, ...], pages: list[int], parent: RadixNode | None,
                 uid: int) -> None:
        self.key = key  # (len(pages) * page_size,) token ids on the edge from the parent
        self.pages = pages  # page ids holding ``key``'s KV, in order
        self.parent = parent
        self.children: dict[tuple[int, ...], RadixNode] = {}  # first page of tokens -> child
        self.lock_ref = 0  # locks held on this node or any descendant
        self.last_access = 0
        self.tail_key: tuple[int, ...] = ()  # 0 < len < page_size tokens following ``key``
        self.tail_page: int | None = None
        self.uid = uid  # creation order, the tie-breaker of LRU
        self.refs: list[CacheRef] = []  # refs whose path ends here
        # (len(RANK_NAMES),) refs ending here or below, by rank: the eviction weight
        self.ref_counts = [0] * len(RANK_NAMES)
        self.retired = False  # a dropped ref's path ran through here (bounded: a flag, no count)

    @property
    def num_owned_pages(self) -> int:
        return len(self.pages) + (self.tail_page is not None)

    @property
    def evict_key(self) -> tuple[int, int, int, int, int]:
        """Smallest goes first: rank, refs of that rank, all refs, last access, creation."""
        counts = self.ref_counts
        if counts[RANK_PINNED] or counts[RANK_IDLE]:
            rank = RANK_PINNED if counts[RANK_PINNED] else RANK_IDLE
        else:
            rank = RANK_RETIRED if self.retired else RANK_PLAIN
        return rank, counts[rank], sum(counts), self.last_access, self.uid


class CacheRef:
    """A claim on a cached path that weighs its pages in eviction order without locking them.

    Made by ``RadixCache.add_ref`` and owned by the caller, who must ``drop_ref`` it when done.
    When the deepest pages of the path are evicted the cache moves the ref up to what is left
    (the rest of the path keeps its weight); ``node`` is None once nothing of the path is left.
    Refs are for live sessions only, so there are never more of them than live sessions.
    """

    __slots__ = ("node", "rank")

    def __init__(self, node: RadixNode | None, rank: int) -> None:
        self.node = node  # deepest cached node of the path; None: the path is gone
        self.rank = rank  # RANK_IDLE or RANK_PINNED


@dataclass
class PrefixMatch:
    """The longest cached prefix of a query."""

    node: RadixNode  # deepest node whose key was matched in full
    pages: list[int]  # shared full pages, root to ``node``
    num_full_tokens: int  # len(pages) * page_size
    partial_page: int | None  # cached page whose first ``partial_len`` slots continue the prefix
    partial_len: int
    lock_node: RadixNode  # lock this one: it protects both ``pages`` and ``partial_page``

    @property
    def num_tokens(self) -> int:
        return self.num_full_tokens + self.partial_len


class RadixCache:
    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._uids = itertools.count()
        self._clock = itertools.count(1)
        self.roots: dict[str, RadixNode] = {}
        self.root = self._root("")
        self.num_cached_pages = 0
        self.num_evictable_pages = 0
        self.evicted_by_class = dict.fromkeys(RANK_NAMES, 0)  # pages evicted, by rank name

    def _root(self, namespace: str) -> RadixNode:
        root = self.roots.get(namespace)
        if root is None:
            root = self.roots[namespace] = RadixNode((), [], None, next(self._uids))
            root.lock_ref = 1  # a root is never evicted
        return root

    # ---------------------------------------------------------------- matching
    def match_prefix(self, token_ids: list[int], namespace: str = "") -> PrefixMatch:
        """Find the longest cached prefix of ``token_ids``; splits a node at a page boundary."""
        ps = self.page_size
        node, pos, pages = self._root(namespace), 0, []
        now = next(self._clock)
        while len(token_ids) - pos >= ps:
            child = node.children.get(tuple(token_ids[pos : pos + ps]))
            if child is None:
                break
            matched = self._matched_pages(child.key, token_ids, pos)
            if matched < len(child.pages):
                child = self._split(child, matched)
            pages.extend(child.pages)
            pos += len(child.key)
            node = child
        partial_page, partial_len, lock_node = None, 0, node
        rest = token_ids[pos : pos + ps]
        if rest:
            common = _common_len(node.tail_key, rest)
            if common:
                partial_page, partial_len = node.tail_page, common
            for child in node.children.values():
                common = _common_len(child.key[:ps], rest)
                if common > partial_len:
                    partial_page, partial_len, lock_node = child.pages[0], common, child
            if lock_node is not node and len(lock_node.pages) > 1:
                # Lock only the page being copied: the rest of that child stays evictable
                # (locking all of it could leave a lone request unable to evict for itself).
                lock_node = self._split(lock_node, 1)
        self._touch(lock_node, now)
        return PrefixMatch(node, pages, pos, partial_page, partial_len, lock_node)

    def _matched_pages(self, key: tuple[int, ...], token_ids: list[int], pos: int) -> int:
        ps = self.page_size
        matched = 0
        for start in range(0, len(key), ps):
            if tuple(token_ids[pos + start : pos + start + ps]) != key[start : start + ps]:
                break
            matched += 1
        return matched

    def _split(self, child: RadixNode, num_pages: int) -> RadixNode:
        """Cut ``child`` after ``num_pages`` pages; returns the new upper node."""
        cut = num_pages * self.page_size
        parent = child.parent
        assert parent is not None and 0 < num_pages < len(child.pages), "bad split"
        upper = RadixNode(child.key[:cut], child.pages[:num_pages], parent, next(self._uids))
        upper.lock_ref = child.lock_ref
        upper.ref_counts = list(child.ref_counts)  # the refs stay below, on ``child``
        upper.retired = child.retired
        upper.last_access = child.last_access
        parent.children[child.key[: self.page_size]] = upper
        child.key, child.pages, child.parent = child.key[cut:], child.pages[num_pages:], upper
        upper.children[child.key[: self.page_size]] = child
        return upper

    def _touch(self, node: RadixNode | None, now: int) -> None:
        while node is not None:
            node.last_access = now
            node = node.parent

    # ----------------------------------------------------------------- locking
    def lock(self, node: RadixNode) -> None:
        while node is not None:
            if node.lock_ref == 0:
                self.num_evictable_pages -= node.num_owned_pages
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        while node is not None:
            assert node.lock_ref > 0, "unlock without lock"
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.num_evictable_pages += node.num_owned_pages
            node = node.parent

    # -------------------------------------------------------------------- refs
    def add_ref(self, node: RadixNode, rank: int) -> CacheRef:
        """Weigh the path root .. ``node`` with a new ref of ``rank`` (a root: nothing to weigh)."""
        assert rank in (RANK_IDLE, RANK_PINNED), f"bad rank {rank}"
        if node.parent is None:
            return CacheRef(None, rank)
        ref = CacheRef(node, rank)
        node.refs.append(ref)
        self._count_ref(node, rank, +1)
        return ref

    def set_rank(self, ref: CacheRef, rank: int) -> None:
        assert rank in (RANK_IDLE, RANK_PINNED), f"bad rank {rank}"
        if ref.node is not None:
            self._count_ref(ref.node, ref.rank, -1)
            self._count_ref(ref.node, rank, +1)
        ref.rank = rank

    def drop_ref(self, ref: CacheRef) -> None:
        """Forget ``ref``; what is left of its path now ranks as retired (unless live refs or
        locks keep it)."""
        node, ref.node = ref.node, None
        if node is None:
            return
        node.refs.remove(ref)
        self._count_ref(node, ref.rank, -1)
        while node.parent is not None:
            node.retired = True
            node = node.parent

    @staticmethod
    def _count_ref(node: RadixNode, rank: int, delta: int) -> None:
        while node.parent is not None:  # roots carry no weight: they are never evicted
            node.ref_counts[rank] += delta
            assert node.ref_counts[rank] >= 0, "ref count below zero"
            node = node.parent

    # --------------------------------------------------------------- inserting
    def insert(self, token_ids: list[int], pages: list[int], namespace: str = "") -> list[int]:
        """Hand ``pages`` (holding the KV of ``token_ids``) to the tree.

        Returns the pages the caller must free: duplicates of pages the tree already holds, and
        a partial last page the tree does not keep.
        """
        ps = self.page_size
        assert len(pages) == -(-len(token_ids) // ps), "pages must cover token_ids exactly"
        now = next(self._clock)
        root = self._root(namespace)
        node, pos, to_free = root, 0, []
        num_full = len(token_ids) // ps * ps
        while pos < num_full:
            child = node.children.get(tuple(token_ids[pos : pos + ps]))
            if child is None:
                child = RadixNode(tuple(token_ids[pos:num_full]), pages[pos // ps : num_full // ps],
                                  node, next(self._uids))
                node.children[child.key[:ps]] = child
                self._add_owned(child, len(child.pages))
                pos = num_full
                node = child
                break
            matched = self._matched_pages(child.key, token_ids, pos)
            if matched < len(child.pages):
                child = self._split(child, matched)
            for i, page in enumerate(child.pages):
                if pages[pos // ps + i] != page:
                    to_free.append(pages[pos // ps + i])
            pos += len(child.key)
            node = child
        if pos < len(token_ids) and node is root:
            to_free.append(pages[pos // ps])  # less than a page in all: not worth keeping
        elif pos < len(token_ids):
            to_free.extend(self._set_tail(node, tuple(token_ids[pos:]), pages[pos // ps]))
        self._touch(node, now)
        return to_free

    def _set_tail(self, node: RadixNode, tail: tuple[int, ...], page: int) -> list[int]:
        if node.tail_page is None:
            node.tail_key, node.tail_page = tail, page
            self._add_owned(node, 1)
            return []
        # A locked node's tail may be mid-copy for a request admitted this step: keep it.
        if len(tail) > len(node.tail_key) and node.lock_ref == 0:
            old = node.tail_page
            node.tail_key, node.tail_page = tail, page
            return [old]
        return [page]

    def _add_owned(self, node: RadixNode, num: int) -> None:
        self.num_cached_pages += num
        if node.lock_ref == 0:
            self.num_evictable_pages += num

    # ---------------------------------------------------------------- eviction
    def evict(self, num_pages: int) -> list[int]:
        """Free at least ``num_pages`` unlocked pages (fewer if not enough), lowest
        ``RadixNode.evict_key`` first, leaves before their parents."""
        freed: list[int] = []
        heap = [(n.evict_key, n) for n in self._evictable_units()]
        heapq.heapify(heap)
        while heap and len(freed) < num_pages:
            _, node = heapq.heappop(heap)
            if node.parent is None or node.lock_ref:
                continue  # already evicted through another heap entry
            rank_name = RANK_NAMES[node.evict_key[0]]
            if node.children:  # an internal node: only its tail goes
                if node.tail_page is None:
                    continue
                freed.append(node.tail_page)
                self.evicted_by_class[rank_name] += 1
                node.tail_key, node.tail_page = (), None
                self.num_cached_pages -= 1
                self.num_evictable_pages -= 1
                continue
            freed.extend(node.pages)
            if node.tail_page is not None:
                freed.append(node.tail_page)
            self.num_cached_pages -= node.num_owned_pages
            self.num_evictable_pages -= node.num_owned_pages
            self.evicted_by_class[rank_name] += node.num_owned_pages
            parent = node.parent
            del parent.children[node.key[: self.page_size]]
            node.parent = None
            # The refs now end at what is left of their paths; the parent's counts already
            # include them. At a root nothing is left.
            for ref in node.refs:
                ref.node = parent if parent.parent is not None else None
            if parent.parent is not None:
                parent.refs.extend(node.refs)
            node.refs = []
            if parent.lock_ref == 0 and not parent.children:
                heapq.heappush(heap, (parent.evict_key, parent))
        return freed

    def _evictable_units(self) -> list[RadixNode]:
        units, stack = [], list(self.roots.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node.lock_ref:
                continue
            if not node.children or node.tail_page is not None:
                units.append(node)
        return units

    # --------------------------------------------------------------- integrity
    def all_pages(self) -> list[int]:
        pages, stack = [], list(self.roots.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            pages.extend(node.pages)
            if node.tail_page is not None:
                pages.append(node.tail_page)
        return pages

    def check_integrity(self) -> None:
        pages = self.all_pages()
        assert len(pages) == len(set(pages)), "a page is owned twice by the tree"
        assert len(pages) == self.num_cached_pages, "cached page counter drifted"
        evictable, stack, order = 0, list(self.roots.values()), []
        while stack:
            node = stack.pop()
            order.append(node)
            for first, child in node.children.items():
                assert child.parent is node and child.key[: self.page_size] == first, "bad edge"
                assert len(child.key) == len(child.pages) * self.page_size, "key/pages mismatch"
                assert child.lock_ref <= node.lock_ref, "lock not propagated to the parent"
                stack.append(child)
            if node.lock_ref == 0:
                evictable += node.num_owned_pages
            assert all(ref.node is node for ref in node.refs), "a ref points elsewhere"
            assert node.parent is not None or not node.refs, "a ref on a root"
        assert evictable == self.num_evictable_pages, "evictable page counter drifted"
        for node in reversed(order):  # children before parents: counts are subtree sums
            if node.parent is None:
                continue
            counts = [0] * len(RANK_NAMES)
            for ref in node.refs:
                counts[ref.rank] += 1
            for child in node.children.values():
                counts = [a + b for a, b in zip(counts, child.ref_counts)]
            assert counts == node.ref_counts, f"ref counts drifted: {node.ref_counts} != {counts}"


def _common_len(a: tuple[int, ...] | list[int], b: list[int] | tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
