"""Attention on padded batches: which kernel should BERT use? One attention layer (fused
QKV projection, attention, output projection), forward and backward, timed per variant.

    python -m benchmarks.attention_ablation --device cuda                  # BERT-Base sizes, length 128, bf16
    python -m benchmarks.attention_ablation --device cuda --seq-len 512    # length 512 (batch 64)
    python -m benchmarks.attention_ablation                                # CPU: tiny shapes, float32

The batch has realistic padding: row lengths are drawn (seeded) uniformly from
[(2 fill - 1) L, L], a mean of `--fill` x L real tokens (0.6 by default), as one document
per row gives. Variants, all on the same weights and tokens:
- "sdpa, padding mask": everything on the padded (B, L, H) layout, SDPA with a boolean key
  mask (what `transformers` does; on CUDA the memory-efficient kernel, flash takes no mask);
- "sdpa, unpadded projections": this project's BERT today (`unpad=true`): projections on
  the N real tokens only, attention on the padded layout with the mask;
- "varlen": real tokens only, `torch.nn.attention.varlen.varlen_attn` (flash attention
  with cumulative sequence offsets; CUDA only);
- "nested (jagged) sdpa": real tokens only, SDPA on jagged nested tensors (on CPU the
  math kernel);
- "flex, document mask": the real tokens packed into one row (padded to a multiple of 128)
  and `flex_attention` (compiled) with a block mask `doc[q] == doc[kv]`, built per batch
  inside the timed step, as training would (CPU: forward only, FlexAttention has no CPU
  backward).
Every variant's output at the real tokens and its QKV weight gradient are checked against
the first one; a variant that disagrees is reported as wrong and never picked. Dropout is
off (varlen has none). Peak memory is `torch.cuda.max_memory_allocated` per variant.
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks import common
from core.cli import argument_parser
from core.errors import UserError, run_cli

FLEX_BLOCK = 128
"""FlexAttention's block size: the packed row is padded to a multiple of it."""
UNAVAILABLE = (NotImplementedError, RuntimeError, ImportError, AttributeError, TypeError)
"""What a kernel missing on this device or torch version raises (compile failures are RuntimeErrors)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The ablation's options (sizes default to BERT-Base on CUDA and tiny ones on CPU)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seq-len", type=int, default=None, help="padded row length (CUDA 128, CPU 64)")
    parser.add_argument("--batch", type=int, default=None, help="rows (CUDA 256 x 128 / seq-len, CPU 8)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (CUDA 768, CPU 64)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (CUDA 12, CPU 2)")
    parser.add_argument("--fill", type=float, default=0.6, help="mean fraction of real tokens per row, 0.5..1")
    parser.add_argument("--steps", type=int, default=None, help="timed forward+backward steps per repeat (CUDA 20, CPU 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, interleaved; medians (CUDA 5, CPU 2)")
    common.add_output_options(parser)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.seq_len = args.seq_len or (128 if cuda else 64)
    args.batch = args.batch or (max(1, 256 * 128 // args.seq_len) if cuda else 8)
    args.hidden = args.hidden or (768 if cuda else 64)
    args.heads = args.heads or (12 if cuda else 2)
    args.steps = args.steps or (20 if cuda else 3)
    args.repeats = args.repeats or (5 if cuda else 2)
    if not 0.5 <= args.fill <= 1.0:
        raise UserError("--fill must be between 0.5 and 1 (the mean fraction of real tokens per row)")
    if args.hidden % args.heads:
        raise UserError(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")
    if cuda and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible")
    return args


# ---------------------------------------------------------------------------- the batch


@dataclass
class Batch:
    """One padded batch and its real-token layout, on the device."""

    x: torch.Tensor
    """Hidden states (B, L, H), zeros at padding."""
    real: torch.Tensor
    """bool (B, L), True = a real token (each row's first `lengths[b]` positions)."""
    lengths: torch.Tensor
    """int (B,) real tokens per row."""
    index: torch.Tensor
    """(N,) flat positions of the real tokens in (B * L)."""
    grad_out: torch.Tensor
    """Gradient of the output at the real tokens (N, H)."""

    @property
    def num_real(self) -> int:
        return int(self.index.numel())


def make_batch(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Batch:
    """Seeded hidden states with row lengths uniform in [(2 fill - 1) L, L]."""
    generator = torch.Generator().manual_seed(0)
    low = max(1, round((2 * args.fill - 1) * args.seq_len))
    lengths = torch.randint(low, args.seq_len + 1, (args.batch,), generator=generator)
    real = torch.arange(args.seq_len)[None, :] < lengths[:, None]  # (B, L)
    x = torch.randn(args.batch, args.seq_len, args.hidden, generator=generator) * real[..., None]
    index = real.flatten().nonzero().squeeze(1)
    grad_out = torch.randn(index.numel(), args.hidden, generator=generator)
    return Batch(x.to(device, dtype), real.to(device), lengths.to(device), index.to(device),
                 grad_out.to(device, dtype))


def make_weights(hidden: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """QKV (3H, H) + bias and output (H, H) + bias, leaves that collect gradients."""
    generator = torch.Generator().manual_seed(1)
    shapes = [(3 * hidden, hidden), (3 * hidden,), (hidden, hidden), (hidden,)]
    weights = [torch.randn(shape, generator=generator) * 0.02 for shape in shapes]
    return [w.to(device, dtype).requires_grad_(True) for w in weights]


# ----------------------------------------------------------------------------- variants
# Each takes (batch, weights, heads) and returns the output at the real tokens (N, H).


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 3H) -> 3 x (..., nh, hs)."""
    return qkv.unflatten(-1, (3, heads, -1)).unbind(-3)


def sdpa_padding_mask(batch: Batch, weights: list[torch.Tensor], heads: int) -> torch.Tensor:
    w_qkv, b_qkv, w_out, b_out = weights
    q, k, v = split_heads(F.linear(batch.x, w_qkv, b_qkv), heads)  # 3 x (B, L, nh, hs)
    mask = batch.real[:, None, None, :]  # (B, 1, 1, L)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    y = F.linear(y.transpose(1, 2).flatten(2), w_out, b_out)  # (B, L, H)
    return y.flatten(0, 1).index_select(0, batch.index)  # (N, H)


def sdpa_unpadded_projections(batch: Batch, weights: list[torch.Tensor], heads: int) -> torch.Tensor:
    w_qkv, b_qkv, w_out, b_out = weights
    tokens = batch.x.flatten(0, 1).index_select(0, batch.index)  # (N, H)
    qkv = F.linear(tokens, w_qkv, b_qkv)  # (N, 3H)
    padded = qkv.new_zeros(batch.x.shape[0] * batch.x.shape[1], qkv.shape[1]).index_copy(0, batch.index, qkv)
    q, k, v = split_heads(padded.view(*batch.x.shape[:2], -1), heads)  # 3 x (B, L, nh, hs)
    mask = batch.real[:, None, None, :]
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    y = y.transpose(1, 2).flatten(0, 1).flatten(1).index_select(0, batch.index)  # (N, H)
    return F.linear(y, w_out, b_out)


def _offsets(batch: Batch) -> torch.Tensor:
    """Cumulative row starts (B + 1,) of the real tokens, int32."""
    return F.pad(batch.lengths.cumsum(0), (1, 0)).to(torch.int32)


def varlen(batch: Batch, weights: list[torch.Tensor], heads: int) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    w_qkv, b_qkv, w_out, b_out = weights
    tokens = batch.x.flatten(0, 1).index_select(0, batch.index)  # (N, H)
    q, k, v = split_heads(F.linear(tokens, w_qkv, b_qkv), heads)  # 3 x (N, nh, hs)
    offsets, longest = _offsets(batch), batch.x.shape[1]
    y = varlen_attn(q, k, v, offsets, offsets, longest, longest)  # (N, nh, hs)
    return F.linear(y.flatten(1), w_out, b_out)


def nested_sdpa(batch: Batch, weights: list[torch.Tensor], heads: int) -> torch.Tensor:
    w_qkv, b_qkv, w_out, b_out = weights
    tokens = batch.x.flatten(0, 1).index_select(0, batch.index)  # (N, H)
    offsets = _offsets(batch).long()
    # Each of q, k, v contiguous as (N, nh, hs): the jagged kernels want (B, j, nh, hs) dense underneath.
    q, k, v = (torch.nested.nested_tensor_from_jagged(t.contiguous(), offsets).transpose(1, 2)  # (B, nh, j, hs)
               for t in split_heads(F.linear(tokens, w_qkv, b_qkv), heads))
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)  # (B, j, H)
    return F.linear(y.values(), w_out, b_out)  # (N, H)


def make_flex(device: torch.device) -> Callable:
    """The flex variant, with `flex_attention` compiled (the documented way to run it fast)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if device.type == "cpu":  # no compiled CPU kernel with a backward: eager, forward only (checked, not timed)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        attend = flex_attention
    else:
        attend = torch.compile(flex_attention, dynamic=False)

    def flex_document_mask(batch: Batch, weights: list[torch.Tensor], heads: int) -> torch.Tensor:
        w_qkv, b_qkv, w_out, b_out = weights
        tokens = batch.x.flatten(0, 1).index_select(0, batch.index)  # (N, H)
        num_real = tokens.shape[0]
        padded_len = -(-num_real // FLEX_BLOCK) * FLEX_BLOCK
        document = torch.full((padded_len,), -1, dtype=torch.int32, device=tokens.device)
        document[:num_real] = torch.repeat_interleave(
            torch.arange(len(batch.lengths), dtype=torch.int32, device=tokens.device), batch.lengths)
        block_mask = create_block_mask(lambda b, h, q, kv: document[q] == document[kv], None, None, padded_len,
                                       padded_len, device=tokens.device)
        qkv = F.pad(F.linear(tokens, w_qkv, b_qkv), (0, 0, 0, padded_len - num_real))  # (T, 3H)
        q, k, v = (t.transpose(0, 1)[None] for t in split_heads(qkv, heads))  # 3 x (1, nh, T, hs)
        y = attend(q, k, v, block_mask=block_mask)  # (1, nh, T, hs)
        return F.linear(y[0].transpose(0, 1)[:num_real].flatten(1), w_out, b_out)

    return flex_document_mask


def variants(device: torch.device) -> dict[str, Callable]:
    """The contenders by name; the first is the reference of the correctness check."""
    return {
        "sdpa, padding mask": sdpa_padding_mask,
        "sdpa, unpadded projections": sdpa_unpadded_projections,
        "varlen": varlen,
        "nested (jagged) sdpa": nested_sdpa,
        "flex, document mask": make_flex(device),
    }


# -------------------------------------------------------------------------------- timing


def run_variant(fn: Callable, batch: Batch, weights: list[torch.Tensor], heads: int,
                backward: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward (and backward): the output at the real tokens and the QKV weight gradient."""
    for weight in weights:
        weight.grad = None
    out = fn(batch, weights, heads)
    if not backward:
        return out.detach(), None
    out.backward(batch.grad_out)
    return out.detach(), weights[0].grad.detach().clone()


def check(name: str, fn: Callable, batch: Batch, weights: list[torch.Tensor], heads: int,
          reference: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    """Run once: whether it runs (and backward), and its largest difference from the reference."""
    try:
        out, grad = run_variant(fn, batch, weights, heads, backward=True)
        backward = True
    except UNAVAILABLE as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        try:  # some kernels exist without their backward (FlexAttention on CPU)
            with torch.no_grad():
                out, grad = run_variant(fn, batch, weights, heads, backward=False)
            backward = False
            why = f"forward only, not timed: {first_line}"
        except UNAVAILABLE as second:
            reason = (str(second).strip().splitlines() or [type(second).__name__])[0][:160]
            return {"status": f"skipped: {reason}"}
    result = {"status": "ok" if backward else why, "out": out, "grad": grad, "timed": backward}
    if reference is not None:
        scale = reference[0].abs().max().item() or 1.0
        result["max_diff"] = (out.float() - reference[0].float()).abs().max().item() / scale
        if grad is not None and reference[1] is not None:
            grad_scale = reference[1].abs().max().item() or 1.0
            grad_diff = (grad.float() - reference[1].float()).abs().max().item() / grad_scale
            result["max_diff"] = max(result["max_diff"], grad_diff)
    return result


def time_variant(fn: Callable, batch: Batch, weights: list[torch.Tensor], heads: int, steps: int,
                 cuda: bool) -> float:
    """Seconds per forward+backward over `steps` steps."""
    with common.Timer(cuda=cuda) as timer:
        for _ in range(steps):
            run_variant(fn, batch, weights, heads, backward=True)
    return timer.seconds / steps


def main(argv: list[str] | None = None) -> None:
    """Check every variant, time the ones that run (interleaved repeats), pick the fastest."""
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    tolerance = 3e-2 if cuda else 1e-4  # relative to the largest value; bf16 keeps ~3 significant digits
    batch, weights = make_batch(args, device, dtype), make_weights(args.hidden, device, dtype)
    checks, reference, fns = {}, None, variants(device)
    for name, fn in fns.items():
        checks[name] = check(name, fn, batch, weights, args.heads, reference)
        if reference is None and checks[name].get("timed"):
            reference = (checks[name]["out"], checks[name]["grad"])
        if checks[name].get("max_diff", 0.0) > tolerance:
            checks[name]["status"] = f"wrong: differs from the reference by {checks[name]['max_diff']:.2e}"
            checks[name]["timed"] = False
        print(f"  {name}: {checks[name]['status']}", flush=True)
    timed = [name for name, result in checks.items() if result.get("timed")]
    seconds = {name: [] for name in timed}
    memory = {}
    for name in timed:  # warm-up (compiles flex on CUDA); peak memory of one step
        time_variant(fns[name], batch, weights, args.heads, 2, cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            time_variant(fns[name], batch, weights, args.heads, 1, cuda)
            memory[name] = torch.cuda.max_memory_allocated(device) / 2**20
    for repeat in range(args.repeats):
        for name in timed if repeat % 2 == 0 else timed[::-1]:
            seconds[name].append(time_variant(fns[name], batch, weights, args.heads, args.steps, cuda))
    report(args, batch, checks, seconds, memory, dtype)


def report(args: argparse.Namespace, batch: Batch, checks: dict[str, dict], seconds: dict[str, list[float]],
           memory: dict[str, float], dtype: torch.dtype) -> None:
    """The table (median ms per step, real tokens/s, ratio to the padding-mask SDPA) and the pick."""
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    reference = medians.get("sdpa, padding mask", math.nan)
    fastest = min(medians, key=medians.get) if medians else None  # wrong variants were never timed
    rows, figures = [], {}
    for name, result in checks.items():
        median = medians.get(name)
        timed = median is not None
        figures[name] = {"ms_per_step": median * 1e3 if timed else math.nan,
                         "real_tokens_per_s": batch.num_real / median if timed else math.nan,
                         "peak_cuda_mb": memory.get(name, math.nan), "max_diff": result.get("max_diff", math.nan)}
        rows.append([name + (" (fastest)" if name == fastest else ""),
                     f"{median * 1e3:.3f}" if timed else "-",
                     f"{batch.num_real / median:,.0f}" if timed else "-",
                     f"{reference / median:.2f}x" if timed else "-",
                     f"{memory[name]:,.0f}" if name in memory else "-",
                     f"{result['max_diff']:.1e}" if "max_diff" in result else "-",
                     result["status"]])
    table = common.format_table(["variant", "ms per forward+backward (median)", "real tokens/s",
                                 "vs sdpa, padding mask", "peak CUDA memory (MB)", "max rel. difference",
                                 "status"], rows)
    fill = batch.num_real / (args.batch * args.seq_len)
    notes = [f"one attention layer (QKV projection, attention, output projection), hidden {args.hidden}, "
             f"{args.heads} heads, batch {args.batch} x length {args.seq_len}, {batch.num_real:,} real tokens "
             f"({fill:.0%} of the slots), {dtype}, dropout off, {args.steps} steps x {args.repeats} interleaved repeats",
             f"fastest: {fastest or 'none ran'}",
             "per-repeat ms: " + "; ".join(f"{name}: " + ", ".join(f"{s * 1e3:.3f}" for s in values)
                                           for name, values in seconds.items())]
    figures["fastest"] = fastest
    common.record(args, f"attention_ablation: length {args.seq_len}, on {args.device}", table, notes, figures)


if __name__ == "__main__":
    run_cli(main)
