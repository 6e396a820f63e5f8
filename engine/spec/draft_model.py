"""The draft-model interface: drafters that run a network, each with its own per-request KV.

A ``DraftModelDrafter`` drafts greedily, one forward of its network per drafted token. It keeps,
per request, a contiguous KV buffer for its own layers (``DraftKV``), never the engine's pages:
the target's paged cache holds verified tokens only, and a draft network's keys are not the
target's (other layers or other weights).

Catch-up: a proposal first runs the tokens appended since the previous one (the whole prompt at
the first, in chunks of ``PREFILL_CHUNK``). KV at a position depends only on the tokens up to
it, so drafts fed last time that the target then accepted keep their KV: usually only the bonus
token runs, and a proposal of ``k`` drafts is ``k`` forwards of one or two tokens.

Cost: milliseconds per request per step, not the microseconds of the model-free drafters; the
back-off and the batch rule of ``engine.spec.manager`` decide when drafting pays. Draft ids stay
on the device until the proposal ends, so a proposal syncs with a GPU once.

Not covered yet: heads that read the target's hidden states (EAGLE, MTP) need the runner to hand
over the last verify step's hidden rows; the interface has no such input today.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine.spec.base import Drafter, catch_up

if TYPE_CHECKING:
    from engine.request import Request

PREFILL_CHUNK = 512  # tokens per catch-up forward: bounds the (chunk, context) attention scores
MIN_CAPACITY = 256  # first DraftKV size in tokens; it doubles when full


class DraftKV:
    """Keys and values of one sequence for ``num_layers`` layers, contiguous by position.

    Grows by doubling (a copy of this buffer, which is the draft's own; the engine's paged KV
    is never touched). ``k``/``v``: (num_layers, capacity, num_kv_heads, head_dim).
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        shape = (num_layers, MIN_CAPACITY, num_kv_heads, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def reserve(self, num_tokens: int) -> None:
        """Make room for positions ``0 .. num_tokens - 1`` (kept contents stay)."""
        if num_tokens <= self.capacity:
            return
        capacity = max(2 * self.capacity, num_tokens)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_empty((old.shape[0], capacity, *old.shape[2:]))
            new[:, : old.shape[1]] = old
            setattr(self, name, new)


class DraftAttention:
    """Causal attention of one sequence over its ``DraftKV``.

    Has the ``forward`` of ``kernels.attention.AttentionBackend`` (all the model's layers call),
    so the target's own decoder layers run on it unchanged; ``plan`` takes the new tokens'
    positions ``start .. start + num_tokens - 1`` instead of a paged batch.
    """

    def __init__(self, kv: DraftKV, scale: float) -> None:
        self.kv = kv
        self.scale = scale
        self._start = self._end = 0
        self._mask: torch.Tensor | None = None

    def plan(self, start: int, num_tokens: int) -> None:
        self.kv.reserve(start + num_tokens)
        self._start, self._end = start, start + num_tokens
        self._mask = None
        if num_tokens > 1 and start > 0:  # a chunk after cached positions: causal, offset
            q_pos = torch.arange(start, self._end)
            mask = torch.arange(self._end)[None, :] <= q_pos[:, None]  # (num_tokens, end)
            self._mask = mask.to(self.kv.k.device)

    def forward(
        self,
        layer_id: int,
        q: torch.Tensor,  # (num_tokens, num_q_heads, head_dim)
        k: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
        v: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
    ) -> torch.Tensor:  # (num_tokens, num_q_heads, head_dim)
        start, end = self._start, self._end
        self.kv.k[layer_id, start:end] = k
        self.kv.v[layer_id, start:end] = v
        # (1, heads, len, head_dim) views for SDPA; KV heads are shared by query groups.
        q_i = q.transpose(0, 1).unsqueeze(0)
        k_i = self.kv.k[layer_id, :end].transpose(0, 1).unsqueeze(0)
        v_i = self.kv.v[layer_id, :end].transpose(0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(
            q_i, k_i, v_i, attn_mask=self._mask, scale=self.scale, enable_gqa=True,
            is_causal=self._mask is None and start == 0 and end > 1,
        )
        return out.squeeze(0).transpose(0, 1)


class _RequestState:
    __slots__ = ("attn", "fed", "tokens")

    def __init__(self, attn: DraftAttention) -> None:
        self.tokens: list[int] = []  # prompt + output as of the last proposal, all with KV
        self.fed: list[int] = []  # drafts run after ``tokens`` last time (KV right after them)
        self.attn = attn


class DraftModelDrafter(Drafter):
    """A drafter that runs a network greedily; subclasses define the network in ``forward``.

    Engine loop thread only, like every drafter. Per-request state (token copy and ``DraftKV``)
    lives until ``release``. ``propose`` runs under ``torch.inference_mode``.
    """

    uses_model = True

    def __init__(self, max_draft_len: int, *, num_layers: int, num_kv_heads: int, head_dim: int,
                 scale: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(max_draft_len)
        self._kv_args = (num_layers, num_kv_heads, head_dim, dtype, device)
        self.scale = scale
        self.device = device
        self._requests: dict[str, _RequestState] = {}

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn: DraftAttention) -> torch.Tensor:
        """Logits (vocab,) float32 for the token after the last of ``input_ids``.

        ``input_ids``/``positions``: (num_tokens,) int64 on ``self.device``, consecutive
        positions; ``attn`` is planned for them and stores their KV as the layers run.
        """

    @torch.inference_mode()
    def propose(self, request: Request, max_len: int) -> list[int]:
        # Drafted positions must exist in the model's position table: stay in the window.
        max_len = min(max_len, self.max_draft_len, request.max_len - request.num_tokens)
        if max_len <= 0:
            return []
        state = self._requests.get(request.request_id)
        if state is None:
            attn = DraftAttention(DraftKV(*self._kv_args), self.scale)
            state = self._requests[request.request_id] = _RequestState(attn)
        done = catch_up(state.tokens, request)
        tokens = state.tokens
        kept = 0
        for fed, token in zip(state.fed, tokens[done:]):
            if fed != token:
                break
            kept += 1
        start = min(done + kept, len(tokens) - 1)  # the last token always runs: its logits
        for first in range(start, len(tokens), PREFILL_CHUNK):
            chunk = tokens[first : first + PREFILL_CHUNK]
            ids = torch.tensor(chunk, dtype=torch.int64).to(self.device, non_blocking=True)
            logits = self._run(state.attn, ids, first)
        next_id = logits.argmax(-1, keepdim=True)  # (1,) int64, stays on the device
        drafts = [next_id]
        for i in range(1, max_len):
            next_id = self._run(state.attn, next_id, len(tokens) + i - 1).argmax(-1, keepdim=True)
            drafts.append(next_id)
        draft_ids = torch.cat(drafts).tolist()
        state.fed = draft_ids[:-1]
        return draft_ids

    def _run(self, attn: DraftAttention, input_ids: torch.Tensor, start: int) -> torch.Tensor:
        num_tokens = input_ids.shape[0]
        positions = torch.arange(start, start + num_tokens, dtype=torch.int64, device=self.device)
        attn.plan(start, num_tokens)
        return self.forward(input_ids, positions, attn)

    def release(self, request: Request) -> None:
        self._requests.pop(request.request_id, None)
