"""The experimental protocol: which condition each volume belongs to.

Time zero is the start of the first volume kept after the dummy volumes.
Volumes that no block covers belong to the baseline condition, so a protocol
may list only its regulation blocks. Blocks end at the run's end at the
latest; what a block leaves in the run's last half TR is dropped, never kept
as a sliver of a few milliseconds (see ``_clip_to_run``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Which way of the ROI's signal is success in a task condition (the default is the first): the
# values the wire carries, defined once there.
from rtnf.wire.topics import DIRECTIONS


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
    directions : dict of str to str, optional
        Task condition -> ``"increase"`` or ``"decrease"``: which way of the
        ROI's signal is success in its blocks. Task conditions not given
        increase; the baseline has no direction.
    """

    blocks: tuple[Block, ...]
    baseline: str
    conditions: tuple[str, ...]
    tr_s: float
    n_volumes: int
    directions: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_blocks(self.blocks, self.tr_s * self.n_volumes)
        object.__setattr__(self, "blocks", _clip_to_run(self.blocks, self.tr_s, self.n_volumes, self.baseline))
        for condition, direction in self.directions.items():
            if condition not in self.task_conditions:
                raise ProtocolError(
                    f"direction given for {condition!r}, which is not a task condition. "
                    f"Allowed: one of the task conditions {list(self.task_conditions)} (the baseline has none)."
                )
            if direction not in DIRECTIONS:
                raise ProtocolError(
                    f"invalid direction {direction!r} for condition {condition!r}. Allowed: {list(DIRECTIONS)}."
                )
        full = {c: self.directions.get(c, DIRECTIONS[0]) for c in self.task_conditions}
        object.__setattr__(self, "directions", full)

    @property
    def task_conditions(self) -> tuple[str, ...]:
        """Conditions other than the baseline: one GLM regressor each."""
        return tuple(c for c in self.conditions if c != self.baseline)

    def direction(self, condition: str) -> str | None:
        """``"increase"`` or ``"decrease"`` for a task condition; None for the baseline (no regulation asked)."""
        return self.directions.get(condition)

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


def _clip_to_run(blocks: tuple[Block, ...], tr_s: float, n_volumes: int, baseline: str) -> tuple[Block, ...]:
    """Blocks ending exactly at the run's end, without slivers.

    A block may pass the end by a floating-point remainder (blocks in
    volumes times a TR such as 1.97 s, or the tolerance of the overlap and
    length checks): it is clipped to the end exactly. What is left of a
    block in the run's last half TR after clipping covers no volume's start,
    so it labels no volume; as an event it would be a sliver of a few
    milliseconds (a near-empty regressor in the design, a flash in the
    simulator), so it is dropped. A task condition left without any block
    is an error, as a protocol without it would be.

    Parameters
    ----------
    blocks : tuple of Block
        Checked blocks, sorted by onset (seconds from the first kept volume).
    tr_s : float
        Repetition time in seconds.
    n_volumes : int
        Number of kept volumes.
    baseline : str
        The baseline condition (it needs no block).

    Returns
    -------
    tuple of Block
    """
    run_s = tr_s * n_volumes
    kept: list[Block] = []
    for block in blocks:
        end_s = min(block.end_s, run_s)
        if end_s >= run_s - 1e-6 and end_s - block.onset_s < 0.5 * tr_s:
            continue  # a sliver at the end of the run: no volume starts in it
        kept.append(block if end_s == block.end_s else replace(block, duration_s=end_s - block.onset_s))
    lost = {b.condition for b in blocks} - {b.condition for b in kept} - {baseline}
    for condition in sorted(lost):
        source = next(b.source for b in blocks if b.condition == condition)
        raise ProtocolError(
            f"{source} ({condition!r}) covers no volume: it lies in the last half TR of the run "
            f"({run_s:g} s) and is the condition's only block. Allowed: blocks that cover at least "
            "one volume's start."
        )
    return tuple(kept)


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
