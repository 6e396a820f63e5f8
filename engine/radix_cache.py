"""Radix prefix cache keyed by token ids, page-granular, with partial last pages (no torch).

Edges hold whole pages: a node's ``key`` is ``len(pages) * page_size`` tokens and children are
keyed by their first page of tokens, so two children never share a page. The tokens after the
last full page of an inserted sequence are kept as the node's *tail*: a page filled only up to
``len(tail_key)`` slots. A later request whose next tokens agree with a tail (or with the first
page of a child) for ``c`` tokens reuses them by copying those ``c`` slots into a fresh page of
its own: a few slots copied instead of recomputed, and the cached page stays immutable.

Ownership: pages in the tree belong to the tree; a request that matched a prefix holds a lock on
its deepest node (``lock``/``unlock``), which keeps that node, its ancestors and their tails from
eviction. Unlocked pages are evicted in the order (how many sessions use them, least recently
used), leaves (and tails) before the nodes above them: pages no session uses go first, then
those of a single (expired or demoted) session, shared session prefixes last. Time is a logical
clock so eviction order is deterministic.

Namespaces (a per-tenant cache salt) get separate roots: nothing is ever shared across them.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass


class RadixNode:
    __slots__ = ("key", "pages", "parent", "children", "lock_ref", "last_access", "tail_key",
                 "tail_page", "uid", "session_refs")

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
        self.session_refs = 0  # sessions whose pinned path runs through here (eviction weight)

    @property
    def num_owned_pages(self) -> int:
        return len(self.pages) + (self.tail_page is not None)


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
        self.evicted_by_class = {"plain": 0, "session": 0}  # pages, by whether a session used them

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
        upper.session_refs = child.session_refs
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

    # --------------------------------------------------------------- inserting
    def add_session_ref(self, node: RadixNode, delta: int) -> None:
        """Count a session's pinned path (+1) or forget it (-1) on ``node`` and its ancestors."""
        while node is not None:
            node.session_refs = max(0, node.session_refs + delta)
            node = node.parent

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
        """Free at least ``num_pages`` unlocked pages (fewer if not enough); LRU leaves first."""
        freed: list[int] = []
        heap = [(n.session_refs, n.last_access, n.uid, n) for n in self._evictable_units()]
        heapq.heapify(heap)
        while heap and len(freed) < num_pages:
            _, _, _, node = heapq.heappop(heap)
            if node.parent is None or node.lock_ref:
                continue  # already evicted through another heap entry
            if node.children:  # an internal node: only its tail goes
                if node.tail_page is None:
                    continue
                freed.append(node.tail_page)
                self.evicted_by_class["session" if node.session_refs else "plain"] += 1
                node.tail_key, node.tail_page = (), None
                self.num_cached_pages -= 1
                self.num_evictable_pages -= 1
                continue
            freed.extend(node.pages)
            if node.tail_page is not None:
                freed.append(node.tail_page)
            self.num_cached_pages -= node.num_owned_pages
            self.num_evictable_pages -= node.num_owned_pages
            self.evicted_by_class["session" if node.session_refs else "plain"] += (
                node.num_owned_pages)
            parent = node.parent
            del parent.children[node.key[: self.page_size]]
            node.parent = None
            if parent.lock_ref == 0 and not parent.children:
                heapq.heappush(heap, (parent.session_refs, parent.last_access, parent.uid,
                                      parent))
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
        evictable, stack = 0, list(self.roots.values())
        while stack:
            node = stack.pop()
            for first, child in node.children.items():
                assert child.parent is node and child.key[: self.page_size] == first, "bad edge"
                assert len(child.key) == len(child.pages) * self.page_size, "key/pages mismatch"
                assert child.lock_ref <= node.lock_ref, "lock not propagated to the parent"
                stack.append(child)
            if node.lock_ref == 0:
                evictable += node.num_owned_pages
        assert evictable == self.num_evictable_pages, "evictable page counter drifted"


def _common_len(a: tuple[int, ...] | list[int], b: list[int] | tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
