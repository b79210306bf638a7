"""The experimental protocol: which condition each volume belongs to.

Time zero is the start of the first volume kept after the dummy volumes.
Volumes that no block covers belong to the baseline condition, so a protocol
may list only its regulation blocks.
"""

from __future__ import annotations

from dataclasses import dataclass


class ProtocolError(ValueError):
    """A protocol that cannot be laid out on the run (overlap, too long, ...)."""


@dataclass(frozen=True)
class Block:
    """One block of one condition.

    Parameters
    ----------
    condition : str
        Condition name.
    onset_s : float
        Onset in seconds from the first kept volume.
    duration_s : float
        Duration in seconds.
    source : str
        Where the block came from in the config, for error messages
        (for example ``"protocol.blocks[2]"``).
    """

    condition: str
    onset_s: float
    duration_s: float
    source: str = ""

    @property
    def end_s(self) -> float:
        """End time in seconds (exclusive)."""
        return self.onset_s + self.duration_s


@dataclass(frozen=True)
class Segment:
    """A run of consecutive volumes with the same condition.

    ``start`` and ``stop`` are volume indices counted from the first kept
    volume, ``stop`` exclusive; ``number`` counts segments from 0.
    """

    number: int
    condition: str
    start: int
    stop: int


@dataclass(frozen=True)
class Protocol:
    """Conditions laid out over the kept volumes of a run.

    Parameters
    ----------
    blocks : tuple of Block
        Explicit blocks, sorted by onset, not overlapping.
    baseline : str
        Condition of every volume no block covers.
    conditions : tuple of str
        All conditions, baseline included, in a stable order.
    tr_s : float
        Repetition time in seconds.
    n_volumes : int
        Number of kept volumes (dummies excluded).
    """

    blocks: tuple[Block, ...]
    baseline: str
    conditions: tuple[str, ...]
    tr_s: float
    n_volumes: int

    def __post_init__(self) -> None:
        _check_blocks(self.blocks, self.tr_s * self.n_volumes)

    @property
    def task_conditions(self) -> tuple[str, ...]:
        """Conditions other than the baseline: one GLM regressor each."""
        return tuple(c for c in self.conditions if c != self.baseline)

    def labels(self) -> list[str]:
        """Condition of each kept volume, judged at the volume's start time."""
        labels = [self.baseline] * self.n_volumes
        for block in self.blocks:
            for i in range(self.n_volumes):
                t = i * self.tr_s
                # A small tolerance keeps onsets given in seconds that are
                # multiples of the TR from flipping on rounding.
                if block.onset_s - 1e-6 <= t < block.end_s - 1e-6:
                    labels[i] = block.condition
        return labels

    def segments(self) -> list[Segment]:
        """Consecutive volumes of one condition, in order."""
        labels = self.labels()
        segments: list[Segment] = []
        start = 0
        for i in range(1, self.n_volumes + 1):
            if i == self.n_volumes or labels[i] != labels[start]:
                segments.append(Segment(len(segments), labels[start], start, i))
                start = i
        return segments

    def task_blocks(self) -> list[Block]:
        """Blocks of non-baseline conditions, for the design matrix."""
        return [b for b in self.blocks if b.condition != self.baseline]


def _check_blocks(blocks: tuple[Block, ...], run_s: float) -> None:
    for prev, block in zip(blocks, blocks[1:]):
        if block.onset_s < prev.end_s - 1e-9:
            raise ProtocolError(
                f"{block.source} ({block.condition!r}, onset {block.onset_s:g} s) overlaps "
                f"{prev.source} ({prev.condition!r}, {prev.onset_s:g}-{prev.end_s:g} s). "
                "Allowed: blocks that do not overlap."
            )
    for block in blocks:
        if block.end_s > run_s + 1e-9:
            raise ProtocolError(
                f"{block.source} ({block.condition!r}, {block.onset_s:g}-{block.end_s:g} s) "
                f"ends after the run: the kept volumes cover {run_s:g} s "
                "(scanner.n_volumes minus scanner.dummy_volumes, times scanner.tr_s). "
                "Allowed: blocks that end within the run."
            )
