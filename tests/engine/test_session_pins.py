"""Session pins, leases, the pin budget and the host tier, as pure bookkeeping (no model)."""

from __future__ import annotations

from engine.config import SchedulerConfig
from engine.radix_cache import RANK_IDLE, RANK_PINNED
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.session_pins import (
    RETENTION_NORMAL,
    RETENTION_TOOL_WAIT,
    Backup,
    SessionHint,
    SessionKV,
)
from tests.engine.test_scheduler import next_token

PS = 4


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(num_pages=24, budget=64, host=64, max_seqs=8, batch=64):
    sched = Scheduler(SchedulerConfig(num_pages=num_pages, page_size=PS, max_model_len=256,
                                      max_num_seqs=max_seqs, max_num_batched_tokens=batch,
                                      pin_budget_pages=budget, host_tier_pages=host))
    clock = Clock()
    sched.sessions.clock = clock
    return sched, clock


def req(rid, prompt, session=None, salt="", max_tokens=2, lease=60.0, retention=1):
    hint = SessionHint(session, lease, retention) if session else None
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), [0], 256,
                   cache_salt=salt, session=hint)


def drain(sched):
    outs = []
    while sched.has_unfinished():
        out = sched.schedule()
        outs.append(out)
        sampled = {s.request.request_id: [next_token(s.request)] for s in out.requests if s.sample}
        sched.update(out, sampled)
        sched.check_integrity()
    outs.append(sched.schedule())  # flush ops queued by the last update
    return outs


def ops_of(outs, kind):
    return [op for out in outs for op in getattr(out.session_ops, kind)]


def prompt(base, n):
    return [base + i for i in range(n)]


def test_pinned_session_survives_pressure_and_unpinned_ones_are_evicted():
    sched, _ = make()
    agent = req("agent", prompt(100, 16), session="s1")  # 16 + 1 KV tokens -> 5 pages
    idle = req("idle", prompt(300, 16))  # same size, no session
    for r in (agent, idle):
        sched.add(r)
    drain(sched)
    assert sched.sessions.num_pinned_pages == 4
    pinned_pages = sched.cache.match_prefix(agent.all_ids[:16]).pages
    for i in range(3):  # others fill the pool
        sched.add(req(f"o{i}", prompt(1000 * (i + 1), 20), max_tokens=8))
    drain(sched)
    assert sched.stats.num_evicted_pages > 0
    assert sched.cache.match_prefix(idle.all_ids[:16]).pages == []  # the idle one went
    assert sched.cache.match_prefix(agent.all_ids[:16]).pages == pinned_pages
    nxt = req("agent2", agent.all_ids + [7, 8, 9], session="s1")
    sched.add(nxt)
    out = sched.schedule()
    assert nxt.num_cached_tokens == agent.num_tokens - 1  # every token with KV, tail included
    assert out.requests[0].num_new_tokens == nxt.num_tokens - nxt.num_cached_tokens


def test_lease_expiry_backs_up_then_prefetches_exact_pages():
    sched, clock = make(num_pages=16)
    agent = req("agent", prompt(100, 14), session="s1")
    sched.add(agent)
    drain(sched)
    kv = agent.all_ids[: agent.num_tokens - 1]  # 15 tokens of KV: 3 full pages + 3
    full_pages = sched.cache.match_prefix(kv).pages
    clock.now += 61  # past the lease
    out = sched.schedule()
    (backup,) = out.session_ops.backups
    assert backup.session_id == "s1" and backup.page_ids == full_pages
    assert sched.sessions.num_pinned_pages == 0 and sched.sessions.num_host_pages == 3
    for i in range(3):  # fill the pool: the demoted pages get evicted
        sched.add(req(f"o{i}", prompt(1000 * (i + 1), 16), max_tokens=4))
    drain(sched)
    assert len(sched.cache.match_prefix(kv).pages) < 3
    have = len(sched.cache.match_prefix(kv).pages)
    nxt = req("agent2", agent.all_ids + [5, 6], session="s1")
    sched.add(nxt)
    out = sched.schedule()
    (prefetch,) = out.session_ops.prefetches
    assert prefetch.host_indices == list(range(have, 3)) and len(prefetch.page_ids) == 3 - have
    assert out.session_ops.host_drops == ["s1"]
    assert nxt.num_cached_tokens >= 12  # the three full pages are back
    assert sched.sessions.stats.num_prefetches == 1
    sched.update(out, {s.request.request_id: [1] for s in out.requests if s.sample})
    sched.check_integrity()


def test_budget_demotes_lowest_retention_first():
    sched, _ = make(budget=5)
    waiting_on_tool = req("a", prompt(100, 16), session="tool", retention=RETENTION_TOOL_WAIT)
    chatting = req("b", prompt(500, 16), session="chat", retention=RETENTION_NORMAL)
    sched.add(waiting_on_tool)
    drain(sched)
    sched.add(chatting)
    outs = drain(sched)
    demoted = {b.session_id for b in ops_of(outs, "backups")}
    assert demoted == {"chat"}
    assert sched.sessions.pins["tool"].pinned and not sched.sessions.pins["chat"].pinned


def test_plain_pages_are_evicted_before_session_pages():
    sched, clock = make(num_pages=16)
    sched.add(req("s", prompt(100, 8), session="s1", lease=1.0))
    drain(sched)
    sched.add(req("p", prompt(500, 8)))
    drain(sched)
    clock.now += 5  # the session pin expires: its pages are evictable but weigh more
    sched.schedule()
    sched.cache.match_prefix(prompt(100, 8))  # touch it: LRU alone would now evict "p" anyway
    sched.cache.match_prefix(prompt(500, 8))  # ... so make the plain one most recent
    freed = sched.cache.evict(1)
    assert sched.cache.match_prefix(prompt(500, 8)).pages == []  # the plain path went first
    assert len(sched.cache.match_prefix(prompt(100, 8)).pages) == 2
    sched.pool.free(freed)
    sched.check_integrity()


def test_salted_namespaces_share_nothing():
    sched, _ = make()
    sched.add(req("a", prompt(100, 12), salt="key-a"))
    drain(sched)
    b = req("b", prompt(100, 12) + [1], salt="key-b")
    sched.add(b)
    sched.schedule()
    assert b.num_cached_tokens == 0
    c = req("c", prompt(100, 12) + [1], salt="key-a")
    sched.add(c)
    sched.schedule()
    assert c.num_cached_tokens == 12


def test_close_session_unpins_and_drops_host_copy():
    sched, clock = make()
    sched.add(req("a", prompt(100, 12), session="s1"))
    drain(sched)
    assert sched.sessions.num_pinned_pages == 3
    sched.close_session("s1")
    assert sched.sessions.num_pinned_pages == 0 and "s1" not in sched.sessions.pins
    sched.check_integrity()
    assert sched.cache.num_evictable_pages == sched.cache.num_cached_pages


def test_pins_never_block_admission():
    sched, _ = make(num_pages=16, budget=64)  # budget allows pinning the whole pool
    for i in range(3):
        sched.add(req(f"s{i}", prompt(100 * (i + 1), 16), session=f"s{i}"))
        drain(sched)
    assert sched.sessions.num_pinned_pages == 12
    big = req("big", prompt(5000, 40), max_tokens=4)  # needs 11 of the 15 pages
    sched.add(big)
    outs = drain(sched)
    assert big.is_finished and big.finish_reason.value == "length"
    assert ops_of(outs, "backups")  # the pins it needed room from went to the host tier


def turn(sched, rid, tokens, session, **kw):
    """One finished request; returns the tokens it left KV for (prompt + output but the last)."""
    r = req(rid, tokens, session=session, **kw)
    sched.add(r)
    drain(sched)
    return r.all_ids[: r.num_tokens - 1]


def test_counts_return_to_zero_after_expiry_then_close():
    sched, clock = make()
    kv = turn(sched, "a", prompt(100, 12), "s1", lease=1.0)
    node = sched.cache.match_prefix(kv).node
    assert node.ref_counts[RANK_PINNED] == 1 and sched.sessions.num_live_sessions == 1
    clock.now += 5
    out = sched.schedule()  # the lease is over: backed up, unlocked, no longer a live session
    assert [b.session_id for b in out.session_ops.backups] == ["s1"]
    assert node.ref_counts == [0, 0, 0, 0] and node.evict_key[0] == 1  # ranks as expired
    assert sched.sessions.num_live_sessions == 0 and sched.sessions.num_host_sessions == 1
    sched.close_session("s1")
    assert sched.schedule().session_ops.host_drops == ["s1"]
    assert sched.sessions.num_host_sessions == 0 and sched.sessions.stats.num_expired == 1
    sched.check_integrity()


def test_close_of_an_idle_session_drops_its_weight():
    sched, _ = make(budget=0)  # every pin is demoted at the next step
    kv = turn(sched, "a", prompt(100, 12), "s1")
    sched.schedule()
    node = sched.cache.match_prefix(kv).node
    assert not sched.sessions.pins["s1"].pinned and node.ref_counts[RANK_IDLE] == 1
    sched.close_session("s1")
    assert node.ref_counts == [0, 0, 0, 0] and sched.sessions.num_live_sessions == 0
    assert sched.sessions.stats.num_closed == 1
    sched.check_integrity()


def test_repin_after_demotion_counts_the_session_once():
    for budget, lease, wait in ((0, 60.0, 0), (64, 1.0, 5)):  # demoted idle; lease expired
        sched, clock = make(budget=budget)
        kv = turn(sched, "a", prompt(100, 12), "s1", lease=lease)
        clock.now += wait
        sched.schedule()
        assert not sched.sessions.pins.get("s1") or not sched.sessions.pins["s1"].pinned
        kv2 = turn(sched, "b", kv + [7, 8, 9], "s1", lease=lease)
        shared = sched.cache.match_prefix(kv[:8]).node
        assert sum(shared.ref_counts) == 1, (budget, shared.ref_counts)
        assert sched.cache.match_prefix(kv2).node.refs == [sched.sessions.pins["s1"].ref]
        sched.check_integrity()


def test_demoted_pins_go_once_device_and_host_copies_are_gone():
    sched, clock = make(budget=0, host=3)  # one 2-page host copy at a time
    for i in range(5):
        turn(sched, f"r{i}", prompt(100 * (i + 1), 8), f"x{i}")
    sched.schedule()
    assert sched.sessions.num_live_sessions == 5  # idle: leases running
    assert list(sched.sessions.host) == ["x4"]
    sched.pool.free(sched.cache.evict(10**6))  # nothing is left on the device
    sched.schedule()
    assert list(sched.sessions.pins) == ["x4"]  # the only one that can still come back
    clock.now += 61  # ... until its lease is over
    sched.schedule()
    assert sched.sessions.num_live_sessions == 0 and list(sched.sessions.host) == ["x4"]
    sched.check_integrity()


def test_expired_leases_are_not_live_sessions():
    sched, clock = make()
    for i in range(5):
        turn(sched, f"r{i}", prompt(100 * (i + 1), 8), f"x{i}", lease=1.0)
    assert sched.sessions.num_live_sessions == 5
    clock.now += 10**6
    sched.schedule()
    assert sched.sessions.pins == {} and sched.sessions.stats.num_expired == 5
    assert sched.sessions.num_host_sessions == 5  # the copies stay (LRU within the host tier)


def test_eviction_order_plain_expired_deleted_idle_then_pinned_exact_pages():
    sched, clock = make(budget=3, batch=128)  # room for one 2-page pin
    kvs = {"P": turn(sched, "P", prompt(100, 8), None)}  # 9 KV tokens: 2 pages + a tail
    for sid, lease, retention in (("E", 1.0, 1), ("D", 60.0, 1), ("I", 60.0, 1),
                                  ("K", 60.0, RETENTION_TOOL_WAIT)):
        kvs[sid] = turn(sched, sid, prompt(100 * (len(kvs) + 1), 8), sid, lease=lease,
                        retention=retention)
    sched.close_session("D")
    clock.now += 5  # E's lease is over
    sched.schedule()
    assert [sid for sid, p in sched.sessions.pins.items() if p.pinned] == ["K"]
    pages = {}
    for sid in ("K", "I", "E", "D", "P"):  # touched in this order: LRU alone evicts K first
        m = sched.cache.match_prefix(kvs[sid])
        pages[sid] = m.pages + [m.partial_page]
    freed = [sched.cache.evict(1) for _ in range(5)]
    # Expired and deleted share a class, LRU within it; K is pinned.
    assert freed == [pages["P"], pages["E"], pages["D"], pages["I"], []]
    for f in freed:
        sched.pool.free(f)
    big = req("big", prompt(5000, 84), max_tokens=1)  # 21 pages; 20 are free
    sched.add(big)
    out = sched.schedule()
    assert out.session_ops.backups == [Backup("K", pages["K"][:2])]  # demoted for room...
    assert set(pages["K"]) <= set(big.page_ids)  # ... and evicted last
    assert sched.cache.evicted_by_class == {"plain": 3, "expired": 6, "idle": 3, "pinned": 3}
    sched.check_integrity()


def test_a_turn_renews_the_lease():
    sched, clock = make()
    kv = turn(sched, "a", prompt(100, 12), "s1", lease=60.0)
    assert sched.sessions.pins["s1"].expires_at == 1060.0
    clock.now += 50
    turn(sched, "b", kv + [7, 8], "s1", lease=60.0)
    assert sched.sessions.pins["s1"].expires_at == 1110.0
    clock.now = 1070.0  # past the first lease, inside the renewed one
    assert sched.schedule().session_ops.backups == []
    assert sched.sessions.pins["s1"].pinned
    sched.touch_session("s1", lease_s=100.0)  # renewed by hand (the server does after a turn)
    clock.now = 1111.0
    assert sched.schedule().session_ops.backups == [] and sched.sessions.pins["s1"].pinned
    clock.now = 1171.0
    assert [b.session_id for b in sched.schedule().session_ops.backups] == ["s1"]
    assert sched.sessions.num_live_sessions == 0


def test_scheduler_reaches_sessions_only_through_the_interface():
    import inspect
    import re

    import engine.scheduler as scheduler_module

    source = inspect.getsource(scheduler_module)
    used = set(re.findall(r"self\.sessions\.(\w+)", source))
    interface = {name for name in vars(SessionKV) if not name.startswith("_")}
    assert used <= interface, f"the scheduler uses {used - interface} outside SessionKV"
    assert {"match", "lock", "unlock", "pin", "renew", "unpin", "demote", "prefetch"} <= used
