"""Immunize many images across processes, GPUs and machines: each process takes its own share of the files.

Under ``accelerate launch`` (or ``torchrun``) every process runs the same command on the same file
list; accelerate's :class:`~accelerate.PartialState` says which process this is and which device it
owns. Process ``r`` of ``w`` takes files ``r, r + w, r + 2w, ...`` and writes them, so the union of
the outputs is every input exactly once and no two processes ever write the same file. Apart from
joining the process group at the start, no process waits for another. A restarted run with
``--resume`` skips the files whose outputs are complete (see
:func:`forwardguard.immunize.runner.finished`), each process in its own share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's share: process ``index`` of ``count``, attacking on ``device``."""

    index: int = 0
    count: int = 1
    device: str = "auto"

    @classmethod
    def from_launcher(cls, device: str) -> Shard:
        """The launcher's process and, for ``auto``/``cuda`` under several processes, its own GPU."""
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
        if state.num_processes > 1 and device in ("auto", "cuda") and state.device.type == "cuda":
            device = str(state.device)
        return cls(index=state.process_index, count=state.num_processes, device=device)

    @property
    def distributed(self) -> bool:
        return self.count > 1

    def select(self, items: Sequence[T]) -> list[T]:
        """Items ``index``, ``index + count``, ...: the same list in every process gives disjoint shares."""
        return list(items[self.index :: self.count])
