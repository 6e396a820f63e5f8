"""One scheduled step as flat token-level lists: everything a device needs to run the forward.

The scheduler's output speaks in requests; the runner flattens it into a ``StepBatch`` (pure
Python, no torch) and runs the forward on that alone. Tensor-parallel ranks other than 0 receive
exactly this message, so it is a ``msgspec.Struct`` (array-like: compact msgpack). Sampling,
grammars and drafts stay with rank 0, which holds the requests.
"""

from __future__ import annotations

import msgspec

from engine.scheduler import SchedulerOutput


class StepBatch(msgspec.Struct, array_like=True):
    input_ids: list[int]  # (num_tokens,) every scheduled token, requests one after another
    positions: list[int]  # (num_tokens,)
    slots: list[int]  # (num_tokens,) KV cache slot each token writes (page * page_size + offset)
    q_lens: list[int]  # (num_seqs,) tokens this step per request
    kv_lens: list[int]  # (num_seqs,) context after this step per request
    page_table: list[list[int]]  # (num_seqs, pages) page ids of each request
    sample_rows: list[int]  # rows of the flat batch whose logits are needed, in order
    # Partial-page reuse to perform first: copy the first n slots of src_page to dst_page.
    copies: list[tuple[int, int, int]] = []
    # Overlap scheduling: (flat row, row of the previous step's sampled tokens) for inputs that
    # are still on the device; their ``input_ids`` entry is a placeholder 0.
    prev_rows: list[tuple[int, int]] = []


def build_step_batch(out: SchedulerOutput, page_size: int) -> StepBatch:
    """Flatten ``out``. A request with drafts feeds its known tokens, then its drafts, and needs
    logits at its last known token and at each draft."""
    input_ids, positions, slots = [], [], []
    q_lens, kv_lens, page_table, sample_rows, prev_rows = [], [], [], [], []
    for scheduled in out.requests:
        request, start, n = scheduled.request, scheduled.start, scheduled.num_new_tokens
        pages, drafts = request.page_ids, scheduled.draft_ids
        if scheduled.prev_row is not None:
            prev_rows.append((len(input_ids), scheduled.prev_row))
            input_ids.append(0)
        else:
            input_ids.extend(request.all_ids[start: start + n - len(drafts)])
        input_ids.extend(drafts)
        positions.extend(range(start, start + n))
        slots.extend(pages[pos // page_size] * page_size + pos % page_size
                     for pos in range(start, start + n))
        q_lens.append(n)
        kv_lens.append(start + n)
        page_table.append(pages)
        if scheduled.sample:
            sample_rows.extend(range(len(input_ids) - 1 - len(drafts), len(input_ids)))
    return StepBatch(input_ids, positions, slots, q_lens, kv_lens, page_table, sample_rows,
                     list(out.copies), prev_rows)
