"""The training loop: accumulate, step, log, evaluate, save — and resume exactly.

One optimizer step takes `batches_per_step` micro-batches. The loss of each micro-batch is
normalised by the masked-token (and sequence) count of the *whole* step, so accumulating k
micro-batches computes exactly the gradient of one batch k times larger. Under DDP, gradients
are all-reduced only on the last micro-batch (`no_sync`). Nothing calls `.item()` inside a step
except on the CPU (where it is free) and at log intervals.

The data position is (epoch, step within epoch); each epoch's example order comes from the
dataset's `order(epoch)` and is dealt out to ranks, so a resumed run sees the same batches.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bertcli.console import Reporter
from bertcli.data.datasets import collate
from bertcli.errors import UserError
from bertcli.evaluate import evaluate_model
from bertcli.metrics import MetricsWriter, truncate_metrics
from bertcli.model import IGNORE_INDEX, BertForPreTraining
from bertcli.tokenizer import BertTokenizer
from bertcli.train.checkpoint import (
    checkpoint_name,
    load_trainer_state,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bertcli.train.optim import OPTIMIZERS, build_optimizer
from bertcli.train.runtime import Runtime
from bertcli.train.schedules import POLICIES, learning_rate, warmup_steps_for


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping options of `bertcli pretrain`."""

    max_steps: int | None = None
    num_epochs: int | None = None
    batch_size: int = 32
    batches_per_step: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    lr_policy: str = "warmup-annealing"
    warmup_ratio: float = 0.01
    warmup_steps: int | None = None
    min_lr: float = 0.0
    lr_power: float = 1.0
    max_grad_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 0
    save_every: int = 0
    save_every_epochs: int = 0
    keep_last: int = 0
    seed: int = 12345
    nsp: bool = True
    compile: bool = False
    num_workers: int = 0
    tensorboard: bool = True

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

        for name in ("max_steps", "num_epochs", "batch_size", "batches_per_step", "log_every"):
            positive(name)
        for name in (
            "eval_every",
            "eval_batches",
            "save_every",
            "save_every_epochs",
            "keep_last",
            "num_workers",
        ):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.lr_policy not in POLICIES:
            raise UserError(f"--lr-policy must be one of {', '.join(POLICIES)}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"--{name} must be in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UserError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise UserError("--warmup-steps must be >= 0")
        if self.max_grad_norm < 0:
            raise UserError("--max-grad-norm must be >= 0 (0 = no clipping)")


class _StopFlag:
    """SIGTERM/SIGINT ask to stop after the current step (a second SIGINT interrupts)."""

    def __init__(self):
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous.get(signal.SIGINT, signal.default_int_handler))

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs `config` on `model` over `train_data`, writing into `out`."""

    def __init__(
        self,
        config: TrainConfig,
        model: BertForPreTraining,
        train_data: torch.utils.data.Dataset,
        runtime: Runtime,
        out: Path,
        tokenizer: BertTokenizer | None = None,
        eval_data: torch.utils.data.Dataset | None = None,
        reporter: Reporter | None = None,
        resume_from: Path | None = None,
    ):
        self.config = config
        self.runtime = runtime
        self.out = Path(out)
        self.tokenizer = tokenizer
        self.train_data = train_data
        self.eval_data = eval_data
        self.reporter = reporter if (reporter and runtime.is_main) else Reporter()
        self.model = model  # the bare module: what is saved and evaluated
        if config.compile:
            # in place, before DDP: parameter names (and so checkpoints) stay unchanged
            model.compile()
        self.ddp = None
        net: torch.nn.Module = model
        if runtime.distributed:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(
                model, device_ids=device_ids, find_unused_parameters=not config.nsp
            )
            net = self.ddp
        self.net = net
        self.optimizer = build_optimizer(
            config.optimizer,
            model,
            config.lr,
            config.weight_decay,
            (config.beta1, config.beta2),
            runtime.device.type,
        )
        self.scaler = runtime.grad_scaler()
        self.steps_per_epoch = self._steps_per_epoch(0)
        if config.max_steps is not None:
            self.total_steps = config.max_steps
        else:
            self.total_steps = (config.num_epochs or 1) * self.steps_per_epoch
        self.warmup = warmup_steps_for(self.total_steps, config.warmup_steps, config.warmup_ratio)
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.skipped_steps = 0
        self._first_bad = torch.full((), -1, dtype=torch.long, device=runtime.device)
        # a sync per step is free on the CPU; on GPUs check at log intervals (and every save)
        self.finite_check_every = 1 if runtime.device.type == "cpu" else config.log_every
        if resume_from is not None:
            self._restore(resume_from)
        self.metrics = (
            MetricsWriter(self.out, tensorboard=config.tensorboard, purge_step=self.step + 1)
            if runtime.is_main
            else None
        )

    # ---- data ------------------------------------------------------------------------------

    def _steps_per_epoch(self, epoch: int) -> int:
        order = self.train_data.order(epoch)
        per_rank = len(order) // self.runtime.world_size
        steps = per_rank // (self.config.batch_size * self.config.batches_per_step)
        if steps == 0 and epoch == 0:
            raise UserError(
                f"the training data has {len(order)} examples: too few for --batch-size "
                f"{self.config.batch_size} x --batches-per-step {self.config.batches_per_step} "
                f"x {self.runtime.world_size} processes"
            )
        return steps

    def _epoch_batches(
        self, epoch: int, skip_steps: int
    ) -> tuple[torch.utils.data.DataLoader, int]:
        """This rank's micro-batches of `epoch`, after the first `skip_steps` steps."""
        order = self.train_data.order(epoch)
        world, bs, k = self.runtime.world_size, self.config.batch_size, self.config.batches_per_step
        per_rank = len(order) // world
        steps = per_rank // (bs * k)
        mine = order[self.runtime.rank :: world][: steps * bs * k]
        batches = [mine[i : i + bs].tolist() for i in range(skip_steps * bs * k, len(mine), bs)]
        cuda = self.runtime.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            self.train_data,
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=self.config.num_workers,
            pin_memory=cuda,
            prefetch_factor=4 if self.config.num_workers else None,
            # its own generator: creating the iterator must not draw from the global RNG,
            # or a resumed run's dropout masks would differ from an uninterrupted one's
            generator=torch.Generator().manual_seed(self.config.seed + epoch),
        )
        return loader, steps - skip_steps

    # ---- state -----------------------------------------------------------------------------

    def _restore(self, directory: Path) -> None:
        state = load_trainer_state(directory)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.skipped_steps = state.get("skipped_steps", 0)
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == self.runtime.world_size:
            set_rng_state(per_rank[self.runtime.rank])
        else:  # resumed on a different number of processes: a fresh, distinct seed per rank
            torch.manual_seed(self.config.seed + self.runtime.rank + self.step)
        if self.runtime.is_main:
            truncate_metrics(self.out / "metrics.jsonl", self.step)

    def _trainer_state(self, rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "skipped_steps": self.skipped_steps,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_per_rank[0],
            "rng_per_rank": rng_per_rank,  # every rank's dropout RNG, for exact DDP resume
            "train_config": asdict(self.config),
        }

    def save(self) -> Path | None:
        """Rank 0 writes checkpoints/step_N atomically; then older ones are pruned."""
        self._check_finite()  # never overwrite a good checkpoint with a diverged model
        path = self.out / "checkpoints" / checkpoint_name(self.step)
        rng_per_rank = [rng_state()]
        if self.runtime.distributed:
            rng_per_rank = [None] * self.runtime.world_size
            dist.all_gather_object(rng_per_rank, rng_state())
        if self.runtime.is_main:
            summary = {
                "step": self.step,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "total_steps": self.total_steps,
            }
            save_checkpoint(
                path, self.model, self.tokenizer, self._trainer_state(rng_per_rank), summary
            )
            prune_checkpoints(self.out / "checkpoints", self.config.keep_last)
            self.reporter.log(f"saved {path}")
        self.runtime.barrier()
        return path

    # ---- one step --------------------------------------------------------------------------

    def _train_step(self, micro_batches: list[dict[str, torch.Tensor]]):
        """Forward/backward over the micro-batches, then one optimizer step."""
        device, nsp = self.runtime.device, self.config.nsp
        # counted on the CPU batches, before the copy to the device: no sync
        masked_counts = [int((b["masked_lm_labels"] != IGNORE_INDEX).sum()) for b in micro_batches]
        masked_total = sum(masked_counts)
        sequences_total = sum(len(b["input_ids"]) for b in micro_batches)
        totals = torch.zeros(3, device=device)  # loss, mlm_loss, nsp_loss of the whole step
        for i, (batch, masked) in enumerate(zip(micro_batches, masked_counts)):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if (last or self.ddp is None) else self.ddp.no_sync()
            with sync:
                with self.runtime.autocast():
                    out = self.net(
                        batch["input_ids"],
                        batch["token_type_ids"],
                        batch["attention_mask"],
                        masked_lm_labels=batch["masked_lm_labels"],
                        next_sentence_labels=batch["next_sentence_labels"] if nsp else None,
                    )
                mlm = out.mlm_loss * (masked / max(1, masked_total))
                nsp_part = (
                    out.nsp_loss * (len(batch["input_ids"]) / sequences_total)
                    if nsp
                    else torch.zeros((), device=device)
                )
                loss = mlm + nsp_part
                self.scaler.scale(loss).backward()
            totals += torch.stack([loss.detach(), mlm.detach(), nsp_part.detach()]).float()

        lr = learning_rate(
            self.config.lr_policy,
            self.step,
            self.config.lr,
            self.total_steps,
            self.warmup,
            self.config.min_lr,
            self.config.lr_power,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.scaler.is_enabled():  # fp16 on CUDA: count the steps GradScaler skips
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped_steps += int(self.scaler.get_scale() < scale)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
        return totals, grad_norm.detach(), lr, tokens

    # ---- the loop --------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to `total_steps`; returns the last logged row and evaluation."""
        cfg, runtime = self.config, self.runtime
        self.model.train()
        self.reporter.log(
            f"{self.model.num_parameters() / 1e6:.1f}M parameters on {runtime.device} "
            f"({runtime.precision}, {runtime.world_size} process"
            f"{'es' if runtime.world_size > 1 else ''}); {self.total_steps} steps of "
            f"{cfg.batch_size * cfg.batches_per_step * runtime.world_size} sequences"
            + (f", from step {self.step}" if self.step else "")
        )
        self.reporter.start("Pretraining", total=self.total_steps, unit="steps")
        self.reporter.advance(self.step)
        window = torch.zeros(3, device=runtime.device)
        window_steps, window_tokens, window_start = 0, 0, time.perf_counter()
        last_row: dict[str, Any] = {}
        last_eval: dict[str, Any] | None = None
        stopped = False
        with _StopFlag() as stop:
            while self.step < self.total_steps and not stopped:
                loader, remaining = self._epoch_batches(self.epoch, self.step_in_epoch)
                epoch_steps = self.step_in_epoch + remaining
                iterator = iter(loader)
                for _ in range(remaining):
                    micro = [next(iterator) for _ in range(cfg.batches_per_step)]
                    totals, grad_norm, lr, tokens = self._train_step(micro)
                    self.step += 1
                    self.step_in_epoch += 1
                    window += totals
                    window_steps += 1
                    window_tokens += tokens
                    # remember the first non-finite step on the device: no sync here
                    bad = ~torch.isfinite(totals[0]) & (self._first_bad < 0)
                    self._first_bad = torch.where(bad, self.step, self._first_bad)
                    if self.step % self.finite_check_every == 0 or self.step == self.total_steps:
                        self._check_finite()
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        elapsed = max(1e-9, time.perf_counter() - window_start)
                        last_row = self._log_row(
                            window / window_steps, lr, grad_norm, window_tokens / elapsed
                        )
                        window.zero_()
                        window_steps, window_tokens, window_start = 0, 0, time.perf_counter()
                    fields = {}
                    if last_row:
                        fields = {
                            "loss": last_row["loss"],
                            "lr": lr,
                            "tok/s": round(last_row["tokens_per_s"]),
                        }
                    self.reporter.advance(1, **fields)
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        last_eval = self._evaluate()
                    if cfg.save_every and self.step % cfg.save_every == 0:
                        self.save()
                    if self._should_stop(stop):
                        stopped = True
                    if stopped or self.step >= self.total_steps:
                        break
                del iterator, loader
                if self.step_in_epoch >= epoch_steps:
                    self.epoch += 1
                    self.step_in_epoch = 0
                    if cfg.save_every_epochs and self.epoch % cfg.save_every_epochs == 0:
                        self.save()
        self.reporter.finish()
        if stopped:
            self.reporter.log(f"stopping at step {self.step} on request; saving a checkpoint")
        elif self.eval_data is not None and (not cfg.eval_every or self.step % cfg.eval_every):
            last_eval = self._evaluate()
        final = self.out / "checkpoints" / checkpoint_name(self.step)
        if not (final / "trainer_state.pt").exists():
            self.save()
        if self.metrics:
            self.metrics.close()
        return {
            "train": last_row,
            "eval": last_eval,
            "checkpoint": str(final),
            "stopped_early": stopped,
        }

    def _log_row(self, mean: torch.Tensor, lr: float, grad_norm: torch.Tensor, tok_s: float):
        loss, mlm, nsp = mean.tolist()
        row = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": loss,
            "mlm_loss": mlm,
            "nsp_loss": nsp if self.config.nsp else None,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": tok_s * self.runtime.world_size,
        }
        if self.scaler.is_enabled():
            row["skipped_steps"] = self.skipped_steps
        if self.metrics:
            self.metrics.write(row)
        return row

    def close(self) -> None:
        """Drop the DDP wrapper (and its reducer) now, not at interpreter exit."""
        self.net = self.model
        self.ddp = None

    def _should_stop(self, stop: _StopFlag) -> bool:
        if not self.runtime.distributed:
            return stop.requested
        if self.step % self.config.log_every:
            return False
        flag = torch.tensor([float(stop.requested)], device=self.runtime.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _check_finite(self) -> None:
        """Raise if any step so far had a non-finite loss (one sync; before every save)."""
        first_bad = int(self._first_bad)
        if first_bad >= 0:
            raise UserError(
                f"non-finite loss at step {first_bad}; stopped without saving (lower --lr, use "
                "--precision bf16/fp32 or --max-grad-norm; --resume restarts from the last good "
                "checkpoint)"
            )

    def _evaluate(self) -> dict[str, Any]:
        if self.eval_data is None:
            return {}
        result = evaluate_model(
            self.model,
            self.eval_data,
            self.config.batch_size,
            self.runtime,
            self.config.eval_batches or None,
        )
        row = {"step": self.step, "split": "eval", **result}
        if self.metrics:
            self.metrics.write(row, prefix="eval")
        self.reporter.log(
            f"eval @ step {self.step}: mlm_loss {result['mlm_loss']:.4f}  "
            f"mlm_acc {result['mlm_accuracy']:.4f}  ppl {result['perplexity']:.2f}  "
            f"nsp_acc {result['nsp_accuracy']:.4f}"
        )
        return row
