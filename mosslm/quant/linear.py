"""Weight-only quantized linears: int8 per output channel and group of inputs, int4 in groups along the input.

The formats are the ones torch's own CPU kernels read, so nothing is converted per call:
- int8: w = q * scale, q in [-127, 127] (symmetric), one scale per output row and group of `group_size`
  inputs (64 by default, as llama.cpp's Q8_0 has one per 32), or per output row alone (group size 0;
  `torch.ops.aten._weight_int8pack_mm(x, q[N, K], scale[N])` reads that one where mosslm's kernel cannot run).
- int4: w = (q - 8) * scale + zero, q in [0, 15], one (scale, zero) per `group_size` inputs
  of a row (asymmetric: the group's min and max are exact);
  `torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scale_and_zero[K/g, N, 2])`
  after `_convert_weight_to_int4pack_for_cpu` packs the values once, at load.
On disk int4 values are two to a byte (low nibble first) in row order, a layout that does not depend on
the CPU; the kernel's own packing is made when the folder loads. On x86 CPUs with AVX2 or AVX-512 VNNI
the layers run mosslm's own kernel on that very layout instead (q4_kernel.py: int8 activations, faster
for a few rows). Where a kernel is missing (another device, an old torch) the layer multiplies by its
dequantized weight: slower, same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import q4_kernel

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the CPU int4 kernel takes
# int8 groups: multiples of the kernel's 64-input block. One scale per output row alone (0) costs SmolLM2-135M
# +1.1-1.2% perplexity over fp32 through the int8-activation kernel, groups of 64 +0.5% (benchmarks/quant.py).
INT8_GROUP_SIZES = (64, 128, 256)
INT8_DEFAULT_GROUP = 64
# torch's int8 kernel is a matrix-vector loop: its time grows with every row (measured on 2 Xeon cores:
# 16 rows 4.6x one row). Above this many rows (prefill, perplexity, wide batches) the layer converts its
# int8 values to the activation dtype block by block (exact: |q| <= 127 fits bf16's mantissa) and runs
# one matmul per block, the scale applied to the output: 64 rows of [1536 x 576] 0.20 ms against 0.65 ms.
INT8_MATMUL_ROWS = 16
INT8_BLOCK_ROWS = 4096  # output rows converted at a time: a few MB that the allocator reuses
# mosslm's int4/int8 kernels take up to this many rows; more (prefill) convert blocks of weights to the
# activation dtype and run a matmul, as torch's int8 path does. The AVX2 build's tiles of eight rows beat
# that up to 256 rows, where activations are fp32 anyway (576 x 3072 on 2 Zen 3 cores, 256 rows: int4 8.7
# against 9.6 ms, int8 7.6 against 9.0; 32 rows: 1.5 against 7.4); the AVX-512 build hands over at 32, where
# the matmul may run in bf16 (AMX). Q4_KERNEL_ROWS, when set, overrides both (benchmarks/quant.py).
KERNEL_ROWS = {"avx2": 256, "avx512_vnni": 32}
Q4_KERNEL_ROWS: int | None = None


def kernel_row_limit() -> int:
    """How many rows mosslm's int4/int8 kernels take before a layer converts its weights for a matmul."""
    return _isa_row_limit() if Q4_KERNEL_ROWS is None else Q4_KERNEL_ROWS


def _isa_row_limit() -> int:
    return KERNEL_ROWS.get(q4_kernel.isa() or "", 32)


class QuantError(ValueError):
    pass


INT8_CLIP_RATIOS = torch.linspace(0.6, 1.0, 21)


def quantize_int8(weight: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [N, K], scale fp32 [N], or [N, K/g] with groups) with weight ~= q * scale per row or group.

    Each scale is the one of `INT8_CLIP_RATIOS` x the row's (group's) largest magnitude / 127 with the least
    squared error: a few outliers are clipped when that makes the grid finer for the rest (SmolLM2-135M's
    perplexity, one scale a row: +0.91% over fp32 with the plain max scale, +0.75% with this)."""
    if group_size:
        n, k = weight.shape
        if k % group_size:
            raise QuantError(f"input size {k} is not a multiple of the int8 group size {group_size}")
        q, scale = quantize_int8(weight.reshape(n * k // group_size, group_size))
        return q.view(n, k), scale.view(n, k // group_size)
    w = weight.detach().float()
    amax = w.abs().amax(dim=1).clamp(min=1e-12)
    best_scale, best_err = amax / 127, torch.full_like(amax, float("inf"))
    for ratio in INT8_CLIP_RATIOS:
        scale = amax * ratio / 127
        err = ((torch.round(w / scale[:, None]).clamp(-127, 127) * scale[:, None] - w) ** 2).sum(dim=1)
        better = err < best_err
        best_err, best_scale = torch.where(better, err, best_err), torch.where(better, scale, best_scale)
    q = torch.round(w / best_scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, best_scale


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q uint8 values 0..15 [N, K], scale fp32 [N, K/g], zero fp32 [N, K/g]) with
    weight ~= (q - 8) * scale + zero within each group of `group_size` inputs."""
    n, k = weight.shape
    if k % group_size:
        raise QuantError(f"input size {k} is not a multiple of the int4 group size {group_size}")
    w = weight.detach().float().view(n, k // group_size, group_size)
    lo, hi = w.amin(dim=2), w.amax(dim=2)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15)
    zero = lo + 8 * scale
    return q.to(torch.uint8).view(n, k), scale, zero


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 -> [N, K/2] bytes, even inputs in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    n, half = packed.shape
    out = torch.empty(n, half * 2, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q * scale with one scale per row ([N]) or per row and group ([N, K/g])."""
    if scale.dim() == 1:
        return q.float() * scale.float()[:, None]
    n, k = q.shape
    return (q.float().view(n, scale.shape[1], -1) * scale.float()[..., None]).view(n, k)


def check_int8_group_size(wanted: int | None) -> None:
    """Refuse an int8 group size the kernels do not take (None: the default, 0: one scale per output row)."""
    if wanted not in (None, 0, *INT8_GROUP_SIZES):
        raise QuantError(f"int8 --group-size must be 0 (a scale per output channel) or one of "
                         f"{', '.join(map(str, INT8_GROUP_SIZES))} (got {wanted})")


def _check_divides(in_features: list[int], group: int) -> None:
    bad = sorted({k for k in in_features if k % group})
    if bad:
        raise QuantError(f"input sizes {bad} are not multiples of group size {group}")


def default_int8_group(in_features: list[int], wanted: int | None = None) -> int | None:
    """The int8 group size for these layers: `wanted` (0: one scale per output row, returned as None) if
    every input size divides by it, else 64 where they all do, else one scale per row."""
    check_int8_group_size(wanted)
    if wanted is None:
        return INT8_DEFAULT_GROUP if all(k % INT8_DEFAULT_GROUP == 0 for k in in_features) else None
    if wanted:
        _check_divides(in_features, wanted)
    return wanted or None


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = q.shape
    g = q.float().view(n, k // group_size, group_size)
    return ((g - 8) * scale.float()[..., None] + zero.float()[..., None]).view(n, k)


def default_group_size(in_features: list[int], wanted: int | None = None) -> int:
    """The group size asked for if every input size divides by it, else the largest kernel size that does."""
    if wanted is not None:
        if wanted not in INT4_GROUP_SIZES:
            raise QuantError(f"--group-size must be one of {', '.join(map(str, INT4_GROUP_SIZES))} (got {wanted})")
        _check_divides(in_features, wanted)
        return wanted
    for g in (128, 64, 32):
        if all(k % g == 0 for k in in_features):
            return g
    raise QuantError(f"no int4 group size of {INT4_GROUP_SIZES} divides every input size ({sorted(set(in_features))})")


class QuantLinear(torch.nn.Module):
    """A linear layer with int8 or int4 weights; activations and output stay in the model's dtype.

    Buffers as saved: `qweight` (int8 [N, K], or int4 nibbles uint8 [N, K/2]), `scales` ([N] for int8,
    [N, K/g] for int4), `zeros` (int4 only), `bias` when the layer has one. `prepare()` makes the
    kernel's own int4 packing (and drops the portable copy) once the weights are in place."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None = None,
                 bias: bool = False, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise QuantError(f"bits must be 8 or 4 (got {bits})")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = group_size or None
        if bits == 8:
            if group_size and in_features % group_size:
                raise QuantError(f"int8 groups of {group_size} do not divide {in_features} inputs")
            self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
            shape = (out_features, in_features // group_size) if group_size else (out_features,)
            self.register_buffer("scales", torch.empty(*shape, dtype=dtype))
        else:
            if not group_size or in_features % group_size:
                raise QuantError(f"int4 needs a group size dividing {in_features} (got {group_size})")
            groups = in_features // group_size
            self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.empty(out_features, groups, dtype=dtype))
            self.register_buffer("zeros", torch.empty(out_features, groups, dtype=dtype))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype) if bias else None)
        self._packed: torch.Tensor | None = None        # the int4 kernel's layout, made by prepare()
        self._scale_zero: torch.Tensor | None = None    # [K/g, N, 2] in the activation dtype
        self._kernel: str | None = None
        self._cast_scales: torch.Tensor | None = None   # int8 scales in the activation dtype
        self._q4_sb: torch.Tensor | None = None         # q4own: fp16 [N, K/g, 2] (scale, zero - 8 scale)
        self._q8u: torch.Tensor | None = None           # q8own: uint8 [N, K], the int8 values plus 128
        self._q8_scale: torch.Tensor | None = None      # q8own: fp32 [N]
        self._kernel_rows = 32                          # q8own/q4own: the ISA's row limit, set by prepare()

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, bits: int, group_size: int | None = None) -> QuantLinear:
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None, w.dtype)
        if bits == 8:
            q, scale = quantize_int8(w, group_size)
            layer.qweight.copy_(q)
            layer.scales.copy_(scale)
        else:
            q, scale, zero = quantize_int4(w, group_size)
            layer.qweight.copy_(pack_nibbles(q))
            layer.scales.copy_(scale)
            layer.zeros.copy_(zero)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 weight these numbers stand for (what a plain linear would hold)."""
        if self.bits == 8:
            return dequantize_int8(self._int8_values(slice(None)), self.scales)
        if self._packed is not None and self.qweight.numel() == 0:
            raise QuantError("the portable int4 weights were dropped by prepare(keep_portable=False)")
        if self._kernel == "q4own":
            return self._q4_weight(slice(None))
        return dequantize_int4(unpack_nibbles(self.qweight), self.scales, self.zeros, self.group_size)

    def _q4_weight(self, rows: slice) -> torch.Tensor:
        """q4own: fp32 weights of some output rows from the kernel's fp16 (scale, offset) pairs."""
        q = unpack_nibbles(self.qweight[rows]).float()
        n, k = q.shape
        sb = self._q4_sb[rows].float()
        return (q.view(n, -1, self.group_size) * sb[..., :1] + sb[..., 1:]).view(n, k)

    def weight_bytes(self) -> int:
        """Bytes the forward reads for the weights (values and scales)."""
        tensors = [self._packed if self._packed is not None else self.qweight, self.scales]
        if self._kernel == "q4own":
            tensors = [self.qweight, self._q4_sb]
        elif self._kernel == "q8own":
            tensors = [self._q8u, self._q8_scale, self.scales]  # `scales` stay for the many-row path
        elif self.bits == 4:
            tensors.append(self.zeros)
        return sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def prepare(self, keep_portable: bool = False) -> str:
        """Choose the kernel for this device and make its weight layout; returns the kernel's name."""
        self._kernel = "dequantize"
        if self.qweight.device.type == "cpu":
            if self.bits == 8 and q4_kernel.supports_int8(self.in_features, self.group_size) and q4_kernel.load():
                # mosslm's kernel reads the values plus 128 (unsigned); they replace the signed copy
                self._q8u = (self.qweight.to(torch.int16) + 128).to(torch.uint8).contiguous()
                self._q8_scale = self.scales.float().contiguous()
                self.qweight = torch.empty(0, dtype=torch.int8)
                self._kernel = "q8own"
            elif self.bits == 8 and self.group_size is None and hasattr(torch.ops.aten, "_weight_int8pack_mm"):
                # Tensors read from a safetensors file can start at any byte; the kernel's vector loads crash
                # on such a weight (seen with 16 rows, bf16), so it gets a copy from torch's aligned allocator.
                if self.qweight.data_ptr() % 64:
                    self.qweight = self.qweight.clone()
                self._kernel = "int8pack"
            elif self.bits == 4 and q4_kernel.supports(self.in_features, self.group_size) and q4_kernel.load():
                self.qweight = self.qweight.contiguous()
                scale = self.scales.float()
                self._q4_sb = torch.stack([scale, self.zeros.float() - 8 * scale], dim=-1).half().contiguous()
                self._kernel = "q4own"
                # the fp16 pairs are the numbers the layer runs on from here; the fp32 copies go
                self.scales = torch.empty(0, dtype=self.scales.dtype)
                self.zeros = torch.empty(0, dtype=self.zeros.dtype)
            elif self.bits == 4 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") \
                    and self.out_features % 16 == 0:
                q = unpack_nibbles(self.qweight).to(torch.int32)
                self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
                self._scale_zero = torch.stack([self.scales.t(), self.zeros.t()], dim=-1).contiguous()
                self._kernel = "int4pack"
                if not keep_portable:
                    self.qweight = torch.empty(0, dtype=torch.uint8)
        if self._kernel in ("q8own", "q4own"):
            self._kernel_rows = _isa_row_limit()  # cached: forward runs once per layer per token
        return self._kernel

    def _apply(self, fn, recurse=True):
        # .to(dtype) casts scales and zeros: the int4 kernel's copy must follow. int8 scales stay fp32 (the
        # many-row path applies them in fp32); the kernel gets a cached copy in the activation dtype.
        fp32_scales = self.scales if self.bits == 8 and self.scales.dtype == torch.float32 else None
        super()._apply(fn, recurse)
        self._cast_scales = None
        if fp32_scales is not None and self.scales.dtype != torch.float32:
            self.scales = fp32_scales.to(self.scales.device)
        if self._scale_zero is not None:
            self._scale_zero = torch.stack([self.scales.t(), self.zeros.t()], dim=-1).contiguous()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        limit = self._kernel_rows if Q4_KERNEL_ROWS is None else Q4_KERNEL_ROWS
        few = self._kernel in ("q8own", "q4own") and rows.shape[0] <= limit
        if self._kernel == "q8own" and few:
            y = q4_kernel.load().q4_matmul(rows, self._q8u, self._q8_scale, 0)
        elif self._kernel in ("int8pack", "q8own") and rows.shape[0] > INT8_MATMUL_ROWS \
                or self.bits == 8 and self._kernel == "dequantize":
            y = self._int8_blocks(rows)  # also grouped int8 where mosslm's kernel cannot run
        elif self._kernel == "int8pack":
            y = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), self.qweight, self._scales_as(rows.dtype))
        elif self._kernel == "q4own" and few:
            y = q4_kernel.load().q4_matmul(rows, self.qweight, self._q4_sb, self.group_size)
        elif self._kernel == "q4own":
            y = self._int4_blocks(rows)
        elif self._kernel == "int4pack":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.contiguous(), self._packed, self.group_size,
                                                           self._scale_zero.to(rows.dtype))
        else:
            y = F.linear(rows, self.dequantized_weight().to(rows.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def _scales_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The int8 scales in the kernel's dtype, cast once (a decode step calls every layer once per token)."""
        cached = self._cast_scales
        if cached is None or cached.dtype != dtype or cached.device != self.scales.device:
            cached = self._cast_scales = self.scales.to(dtype)
        return cached

    def _int8_blocks(self, rows: torch.Tensor) -> torch.Tensor:
        y = torch.empty(rows.shape[0], self.out_features, dtype=rows.dtype, device=rows.device)
        scales = self.scales.float()  # applied in fp32
        for start in range(0, self.out_features, INT8_BLOCK_ROWS):
            block = slice(start, start + INT8_BLOCK_ROWS)
            if scales.dim() == 2:  # groups: the weights themselves, block by block
                w = dequantize_int8(self._int8_values(block), scales[block])
                torch.matmul(rows, w.to(rows.dtype).t(), out=y[:, block])
            else:
                torch.mul(F.linear(rows, self._int8_values(block).to(rows.dtype)), scales[block], out=y[:, block])
        return y

    def _int8_values(self, rows: slice) -> torch.Tensor:
        """The int8 values of some output rows, from whichever copy the kernel keeps."""
        if self._kernel == "q8own":
            return (self._q8u[rows].to(torch.int16) - 128).to(torch.int8)
        return self.qweight[rows]

    def _int4_blocks(self, rows: torch.Tensor) -> torch.Tensor:
        y = torch.empty(rows.shape[0], self.out_features, dtype=rows.dtype, device=rows.device)
        step = INT8_BLOCK_ROWS // 4
        for start in range(0, self.out_features, step):
            block = slice(start, start + step)
            w = self._q4_weight(block)
            torch.matmul(rows, w.to(rows.dtype).t(), out=y[:, block])
        return y

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{group}, " \
               f"kernel={self._kernel}"
