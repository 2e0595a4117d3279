"""TRM training speed: this project's training step vs a plain eager TRM written here.

    python -m benchmarks.trm_train                    # CPU: the small config, then the Sudoku one
    python -m benchmarks.trm_train --device cuda      # GPU: Sudoku recipe, compiled and eager
    python -m benchmarks.trm_train --device cuda --size arc   # GPU: ARC recipe (900 + 16 positions)

Both contenders run the Sudoku recipe's model (hidden 512, 8 heads, L_layers 2,
H_cycles 3, L_cycles 6, RoPE, 16 prefix positions: 81 + 16 = 97 positions, stablemax
loss, halt_max_steps 16, exploration 0.1), the ARC recipe's (the same with L_cycles 4,
on 30 x 30 grids: 900 + 16 positions, 12 tokens) or a small one, on the same random
batches of the task's shape (`--shape`; Sudoku's unless the size is `arc`), in float32
on CPU and bf16 autocast on CUDA:
- "this project": `training.loop.train_step` on `models.trm.TRM` with Adam-atan2 and
  the sparse sign-SGD of `training.optim` (compiled on CUDA; "eager" too with `--device cuda`);
- "reference": `ReferenceTRM` below, a direct, readable transcription of
  ../shared/reference/TRM.md sections 3-5 in eager PyTorch, with a per-tensor Adam-atan2.
Every optimiser step is one supervision step for every slot of the batch (continuous
batching), so examples/s = batch slots processed per second.
"""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import common
from core.cli import argument_parser
from core.errors import UserError, run_cli

SIZES = {
    "test": dict(hidden_size=32, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2),
    "small": dict(hidden_size=128, num_heads=4, L_layers=2, H_cycles=2, L_cycles=2),
    "sudoku": dict(hidden_size=512, num_heads=8, L_layers=2, H_cycles=3, L_cycles=6),
    "arc": dict(hidden_size=512, num_heads=8, L_layers=2, H_cycles=3, L_cycles=4),
}
"""Model sizes by name; `sudoku` and `arc` are the paper's Sudoku-attention and ARC recipes."""
SHAPES = {"sudoku": (81, 11), "arc": (900, 12)}
"""Task shapes: (positions of a puzzle, vocabulary). ARC: a 30 x 30 grid of pad, end and 10 colours."""
DEFAULT_BATCH = {"cpu": {"test": 4, "small": 32, "sudoku": 4, "arc": 1},
                 "cuda": {"test": 64, "small": 768, "sudoku": 768, "arc": 128}}
"""Slots per step; ARC's recipe batch of 768 does not fit one GPU at 916 positions, 128 does."""
COMPILE = {"auto": "auto", "true": True, "false": False}
"""`--compile` -> `PretrainConfig.compile`."""
PREFIX = 16
HALT_MAX_STEPS, EXPLORATION = 16, 0.1


# ----------------------------------------------------------------- the reference TRM


def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Scale-free RMS norm over the last axis, in float32."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def lecun(in_features: int, out_features: int, bias: bool = False) -> nn.Linear:
    """Linear layer with truncated LeCun-normal weights."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.trunc_normal_(layer.weight, std=1 / math.sqrt(in_features), a=-2 / math.sqrt(in_features),
                          b=2 / math.sqrt(in_features))
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class ReferenceBlock(nn.Module):
    """h = rms(h + attention(h)); h = rms(h + swiglu(h))."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = -(-round(4 * hidden * 2 / 3) // 256) * 256
        self.qkv, self.out = lecun(hidden, 3 * hidden), lecun(hidden, hidden)
        self.gate_up, self.down = lecun(hidden, 2 * inner), lecun(inner, hidden)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = h.shape
        q, k, v = self.qkv(h).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        rotate = lambda x: torch.cat((-x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]), dim=-1)
        q, k = (q * cos + rotate(q) * sin).to(v.dtype), (k * cos + rotate(k) * sin).to(v.dtype)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, hidden)
        h = rms_norm(h + self.out(attended))
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return rms_norm(h + self.down(F.silu(gate) * up))


class ReferenceTRM(nn.Module):
    """TRM with ACT and continuous batching, straight from TRM.md (no puzzle table)."""

    def __init__(self, hidden_size: int, num_heads: int, L_layers: int, H_cycles: int, L_cycles: int,
                 seq_len: int = 81, vocab_size: int = 11):
        super().__init__()
        hidden = hidden_size
        self.hidden, self.H_cycles, self.L_cycles = hidden, H_cycles, L_cycles
        self.embed = nn.Embedding(vocab_size, hidden)
        nn.init.trunc_normal_(self.embed.weight, std=1 / math.sqrt(hidden))
        self.blocks = nn.ModuleList(ReferenceBlock(hidden, num_heads) for _ in range(L_layers))
        self.lm_head, self.q_head = lecun(hidden, vocab_size), lecun(hidden, 2, bias=True)
        nn.init.zeros_(self.q_head.weight)
        nn.init.constant_(self.q_head.bias, -5.0)
        self.register_buffer("y_init", torch.randn(hidden))
        self.register_buffer("z_init", torch.randn(hidden))
        head_dim = hidden // num_heads
        frequencies = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(PREFIX + seq_len).float(), frequencies).repeat(1, 2)  # (T, hs)
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())
        # One puzzle identifier (Sudoku's case): its (zero-initialised, sign-SGD trained) vector.
        self.puzzle_vector = torch.zeros(hidden)

    def net(self, hidden: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        h = hidden + injection
        for block in self.blocks:
            h = block(h, self.cos, self.sin)
        return h

    def forward(self, carry: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        """One supervision step for every slot: (loss, new carry)."""
        halted = carry["halted"]
        y = torch.where(halted[:, None, None], self.y_init, carry["y"])
        z = torch.where(halted[:, None, None], self.z_init, carry["z"])
        steps = torch.where(halted, 0, carry["steps"]) + 1
        inputs = torch.where(halted[:, None], batch["inputs"], carry["inputs"])
        labels = torch.where(halted[:, None], batch["labels"], carry["labels"])
        self.rows = self.puzzle_vector.expand(inputs.shape[0], -1).clone().requires_grad_(True)
        prefix = torch.cat((self.rows[:, None], self.rows.new_zeros(inputs.shape[0], PREFIX - 1, self.hidden)), 1)
        x = math.sqrt(self.hidden) * torch.cat((prefix, self.embed(inputs)), dim=1)  # (B, T, D)
        with torch.no_grad():
            for _ in range(self.H_cycles - 1):
                for _ in range(self.L_cycles):
                    z = self.net(z, y + x)
                y = self.net(y, z)
        for _ in range(self.L_cycles):
            z = self.net(z, y + x)
        y = self.net(y, z)
        logits = self.lm_head(y[:, PREFIX:]).double()  # (B, L, V)
        q_halt = self.q_head(y[:, 0].float())[:, 0]  # (B,)
        scores = torch.where(logits < 0, 1 / (1 - logits.clamp(max=0)), logits + 1)
        log_probs = torch.log(scores / scores.sum(-1, keepdim=True))
        token_loss = -log_probs.gather(-1, labels[..., None]).squeeze(-1)  # (B, L), every cell labelled
        exact = (logits.argmax(-1) == labels).all(-1)
        loss = token_loss.mean(-1).sum() + 0.5 * F.binary_cross_entropy_with_logits(
            q_halt, exact.float(), reduction="sum")
        with torch.no_grad():
            explore = batch["noise"][:, 0] < EXPLORATION
            min_steps = 2 + torch.floor(batch["noise"][:, 1] * (HALT_MAX_STEPS - 1)).long()
            halted = (steps >= HALT_MAX_STEPS) | ((q_halt > 0) & (~explore | (steps >= min_steps)))
        new_carry = dict(y=y.detach(), z=z.detach(), steps=steps, halted=halted, inputs=inputs, labels=labels)
        return loss / inputs.shape[0], new_carry


def reference_adam_atan2_step(params, state, lr=1e-4, betas=(0.9, 0.95), weight_decay=1.0) -> None:
    """Adam-atan2 one tensor at a time, as the formula reads."""
    with torch.no_grad():
        for param in params:
            slot = state.setdefault(param, dict(step=0, m=torch.zeros_like(param), v=torch.zeros_like(param)))
            slot["step"] += 1
            slot["m"].lerp_(param.grad, 1 - betas[0])
            slot["v"].mul_(betas[1]).addcmul_(param.grad, param.grad, value=1 - betas[1])
            m_hat = slot["m"] / (1 - betas[0] ** slot["step"])
            v_hat = slot["v"] / (1 - betas[1] ** slot["step"])
            param.mul_(1 - lr * weight_decay).add_(torch.atan2(m_hat, v_hat.sqrt()), alpha=-lr)
            param.grad = None


# ---------------------------------------------------------------------------- workers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark and of its workers."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    common.add_device_options(parser)
    parser.add_argument("--size", choices=sorted(SIZES), action="append", default=None,
                        help="repeatable; default: small and sudoku on CPU, sudoku on CUDA")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="the task's positions and vocabulary (default: arc for size arc, else sudoku)")
    parser.add_argument("--eager", action="store_true",
                        help="also time this project with compile=false (always on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="slots per step (default per size and device)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per worker (CPU 3, CUDA 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (CPU 1, CUDA 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    common.add_worker_options(parser, ("ours", "reference"))
    common.add_output_options(parser)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.size = args.size or (["sudoku"] if cuda else ["small", "sudoku"])
    args.steps = args.steps or (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if (args.batch is not None and args.batch <= 0) or min(args.steps, args.rounds) <= 0 or args.warmup < 0:
        raise UserError("--batch, --steps and --rounds must be positive and --warmup not negative")
    return args


def task_shape(args: argparse.Namespace, size: str) -> tuple[int, int]:
    """(positions, vocabulary) of the batches: `--shape`, else ARC's for size arc, else Sudoku's."""
    return SHAPES[args.shape or ("arc" if size == "arc" else "sudoku")]


def make_batches(count: int, batch: int, device: torch.device, seq_len: int = 81,
                 vocab_size: int = 11) -> list[dict[str, torch.Tensor]]:
    """Seeded random puzzle-shaped batches (tokens 1..V-1 in, 2..V-1 out)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        values = dict(
            inputs=torch.randint(1, vocab_size, (batch, seq_len), generator=generator),
            labels=torch.randint(2, vocab_size, (batch, seq_len), generator=generator),
            puzzle_identifiers=torch.zeros(batch, dtype=torch.int64),
            noise=torch.rand(batch, 2, generator=generator),
        )
        batches.append({key: value.to(device) for key, value in values.items()})
    return batches


def ours_worker(args: argparse.Namespace, size: str, batch_size: int) -> dict:
    """Time `train_step` on this project's TRM."""
    from models.trm.config import TRMConfig
    from training.config import PretrainConfig

    device = torch.device(args.device)
    arch = TRMConfig(name="trm", halt_max_steps=HALT_MAX_STEPS, halt_exploration_prob=EXPLORATION,
                     puzzle_emb_len=PREFIX, **SIZES[size])
    seq_len, vocab_size = task_shape(args, size)
    metadata = SimpleNamespace(vocab_size=vocab_size, seq_len=seq_len, num_puzzle_identifiers=1)
    config = PretrainConfig(arch=arch.model_dump(), data_paths=["unused"], global_batch_size=batch_size, epochs=1,
                            lr=1e-4, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0,
                            lr_warmup_steps=0, device=args.device, compile=COMPILE[args.compile], wandb="disabled")
    _, step = common.engine_step("trm", arch, metadata, config, None, device)
    return timed_loop(args, device, batch_size, step, seq_len, vocab_size)


def reference_worker(args: argparse.Namespace, size: str, batch_size: int) -> dict:
    """Time `ReferenceTRM` with the per-tensor Adam-atan2 and sign-SGD on the puzzle vector."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    seq_len, vocab_size = task_shape(args, size)
    model = ReferenceTRM(**SIZES[size], seq_len=seq_len, vocab_size=vocab_size).to(device).train()
    model.puzzle_vector = model.puzzle_vector.to(device)
    params, optimizer_state = list(model.parameters()), {}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    carry = {}

    def step(batch: dict[str, torch.Tensor]) -> None:
        if not carry:
            shape = (batch_size, PREFIX + seq_len, model.hidden)
            carry.update(y=torch.zeros(shape, device=device), z=torch.zeros(shape, device=device),
                         steps=torch.zeros(batch_size, dtype=torch.int64, device=device),
                         halted=torch.ones(batch_size, dtype=torch.bool, device=device),
                         inputs=batch["inputs"], labels=batch["labels"])
        with autocast:
            loss, new_carry = model(carry, batch)
        loss.backward()
        reference_adam_atan2_step(params, optimizer_state)
        with torch.no_grad():
            model.puzzle_vector.sub_(1e-4 * model.rows.grad.sum(0).sign())
        carry.update(new_carry)

    return timed_loop(args, device, batch_size, step, seq_len, vocab_size)


def timed_loop(args: argparse.Namespace, device: torch.device, batch_size: int, step, seq_len: int,
               vocab_size: int) -> dict:
    """Warm up, then time `args.steps` steps; examples (slot-steps) per second."""
    cuda = device.type == "cuda"
    batches = make_batches(args.warmup + args.steps, batch_size, device, seq_len, vocab_size)
    for batch in batches[: args.warmup]:
        step(batch)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with common.Timer(cuda=cuda) as timer:
        for batch in batches[args.warmup :]:
            step(batch)
    result = {"examples_per_s": batch_size * args.steps / timer.seconds, "seconds_per_step": timer.seconds / args.steps}
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


# ------------------------------------------------------------------------------ parent


def _rate(value: float) -> str:
    """Examples/s with three significant digits at least (the Sudoku size runs ~1.7 on CPU)."""
    return f"{value:,.1f}" if value >= 100 else f"{value:.3g}"


def run_size(args: argparse.Namespace, size: str) -> None:
    """Interleaved rounds for one size; table and record."""
    batch = args.batch or DEFAULT_BATCH[args.device][size]
    seq_len, _ = task_shape(args, size)
    shape = args.shape or ("arc" if size == "arc" else "sudoku")
    shared = ["--device", args.device, "--size", size, "--shape", shape, "--batch", str(batch), "--steps",
              str(args.steps), "--warmup", str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else [])
    runs = {"this project": ["--worker", "ours", "--compile", args.compile, *shared],
            "reference": ["--worker", "reference", *shared]}
    if args.device == "cuda" or args.eager:
        runs["this project, eager"] = ["--worker", "ours", "--compile", "false", *shared]
    results = common.interleaved(runs, "benchmarks.trm_train", args.rounds)
    reference = common.median_of(results["reference"], "examples_per_s")
    memory_key = "peak_cuda_mb" if args.device == "cuda" else "max_rss_mb"
    rows = [[name, _rate(common.median_of(r, 'examples_per_s')),
             f"{common.median_of(r, 'examples_per_s') / reference:.2f}x", f"{common.median_of(r, memory_key):,.0f}"]
            for name, r in results.items()]
    memory_label = "peak CUDA memory (MB)" if args.device == "cuda" else "peak RSS of the process (MB)"
    table = common.format_table(["contender", "examples/s (median)", "vs reference", memory_label], rows)
    dtype = "bf16 autocast" if args.device == "cuda" else "float32"
    notes = [f"size {size} {SIZES[size]}, {shape} shape: {seq_len} + {PREFIX} positions, batch {batch}, {dtype}, "
             f"{args.warmup} warm-up + {args.steps} timed steps per worker, {args.rounds} interleaved rounds, "
             f"torch threads per worker: {args.threads or 'default'}, this project's compile={args.compile}",
             "per-round examples/s: " + common.per_round(results, "examples_per_s", _rate)]
    medians = {name: {key: common.median_of(r, key) for key in ("examples_per_s", "peak_cuda_mb", "max_rss_mb")}
               for name, r in results.items()}
    common.record(args, f"trm_train: {size}, {shape} shape, on {args.device}", table, notes, medians)


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, or one worker when `--worker` is given."""
    args = parse_args(argv)
    if args.worker is None:
        for size in args.size:
            run_size(args, size)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    size = args.size[0]
    batch = args.batch or DEFAULT_BATCH[args.device][size]
    worker = ours_worker if args.worker == "ours" else reference_worker
    common.report_worker_result(worker(args, size, batch))


if __name__ == "__main__":
    run_cli(main)
