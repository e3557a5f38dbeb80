"""4-bit block-quantised weights for the monitor graph (weight-only: activations stay float).

- `Q4Linear`: a projection `y = x W^T` with W stored as 4-bit codes per block of 32 inputs, `W = scale * (code - 8)
  + offset`. The graph runs it as ONNX Runtime's `MatMulNBits` (CPU and CUDA kernels; default zero point 8) plus a
  small float MatMul of per-block input sums by `offset`, which represents GGML's Q4_1 blocks (`d * q + m`) exactly.
- `Q4Table`: an embedding table stored the same way (codes, fp16 scale and minimum per block), gathered by row and
  dequantised with plain ONNX ops.
Weight-only quantisation reads every token the same way however a conversation is batched or split into turns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """[..., 2n] codes 0..15 -> [..., n] bytes, element 2j in the low nibble and 2j+1 in the high nibble."""
    codes = codes.astype(np.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def quantize_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric round-to-nearest 4-bit codes per block of 32 along the last axis: (codes, scale, minimum)."""
    rows, cols = weight.shape
    w = weight.astype(np.float32).reshape(rows, cols // BLOCK, BLOCK)
    lo, hi = w.min(-1), w.max(-1)
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint((w - lo[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    return codes.reshape(rows, cols), scale, lo.astype(np.float32)


@dataclass
class Q4Linear:
    """W [N, K] = scale * (code - 8) + offset, per block of 32 along K. `codes` [N, K] (unpacked), `scale` and
    `offset` [N, K / 32] float32."""

    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray

    @classmethod
    def from_codes(cls, codes: np.ndarray, scale: np.ndarray, minimum: np.ndarray) -> Q4Linear:
        """From `W = scale * code + minimum` (GGML Q4_1, or `quantize_blocks`)."""
        scale = scale.astype(np.float32)
        return cls(codes.astype(np.uint8), scale, (minimum.astype(np.float32) + 8.0 * scale).astype(np.float32))

    @classmethod
    def quantize(cls, weight: np.ndarray) -> Q4Linear:
        return cls.from_codes(*quantize_blocks(weight))

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        n, k = self.codes.shape
        codes = self.codes.reshape(n, k // BLOCK, BLOCK).astype(np.float32) - 8.0
        return (codes * self.scale[..., None] + self.offset[..., None]).reshape(n, k)

    def scaled(self, factor: float) -> Q4Linear:
        f = np.float32(factor)
        return Q4Linear(self.codes, self.scale * f, self.offset * f)

    def rows(self, start: int, stop: int) -> Q4Linear:
        """Output rows `start:stop` (one projection of a fused one; the inverse of `stack`)."""
        return Q4Linear(self.codes[start:stop], self.scale[start:stop], self.offset[start:stop])

    @staticmethod
    def stack(parts: list[Q4Linear]) -> Q4Linear:
        """Rows of several projections in one (a fused q/k/v or gate/up projection)."""
        return Q4Linear(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("codes", "scale", "offset")))

    def packed(self) -> np.ndarray:
        """`MatMulNBits` input B: [N, K / 32, 16] bytes."""
        n, k = self.codes.shape
        return pack_nibbles(self.codes.reshape(n, k // BLOCK, BLOCK))


@dataclass
class Q4Table:
    """An embedding table [V, D] as 4-bit codes with an fp16 scale and minimum per block of 32 along D. With `index`
    (a pruned vocabulary), token id `i` reads stored row `index[i]`."""

    packed: np.ndarray  # [R, D / 2] uint8
    scale: np.ndarray  # [R, D / 32] float16
    minimum: np.ndarray  # [R, D / 32] float16
    index: np.ndarray | None = None  # [V] int32, token id -> stored row; None: row = id

    @classmethod
    def quantize(cls, table: np.ndarray) -> Q4Table:
        codes, scale, lo = quantize_blocks(table)
        return cls(pack_nibbles(codes), scale.astype(np.float16), lo.astype(np.float16))

    @property
    def shape(self) -> tuple[int, int]:
        rows = self.packed.shape[0] if self.index is None else len(self.index)
        return rows, self.packed.shape[1] * 2

    def padded(self, rows: int) -> Q4Table:
        """The table with zero rows appended up to `rows` (ids the tokenizer has but the checkpoint does not: the
        label tokens, never fed as input, still get a valid row)."""
        extra = rows - self.shape[0]
        if extra <= 0:
            return self
        if self.index is not None:
            raise ValueError("pad the table before pruning it")
        return Q4Table(np.concatenate([self.packed, np.zeros((extra, self.packed.shape[1]), np.uint8)]),
                       np.concatenate([self.scale, np.ones((extra, self.scale.shape[1]), np.float16)]),
                       np.concatenate([self.minimum, np.zeros((extra, self.minimum.shape[1]), np.float16)]))

    def pruned(self, keep: np.ndarray) -> Q4Table:
        """Only the rows of the ids where `keep` is true, bit for bit, plus one shared row (the mean of the dropped
        rows) that every other id reads: a smaller table that reads kept ids exactly as before."""
        if self.index is not None:
            raise ValueError("the table is already pruned")
        keep = np.asarray(keep, bool)
        if keep.shape != (self.shape[0],):
            raise ValueError(f"keep must have one flag per id ({self.shape[0]})")
        kept, dropped = np.flatnonzero(keep), np.flatnonzero(~keep)
        parts = [(self.packed[kept], self.scale[kept], self.minimum[kept])]
        if len(dropped):
            shared = Q4Table.quantize(self.dequantize(dropped).mean(0, keepdims=True))
            parts.append((shared.packed, shared.scale, shared.minimum))
        index = np.full(len(keep), len(kept), np.int32)
        index[kept] = np.arange(len(kept), dtype=np.int32)
        return Q4Table(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)), index=index)

    def dequantize(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Float rows of token ids `rows` (all ids by default)."""
        stored = rows if self.index is None else self.index[rows]
        codes = unpack_nibbles(self.packed[stored]).astype(np.float32)
        v, d = codes.shape
        codes = codes.reshape(v, d // BLOCK, BLOCK)
        scale = self.scale[stored].astype(np.float32)[..., None]
        lo = self.minimum[stored].astype(np.float32)[..., None]
        return (codes * scale + lo).reshape(v, d)
