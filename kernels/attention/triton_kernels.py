"""Triton paged-attention kernels: split-KV decode (+ its merge) and causal extend.

All three read the same per-batch index tensors (int32, built once by ``TritonAttention.plan``):
``cu_q_lens`` (num_seqs + 1,), ``kv_lens`` (num_seqs,), a zero-padded ``page_table``
(num_seqs, max_pages) and a list of sequence ids each kernel serves. Keys of sequence ``s`` at
position ``j`` live in cache row ``page_table[s, j // PAGE_SIZE] * PAGE_SIZE + j % PAGE_SIZE``
of the ``(num_slots, num_kv_heads, head_dim)`` view of a layer's cache.

With ``CSR`` set, decode and merge instead read the paged CSR layout the decode CUDA graphs
keep on the device (``kv_indptr`` (rows + 1,), flat ``kv_indices``, ``kv_last_page_len``
(rows,), any integer dtype; row ``r`` is token ``r``), and with ``DYN_SPLIT`` each row cuts
its own context into ``num_splits`` equal splits: nothing about the step is baked into the
launch, so a captured graph serves any context lengths. Scores are kept in base 2
(``sm_scale_log2 = scale * log2(e)``) so the softmax uses ``exp2``.
"""

from __future__ import annotations

from kernels._triton import jit, l2_prefetch, pdl_wait, tl


@jit
def _load_kv_block(
    K_CACHE, V_CACHE, PAGE_TABLE, page_row, offs_n, n_mask, kv_head, num_kv_heads, head_dim,
    offs_d, d_mask, PAGE_SIZE: tl.constexpr,
):
    page = tl.load(PAGE_TABLE + page_row + offs_n // PAGE_SIZE, mask=n_mask, other=0)
    slot = page.to(tl.int64) * PAGE_SIZE + offs_n % PAGE_SIZE
    base = (slot * num_kv_heads + kv_head) * head_dim
    mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(K_CACHE + base[:, None] + offs_d[None, :], mask=mask, other=0.0)
    v = tl.load(V_CACHE + base[:, None] + offs_d[None, :], mask=mask, other=0.0)
    return k, v


@jit
def _online_softmax_step(s, v, m_i, l_i, acc):
    """Fold one block of base-2 scores ``s`` (rows x keys) and its values ``v`` into the running
    max ``m_i``, normaliser ``l_i`` and output ``acc``; returns the three updated."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@jit
def _decode_row(SEQ_IDS, CU_Q_LENS, KV_LENS, KV_INDPTR, KV_LAST, row, stride_pt,
                PAGE_SIZE: tl.constexpr, CSR: tl.constexpr):
    """(token index, context length, offset of the row's first page id) of decode row ``row``."""
    if CSR:
        page_row = tl.load(KV_INDPTR + row).to(tl.int64)
        num_pages = tl.load(KV_INDPTR + row + 1).to(tl.int64) - page_row
        kv_len = (num_pages - 1) * PAGE_SIZE + tl.load(KV_LAST + row).to(tl.int64)
        tok = row.to(tl.int64)
    else:
        seq = tl.load(SEQ_IDS + row)
        tok = tl.load(CU_Q_LENS + seq).to(tl.int64)
        kv_len = tl.load(KV_LENS + seq).to(tl.int64)
        page_row = seq.to(tl.int64) * stride_pt
    return tok, kv_len, page_row


@jit
def _row_split_len(kv_len, split_len, num_splits, BLOCK_N: tl.constexpr, DYN_SPLIT: tl.constexpr):
    """Keys per split of a row: ``split_len`` as launched, or with ``DYN_SPLIT`` the row's own
    context cut into ``num_splits`` (rounded up to ``BLOCK_N``)."""
    if DYN_SPLIT:
        split_len = tl.cdiv(tl.cdiv(kv_len, num_splits), BLOCK_N) * BLOCK_N
    return split_len


@jit(do_not_specialize=["split_len", "num_splits"])
def decode_kernel(
    Q, K_CACHE, V_CACHE, OUT, MID_O, MID_LSE,
    SEQ_IDS, CU_Q_LENS, KV_LENS, PAGE_TABLE,
    sm_scale_log2, stride_qt, stride_qh, stride_ot, stride_oh, stride_pt,
    num_q_heads, num_kv_heads, head_dim, group, split_len, num_splits,
    KV_INDPTR, KV_LAST,
    PAGE_SIZE: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CSR: tl.constexpr = False, DYN_SPLIT: tl.constexpr = False, USE_PDL: tl.constexpr = False,
    PREFETCH=None, prefetch_numel=0, prefetch_max_kv=0, PREFETCH_LINES: tl.constexpr = 0,
    PREFETCH_LINE: tl.constexpr = 64,
):
    """One program: one decode row x one KV head (all its ``group`` query heads) x one split.

    ``CSR``: pages from ``KV_INDPTR``/``PAGE_TABLE`` (flat indices)/``KV_LAST`` instead of the
    padded table; ``DYN_SPLIT``: ``split_len`` is ``kv_len / num_splits`` (rounded up to
    ``BLOCK_N``) for each row, so splits past a short context are empty. ``PREFETCH_LINES``:
    each program of a row with at most ``prefetch_max_kv`` keys first asks L2 for its share of
    ``PREFETCH[:prefetch_numel]`` (the o_proj weight read next: ``engine.graph_attention``);
    longer rows keep DRAM busy themselves."""
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    tok, kv_len, page_row = _decode_row(SEQ_IDS, CU_Q_LENS, KV_LENS, KV_INDPTR, KV_LAST, row,
                                        stride_pt, PAGE_SIZE, CSR)
    if PREFETCH_LINES > 0:
        if kv_len <= prefetch_max_kv:
            program = (row * tl.num_programs(1) + kv_head) * tl.num_programs(2) + split
            l2_prefetch(PREFETCH, prefetch_numel, program, PREFETCH_LINES, PREFETCH_LINE)
    split_len = _row_split_len(kv_len, split_len, num_splits, BLOCK_N, DYN_SPLIT)
    offs_h = tl.arange(0, BLOCK_H)
    h_mask = offs_h < group
    heads = kv_head * group + offs_h
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    q_mask = h_mask[:, None] & d_mask[None, :]
    q = tl.load(Q + tok * stride_qt + heads[:, None] * stride_qh + offs_d[None, :], mask=q_mask,
                other=0.0)
    start = split * split_len
    end = tl.minimum(kv_len, start + split_len)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        k, v = _load_kv_block(K_CACHE, V_CACHE, PAGE_TABLE, page_row, offs_n, n_mask, kv_head,
                              num_kv_heads, head_dim, offs_d, d_mask, PAGE_SIZE)
        s = tl.dot(q, tl.trans(k.to(q.dtype))) * sm_scale_log2
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, v.to(q.dtype), m_i, l_i, acc)
    if not SPLIT:
        out = acc / l_i[:, None]
        tl.store(OUT + tok * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=q_mask)
    elif start < kv_len:  # the merge never reads a split past the row's context
        lse = m_i + tl.log2(l_i)
        mid = (row.to(tl.int64) * num_q_heads + heads) * num_splits + split
        tl.store(MID_O + mid[:, None] * head_dim + offs_d[None, :], acc / l_i[:, None],
                 mask=q_mask)
        tl.store(MID_LSE + mid, lse, mask=h_mask)


@jit(do_not_specialize=["split_len", "num_splits"])
def merge_kernel(
    OUT, MID_O, MID_LSE, SEQ_IDS, CU_Q_LENS, KV_LENS, KV_INDPTR, KV_LAST,
    stride_ot, stride_oh, stride_pt, num_q_heads, head_dim, split_len, num_splits,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr, CSR: tl.constexpr = False, DYN_SPLIT: tl.constexpr = False,
    USE_PDL: tl.constexpr = False,
):
    """Combine the partial outputs of one decode row x one query head over the splits that hold
    keys of its context (the decode kernel's split arguments, so both agree on which)."""
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    head = tl.program_id(1)
    tok, kv_len, _ = _decode_row(SEQ_IDS, CU_Q_LENS, KV_LENS, KV_INDPTR, KV_LAST, row,
                                 stride_pt, PAGE_SIZE, CSR)
    split_len = _row_split_len(kv_len, split_len, num_splits, BLOCK_N, DYN_SPLIT)
    filled = tl.cdiv(kv_len, split_len)  # >= 1: every row holds at least one key
    offs_s = tl.arange(0, BLOCK_S)
    s_mask = offs_s < filled
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    mid = (row.to(tl.int64) * num_q_heads + head) * num_splits + offs_s
    lse = tl.load(MID_LSE + mid, mask=s_mask, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    o = tl.load(MID_O + mid[:, None] * head_dim + offs_d[None, :],
                mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    out = tl.sum(w[:, None] * o, axis=0) / tl.sum(w, axis=0)
    tl.store(OUT + tok * stride_ot + head * stride_oh + offs_d, out.to(OUT.dtype.element_ty),
             mask=d_mask)


@jit
def extend_kernel(
    Q, K_CACHE, V_CACHE, OUT,
    SEQ_IDS, CU_Q_LENS, KV_LENS, PAGE_TABLE,
    sm_scale_log2, stride_qt, stride_qh, stride_ot, stride_oh, stride_pt,
    num_kv_heads, head_dim, group,
    PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program: BLOCK_M new tokens of one sequence x one query head, causal after the prefix.

    New token ``i`` of a sequence sits at position ``kv_len - q_len + i`` and sees keys
    ``0 ..`` that position; keys past the block's last query are never loaded.
    """
    seq = tl.load(SEQ_IDS + tl.program_id(0))
    head = tl.program_id(1)
    m_block = tl.program_id(2)
    q_start = tl.load(CU_Q_LENS + seq)
    q_len = tl.load(CU_Q_LENS + seq + 1) - q_start
    if m_block * BLOCK_M < q_len:
        kv_len = tl.load(KV_LENS + seq)
        prefix = kv_len - q_len
        offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < q_len
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < head_dim
        q_mask = m_mask[:, None] & d_mask[None, :]
        toks = (q_start + offs_m).to(tl.int64)
        q = tl.load(Q + toks[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=q_mask, other=0.0)
        kv_head = head // group
        page_row = seq.to(tl.int64) * stride_pt
        kv_end = tl.minimum(kv_len, prefix + (m_block + 1) * BLOCK_M)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for n0 in range(0, kv_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < kv_end
            k, v = _load_kv_block(K_CACHE, V_CACHE, PAGE_TABLE, page_row, offs_n, n_mask,
                                  kv_head, num_kv_heads, head_dim, offs_d, d_mask, PAGE_SIZE)
            s = tl.dot(q, tl.trans(k.to(q.dtype))) * sm_scale_log2
            # Every row sees key 0, so no row is all -inf and the softmax never divides by 0.
            seen = (offs_n[None, :] <= (prefix + offs_m)[:, None]) & n_mask[None, :]
            s = tl.where(seen, s, float("-inf"))
            m_i, l_i, acc = _online_softmax_step(s, v.to(q.dtype), m_i, l_i, acc)
        out = acc / l_i[:, None]
        tl.store(OUT + toks[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=q_mask)
