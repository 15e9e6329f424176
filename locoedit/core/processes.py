"""The processes a run is shared by: this one alone, or every process ``accelerate launch`` (or ``torchrun``) started.

Work is split with accelerate's ``PartialState.split_between_processes`` (contiguous, near-equal shares in process
order), and processes meet at :meth:`Processes.wait`. A process's device comes from its ``PartialState``: ``cuda:N``
for local process N on a GPU machine, the CPU otherwise (or with ``ACCELERATE_USE_CPU``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    index: int  # this process, 0 .. count - 1
    count: int
    device: str | None  # None: the library's default device (a single process chooses as it always has)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def shared(self) -> bool:
        return self.count > 1

    def share(self, items: list[T]) -> list[T]:
        """This process's contiguous share of ``items`` (all of them when alone)."""
        if not self.shared:
            return list(items)
        with _state().split_between_processes(list(items)) as mine:
            return list(mine)

    def wait(self) -> None:
        if self.shared:
            _state().wait_for_everyone()

    def gather(self, item: T) -> list[T]:
        """Every process's ``item``, in process order (a collective: every process must call it)."""
        if not self.shared:
            return [item]
        from accelerate.utils import gather_object

        return gather_object([item])


def _launched() -> bool:
    """Whether a launcher started several processes (torchrun sets WORLD_SIZE; ``accelerate launch --multi_gpu`` uses
    torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@cache
def _state():
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState only recognises CPU processes when told so; accelerate's own Accelerator reads the same flag.
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def current_processes() -> Processes:
    """The processes this one shares its run with."""
    if not _launched():
        if os.environ.get("ACCELERATE_USE_CPU") and os.environ.get("MASTER_ADDR"):
            # accelerate 1.15's `launch --cpu --num_processes N` starts N processes only through MPI
            # (--mpirun_hostfile); without it one process runs everything, which is correct but not what was asked.
            logger.warning(
                "accelerate started one CPU process; for several use `accelerate launch --multi_gpu "
                "--num_processes N` on a machine without CUDA (torchrun underneath) or `torchrun "
                "--nproc_per_node N -m locoedit ...`"
            )
        return Processes(0, 1, None)
    state = _state()
    return Processes(state.process_index, state.num_processes, str(state.device))


def is_main_process() -> bool:
    """Whether this process speaks for the run (prints results and errors); true when alone. Decided from the
    launcher's environment, so that it holds before any process group exists."""
    return int(os.environ.get("RANK", "0")) == 0
