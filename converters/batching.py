"""Profiles and batching decided together, from the same numbers.

The engine's optimization profile (batch 1..max, opt from `--input-size`), Triton's
`max_batch_size` and every `preferred_batch_size` come from one `BatchPlan`, so Triton never
forms a batch the engine cannot take (the original used exact-size profiles and its dynamic
batcher could form a batch that no profile accepted).
"""
from __future__ import annotations

from dataclasses import dataclass

from converters.errors import UserError
from converters.io_config import IOConfig, TensorSpec

Shape = tuple[int, ...]


def default_preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from 1 up to the max batch size (the max itself included)."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


@dataclass(frozen=True)
class BatchPlan:
    max_batch_size: int
    opt_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    sequence_length: int  # the size of every dynamic dimension at the opt shape

    @classmethod
    def create(cls, max_batch_size: int, input_size: tuple[int | None, int],
               preferred: tuple[int, ...] | None) -> "BatchPlan":
        if max_batch_size < 1:
            raise UserError(f"--max-batch-size must be at least 1, got {max_batch_size}.")
        batch, length = input_size
        if length is None:
            raise UserError("--input-size sequence length must be a number (only the batch may be None), got None.")
        if length < 1:
            raise UserError(f"--input-size sequence length must be at least 1, got {length}.")
        # A missing batch (the documented default `None 128`) means: optimise for the max batch.
        opt = max_batch_size if batch is None else batch
        if not 1 <= opt <= max_batch_size:
            raise UserError(
                f"--input-size batch {opt} must lie within 1..--max-batch-size ({max_batch_size})."
            )
        preferred = default_preferred_batch_sizes(max_batch_size) if preferred is None else tuple(preferred)
        bad = [p for p in preferred if not 1 <= p <= max_batch_size]
        if bad:
            raise UserError(
                f"--preferred-batch-sizes {','.join(map(str, bad))} lie outside the engine profile "
                f"1..{max_batch_size}; lower them or raise --max-batch-size."
            )
        return cls(max_batch_size, opt, tuple(sorted(set(preferred))), length)

    def sample_shape(self, spec: TensorSpec, batch: int | None = None) -> Shape:
        """The export/check sample shape: dynamic dims take the sequence length."""
        dims = tuple(self.sequence_length if d == -1 else d for d in spec.shape)
        return (self.opt_batch_size if batch is None else batch,) + dims

    def profile(self, spec: TensorSpec) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) shapes of one input, batch included."""
        min_dims = tuple(1 if d == -1 else d for d in spec.shape)
        opt_dims = tuple(self.sequence_length if d == -1 else d for d in spec.shape)
        max_dims = spec.max_shape or opt_dims
        return (1,) + min_dims, (self.opt_batch_size,) + opt_dims, (self.max_batch_size,) + tuple(max_dims)

    def profiles(self, io: IOConfig) -> dict[str, tuple[Shape, Shape, Shape]]:
        return {spec.name: self.profile(spec) for spec in io.inputs}
