"""A tensor-parallel rank other than 0: build the same runner (its shard), then mirror rank 0.

Started by rank 0 (``python -m engine.parallel.worker CONFIG_JSON`` with the rank in the
environment) or by a launcher running ``agentspeed serve --tp N`` on every rank
(``runtime.cli`` calls ``run_worker``). The loop ends on ``StopWorker`` (exit 0); a lost rank 0
or a failed step ends it with exit code 1, which rank 0 (or the launcher) reports.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

from engine.config import EngineConfig
from engine.parallel.channel import RunSessionOps, RunStep, StopWorker
from engine.parallel.group import TensorParallelError
from engine.parallel.launch import launched_env

logger = logging.getLogger(__name__)


def run_worker(config: EngineConfig) -> int:
    """Serve rank 0's steps until told to stop; the process exit code."""
    from engine.model_runner import ModelRunner

    env = launched_env()
    assert env is not None and env.rank > 0, "a worker needs RANK > 0 in its environment"
    if env.spawned_by is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when we stop
    try:
        runner = ModelRunner(config)  # joins the group, loads its shard, captures graphs
    except TensorParallelError as exc:
        logger.error("rank %d: %s", env.rank, exc)
        return 1
    except Exception:
        logger.exception("tensor-parallel rank %d failed to start", env.rank)
        return 1
    tp = runner.tp
    while True:
        try:
            message = tp.channel.recv()
        except TensorParallelError:
            logger.error("rank %d: lost rank 0; exiting", env.rank)
            tp.close(abort=True)
            return 1
        if isinstance(message, StopWorker):
            runner.shutdown()
            return 0
        try:
            if isinstance(message, RunSessionOps):
                runner.host_tier.execute(message.ops)
            else:
                assert isinstance(message, RunStep), type(message)
                runner.forward(message.batch)
        except Exception:  # the ranks are out of step now: end the group, loudly
            logger.exception("tensor-parallel rank %d failed a step", env.rank)
            tp.close(abort=True)
            return 1


def main() -> int:
    logging.basicConfig(level=logging.WARNING,
                        format="%(levelname)s tp-worker %(name)s: %(message)s")
    config = EngineConfig(**json.loads(sys.argv[1]))
    return run_worker(config)


if __name__ == "__main__":
    sys.exit(main())
