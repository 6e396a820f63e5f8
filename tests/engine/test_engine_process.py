"""The engine loop's error policy: a failed step fails its requests and the loop goes on, unless
the error poisons the CUDA context, which ends the engine (and so the server) at once."""

from __future__ import annotations

import msgspec
import pytest
import torch

from engine.config import EngineConfig
from engine.engine_core import EngineCore
from engine.engine_process import DeviceFailure, _Loop, is_device_fatal
from engine.ipc import FromEngine, RequestFailed
from engine.sampling_params import SamplingParams


class _Outbox:
    """Collects what the loop would push to the API process."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)


def test_is_device_fatal() -> None:
    assert is_device_fatal(torch.AcceleratorError("CUDA error: an illegal memory access"))
    assert is_device_fatal(RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when ..."))
    assert not is_device_fatal(torch.OutOfMemoryError("CUDA out of memory. Tried to ..."))
    assert not is_device_fatal(ValueError("bad grammar"))


@pytest.mark.parametrize("error", [ValueError("a bug in one step"),
                                   RuntimeError("CUDA error: an illegal memory access")])
def test_failed_step_fails_its_requests(tiny_qwen3_path: str, monkeypatch, error) -> None:
    core = EngineCore(EngineConfig(model=tiny_qwen3_path, num_pages=32))
    outbox = _Outbox()
    loop = _Loop(core, outbox, msgspec.msgpack.Encoder())
    core.add_request("r1", [1, 2, 3], SamplingParams(max_tokens=4))

    def fail() -> None:
        raise error

    monkeypatch.setattr(core, "step", fail)
    if is_device_fatal(error):
        with pytest.raises(DeviceFailure, match="cannot recover"):
            loop.step()
    else:
        loop.step()  # the loop goes on
    decoded = [msgspec.msgpack.decode(f, type=FromEngine) for f in outbox.sent]
    assert [type(m) for m in decoded] == [RequestFailed]
    assert decoded[0].request_id == "r1" and decoded[0].server_error
    assert not core.has_unfinished()
    core.scheduler.check_integrity()
