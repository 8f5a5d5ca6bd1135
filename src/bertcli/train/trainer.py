"""The training loop: accumulate, step, log, evaluate, save — and resume exactly.

One optimizer step takes `batches_per_step` micro-batches on each of N ranks. The MLM loss of
each micro-batch is its sum over masked tokens divided by the masked count of the *whole global
step* (all micro-batches of all ranks: one all-reduce of a small integer tensor per step, on the
device, so no host sync on GPUs), and the NSP loss likewise by the global sequence count. So
"k micro-batches x N ranks" computes exactly the gradient of one batch k x N times larger, even
when ranks hold different numbers of masked tokens. Under DDP, gradients are all-reduced only on
the last micro-batch (`no_sync`); the logged losses and tokens/s are all-reduced across ranks at
log intervals, so the log shows the global batch, not rank 0's share.

The step itself has static shapes and no host syncs on a GPU: the MLM head gathers the
`masked_lm_positions (B, P)` of the batch layout, the unpadding record is built from the CPU
batch before the copy, the non-finite and fp16 skipped-step checks stay on the device until a
log interval. `--compile` wraps DDP first and compiles the wrapper (compiled DDP), so gradient
buckets are all-reduced while backward runs; the bare module is what is saved, so checkpoint
names never carry a prefix.

The data position is (epoch, step within epoch), saved also as the examples of the epoch's order
consumed (`samples_in_epoch`); each epoch's example order comes from the dataset's
`order(epoch)` and is dealt out to ranks round-robin, so optimizer step s takes the contiguous
block `order[s*G:(s+1)*G]` of the global batch G = ranks x batch size x batches per step,
whatever the split. A resumed run sees the same batches, also on another number of processes
when G is unchanged (an elastic resume: only the dropout streams, which are per rank, differ).
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bertcli.config import TrainConfig
from bertcli.console import Reporter
from bertcli.data.datasets import IndexBatches, collate
from bertcli.errors import UserError
from bertcli.evaluate import evaluate_model
from bertcli.metrics import MetricsWriter, truncate_metrics
from bertcli.model import IGNORE_INDEX, BertForPreTraining, masked_positions
from bertcli.tokenizer import BertTokenizer
from bertcli.train.checkpoint import (
    STATE_FILE,
    checkpoint_name,
    elastic_split,
    load_summary,
    load_trainer_state,
    prune_checkpoints,
    resume_changes,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bertcli.train.kernels import check_compile, flash_attention
from bertcli.train.memory import batch_must_fit
from bertcli.train.mfu import device_peak_tflops, flops_per_token, mfu
from bertcli.train.optim import build_optimizer
from bertcli.train.runtime import Runtime
from bertcli.train.schedules import learning_rate, warmup_steps_for
from bertcli.unpad import Unpadding


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
        # a stop under way keeps catching SIGTERM until fit() has saved (`restore`): torchrun,
        # and PR_SET_PDEATHSIG from a multi-threaded launcher, can send it twice
        if not self.requested or exc[0] is not None:
            self.restore()

    def restore(self) -> None:
        """Put the previous signal handlers back. After a stop request SIGTERM stays caught: a
        repeated one (torchrun, PR_SET_PDEATHSIG) must not kill the process between the final
        save and its lock release and exit 0 (it did, now and then, in the launcher-kill test)."""
        for sig, handler in self.previous.items():
            if not (self.requested and sig == signal.SIGTERM):
                signal.signal(sig, handler)
        self.previous = {}


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
        run_facts: dict[str, Any] | None = None,
        init_optimizer_from: Path | None = None,
    ):
        self.config = config
        # what a resume may not change silently, beyond this config (see checkpoint.GUARDED)
        self.run_facts = {
            "world_size": runtime.world_size,
            "precision": runtime.precision,
            **(run_facts or {}),
        }
        self.runtime = runtime
        self.out = Path(out)
        self.tokenizer = tokenizer
        self.train_data = train_data
        self.eval_data = eval_data
        self.reporter = reporter if (reporter and runtime.is_main) else Reporter()
        self.model = model  # the bare module: what is saved and evaluated
        if config.compile:
            check_compile(runtime.device)  # one line, exit 2: no silent fallback to eager
        varlen, note = flash_attention(runtime.device, runtime.precision)
        if note:
            self.reporter.log(note)
        if varlen is not None and not config.compile:
            model.use_flash_attention(varlen)
            self.reporter.log("attention: flash-attn varlen on the unpadded tokens")
        if not config.nsp:
            # MLM only: the pooler and NSP head never get a gradient. Frozen, DDP neither waits
            # for them (an unreduced bucket) nor needs find_unused_parameters (a graph walk per
            # step, and no compiled DDP); they are saved unchanged.
            for p in (*model.bert.pooler.parameters(), *model.nsp.parameters()):
                p.requires_grad_(False)
        self.ddp = None
        net: torch.nn.Module = model
        if runtime.distributed:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=device_ids)
            net = self.ddp
        if config.compile:
            # after DDP: dynamo splits the graph at DDP's bucket boundaries, so all-reduce
            # overlaps backward; the wrapper is never saved, so names stay unprefixed
            net = torch.compile(net)
        self.net = net
        self._peak_tflops = device_peak_tflops(runtime.device, runtime.precision)
        self._seq_len = 0  # of the latest batch, for the FLOPs per token
        self.optimizer = build_optimizer(
            config.optimizer,
            model,
            config.lr,
            config.weight_decay,
            (config.beta1, config.beta2),
            runtime.device.type,
            eps=config.eps,
        )
        self.scaler = runtime.grad_scaler()
        self.steps_per_epoch = self._steps_per_epoch(0)
        # a phase-2 run continues another run's step count; its own steps and LR schedule
        # (warmup included) count from there: total_steps is where this run ends
        init_state = load_trainer_state(init_optimizer_from) if init_optimizer_from else None
        self.start_step = int(init_state["step"]) if init_state is not None else 0
        if config.max_steps is not None:
            self.total_steps = self.start_step + config.max_steps
        else:
            self.total_steps = self.start_step + (config.num_epochs or 1) * self.steps_per_epoch
        self.warmup = warmup_steps_for(
            self.total_steps - self.start_step, config.warmup_steps, config.warmup_ratio
        )
        self.step = self.start_step
        self.epoch = 0
        self.step_in_epoch = 0
        self.skipped_steps = 0
        self.resumed_row: dict[str, Any] = {}  # the checkpoint's last train row, if any
        self._first_bad = torch.full((), -1, dtype=torch.long, device=runtime.device)
        # a sync per step is free on the CPU; on GPUs check at log intervals (and every save)
        self.finite_check_every = 1 if runtime.device.type == "cpu" else config.log_every
        if resume_from is not None:
            self._restore(resume_from)
        elif init_state is not None:
            self._continue_optimizer(init_state, init_optimizer_from)
        self.metrics = (
            MetricsWriter(self.out, tensorboard=config.tensorboard, purge_step=self.step + 1)
            if runtime.is_main
            else None
        )

    # ---- data ------------------------------------------------------------------------------

    def _steps_in(self, examples: int) -> int:
        """Optimizer steps an epoch of `examples` gives: the one formula (each rank gets
        examples // world, in whole steps of batch_size x batches_per_step)."""
        per_rank = examples // self.runtime.world_size
        return per_rank // (self.config.batch_size * self.config.batches_per_step)

    def _steps_per_epoch(self, epoch: int) -> int:
        order = self.train_data.order(epoch)
        steps = self._steps_in(len(order))
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
        steps = self._steps_in(len(order))
        mine = order[self.runtime.rank :: world][: steps * bs * k]
        batches = IndexBatches(mine, bs, start=skip_steps * bs * k)
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
        saved = {**state.get("train_config", {}), **state.get("run", {})}
        changes = resume_changes(saved, {**asdict(self.config), **self.run_facts})
        if changes and not self.config.allow_changes:
            raise UserError(
                f"--resume: {'; '.join(changes)} since {directory.name}; pass --allow-changes "
                "to continue with the new settings"
            )
        if changes:
            self.reporter.log(f"--allow-changes: {'; '.join(changes)}")
        elastic = elastic_split(saved, {**asdict(self.config), **self.run_facts})
        if elastic:
            self.reporter.log(
                f"--resume: the global batch of {self._global_batch} sequences is split anew "
                f"({elastic}); the sample sequence continues exactly"
            )
        if state["step"] > self.total_steps:
            flag = "--max-steps" if self.config.max_steps is not None else "--num-epochs"
            raise UserError(
                f"{flag} gives {self.total_steps} steps, below the step of {directory.name} "
                f"({state['step']}); raise it to continue training"
            )
        try:
            if saved.get("optimizer", self.config.optimizer) == self.config.optimizer:
                self.optimizer.load_state_dict(state["optimizer"])
            else:
                self.reporter.log(f"--optimizer {self.config.optimizer} starts with a fresh state")
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise UserError(
                f"{directory / STATE_FILE}: its optimizer state does not fit this model ({exc})"
            ) from None
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        # the position in world-size-free terms: a step takes the next global batch of the
        # epoch's order, whichever ranks share it (see _epoch_batches); a new global batch
        # (--allow-changes) resumes at the first step that repeats rather than skips samples
        samples = state.get("samples_in_epoch")
        if isinstance(samples, int) and not isinstance(samples, bool):
            self.step_in_epoch = samples // self._global_batch
        self.skipped_steps = state.get("skipped_steps", 0)
        per_rank = state.get("rng_per_rank") or [state["rng"]]  # "rng": older checkpoints
        if len(per_rank) == self.runtime.world_size:
            try:
                set_rng_state(per_rank[self.runtime.rank])
            except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
                raise UserError(
                    f"{directory / STATE_FILE}: its RNG state does not restore ({exc})"
                ) from None
        else:  # resumed on a different number of processes: a fresh, distinct seed per rank
            torch.manual_seed(self.config.seed + self.runtime.rank + self.step)
        if self.runtime.is_main:
            rows = load_summary(directory).get("metrics", [])
            self.resumed_row = next((r for r in rows if "split" not in r), {})
            damaged = truncate_metrics(self.out / "metrics.jsonl", self.step, rows)
            if damaged:
                self.reporter.log(f"metrics.jsonl: dropped {damaged} damaged line(s)")

    def _continue_optimizer(self, state: dict[str, Any], directory: Path) -> None:
        """Phase 2: another run's optimizer state and step count, with this run's options."""
        # the data position, RNG and loss scale start fresh: they belong to phase 1's data
        saved = state.get("train_config", {}).get("optimizer", self.config.optimizer)
        if saved != self.config.optimizer:
            raise UserError(
                f"--init-optimizer-from {directory}: its optimizer is {saved}, not --optimizer "
                f"{self.config.optimizer}"
            )
        # load_state_dict restores the saved lr/betas/decay too: this run's options win
        hyper = [
            {k: group[k] for k in self.optimizer.defaults if k in group}
            for group in self.optimizer.param_groups
        ]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise UserError(
                f"--init-optimizer-from {directory}: its optimizer state does not fit this model "
                f"({exc})"
            ) from None
        for group, values in zip(self.optimizer.param_groups, hyper):
            group.update(values)
        for param, values in self.optimizer.state.items():
            for value in values.values():
                if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                    raise UserError(
                        f"--init-optimizer-from {directory}: its optimizer state has shape "
                        f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)}; "
                        "pass the checkpoint whose weights --init-from loads"
                    )
        self.reporter.log(
            f"--init-optimizer-from {directory}: optimizer state and step {self.start_step} "
            "carried over; new LR schedule"
        )

    @property
    def _global_batch(self) -> int:
        """Sequences per optimizer step, over all ranks."""
        return self.config.batch_size * self.config.batches_per_step * self.runtime.world_size

    def _trainer_state(self, rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            # examples of this epoch's order consumed: the same for any split over ranks
            "samples_in_epoch": self.step_in_epoch * self._global_batch,
            "skipped_steps": self.skipped_steps,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_per_rank": rng_per_rank,  # every rank's dropout RNG, for exact DDP resume
            "train_config": asdict(self.config),
            "run": self.run_facts,
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
                "nsp": self.config.nsp,  # evaluate scores an MLM-only checkpoint on MLM only
                # this step's metrics rows: --resume restores them if metrics.jsonl lost them
                "metrics": self.metrics.rows_at(self.step) if self.metrics else [],
            }
            if self.metrics:
                self.metrics.sync()
            save_checkpoint(
                path, self.model, self.tokenizer, self._trainer_state(rng_per_rank), summary
            )
            prune_checkpoints(self.out / "checkpoints", self.config.keep_last)
            self.reporter.log(f"saved {path}")
        self.runtime.barrier()
        return path

    # ---- one step --------------------------------------------------------------------------

    @property
    def skipped_steps(self) -> int:
        """fp16 steps GradScaler skipped (kept on the device; reading it is a sync)."""
        return int(self._skipped)

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped = torch.full((), int(value), dtype=torch.long, device=self.runtime.device)

    def _to_device(self, batch: dict[str, torch.Tensor]):
        """A CPU batch on the device, with positions and the unpadding record made on the CPU
        first (so nothing about its shape is read back from the device)."""
        if "masked_lm_positions" not in batch:  # data without the layout: derive it here
            batch = {**batch, "masked_lm_positions": masked_positions(batch["masked_lm_labels"])}
        record = None
        if not self.config.compile and self.model.bert.unpad_tokens:
            record = Unpadding.from_mask(batch["attention_mask"])
            record = None if record.dense else record.to(self.runtime.device, non_blocking=True)
        moved = {k: v.to(self.runtime.device, non_blocking=True) for k, v in batch.items()}
        return moved, record

    def _train_step(self, micro_batches: list[dict[str, torch.Tensor]]):
        """Forward/backward over the micro-batches, then one optimizer step."""
        device, nsp, world = self.runtime.device, self.config.nsp, self.runtime.world_size
        prepared = [self._to_device(b) for b in micro_batches]
        self._seq_len = micro_batches[0]["input_ids"].shape[1]
        # masked counts on the device (no sync), summed over the step and over all ranks
        masked = torch.stack(
            [(b["masked_lm_labels"] != IGNORE_INDEX).sum() for b, _ in prepared]
        )  # (k,)
        masked_total = masked.sum()
        if self.runtime.distributed:
            dist.all_reduce(masked_total)
        masked_total = masked_total.clamp(min=1).float()
        sequences_total = world * sum(len(b["input_ids"]) for b in micro_batches)
        totals = torch.zeros(3, device=device)  # this rank's share of loss, mlm, nsp
        for i, (batch, record) in enumerate(prepared):
            last = i == len(prepared) - 1
            sync = contextlib.nullcontext() if (last or self.ddp is None) else self.ddp.no_sync()
            with sync:
                with self.runtime.autocast():
                    out = self.net(
                        batch["input_ids"],
                        batch["token_type_ids"],
                        batch["attention_mask"],
                        masked_lm_labels=batch["masked_lm_labels"],
                        next_sentence_labels=batch["next_sentence_labels"] if nsp else None,
                        masked_lm_positions=batch["masked_lm_positions"],
                        unpadding=record,
                        label_smoothing=self.config.label_smoothing,
                    )
                # mean x count = this micro-batch's sum; over the global count = its share
                mlm = out.mlm_loss * masked[i] / masked_total
                nsp_part = (
                    out.nsp_loss * (len(batch["input_ids"]) / sequences_total)
                    if nsp
                    else torch.zeros((), device=device)
                )
                loss = mlm + nsp_part
                # DDP averages gradients over ranks; x world turns that into the global sum
                self.scaler.scale(loss * world).backward()
            totals += torch.stack([loss.detach(), mlm.detach(), nsp_part.detach()]).float()

        lr = learning_rate(
            self.config.lr_policy,
            self.step - self.start_step,  # a phase-2 run's schedule starts anew
            self.config.lr,
            self.total_steps - self.start_step,
            self.warmup,
            self.config.min_lr,
            self.config.lr_power,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.scaler.is_enabled():
            # GradScaler skips the step iff an unscaled gradient is inf/NaN, i.e. iff the total
            # norm is not finite: counted on the device, read only at log intervals
            self._skipped += (~torch.isfinite(grad_norm)).long()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # real tokens (not padding), counted on the CPU batches: no sync
        tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
        return totals, grad_norm.detach(), lr, tokens

    # ---- the loop --------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to `total_steps`; returns the last logged row and evaluation."""
        cfg, runtime = self.config, self.runtime
        self.model.train()
        self.reporter.log(
            f"{self.model.num_parameters() / 1e6:.1f}M parameters on {runtime.device} "
            f"({runtime.precision}"
            + (", oneDNN matmuls" if runtime.cpu_gemm == "onednn" else "")
            + f", {runtime.world_size} process"
            f"{'es' if runtime.world_size > 1 else ''}); "
            f"{self.total_steps - self.start_step} steps of "
            f"{cfg.batch_size * cfg.batches_per_step * runtime.world_size} sequences"
            + (f", from step {self.step}" if self.step else "")
        )
        self.reporter.start(
            "Pretraining", total=self.total_steps, unit="steps", completed=self.step
        )
        window = torch.zeros(3, device=runtime.device)
        window_steps, window_tokens, window_start = 0, 0, time.perf_counter()
        last_row: dict[str, Any] = dict(self.resumed_row)  # nothing left to train: report it
        last_eval: dict[str, Any] | None = None
        stopped = False
        with _StopFlag() as stop:
            while self.step < self.total_steps and not stopped:
                loader, remaining = self._epoch_batches(self.epoch, self.step_in_epoch)
                epoch_steps = self.step_in_epoch + remaining
                iterator = iter(loader)
                for _ in range(remaining):
                    micro = [next(iterator) for _ in range(cfg.batches_per_step)]
                    where = str(runtime.device)
                    with batch_must_fit("--batch-size", cfg.batch_size, self._shape, where):
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
                    if last_row.get("step") == self.step:  # given once: heartbeats mark them old
                        fields = {
                            "loss": last_row["loss"],
                            "lr": lr,
                            "tok/s": round(last_row["tokens_per_s"]),
                        }
                        if last_row["mfu"] is not None:  # known GPUs only
                            fields["mfu"] = f"{100 * last_row['mfu']:.1f}%"
                    self.reporter.advance(1, **fields)
                    if last_row.get("step") == self.step:  # off a terminal: one plain line
                        self.reporter.status(
                            loss=last_row["loss"],
                            mlm_loss=last_row["mlm_loss"],
                            nsp_loss=last_row["nsp_loss"],
                            lr=lr,
                            **{"tok/s": round(last_row["tokens_per_s"])},
                            **({"mfu": fields["mfu"]} if "mfu" in fields else {}),
                        )
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        last_eval = self._evaluate_fitting(stop) or last_eval
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
            final = self.out / "checkpoints" / checkpoint_name(self.step)
            try:
                # save first, still under the guard: a SIGTERM during the final evaluation (a
                # long one on a CPU) then costs the evaluation, never the training since the
                # last save. Rank 0 decides: ranks that see different files must all enter
                # save()'s collective
                if not runtime.from_main((final / STATE_FILE).exists()):
                    self.save()
                final_eval = not cfg.eval_every or self.step % cfg.eval_every
                if not stopped and self.eval_data is not None and final_eval:
                    last_eval = self._evaluate_fitting(stop, resume_progress=False) or last_eval
            finally:
                stop.restore()
        if self.metrics:
            self.metrics.close()
        return {
            "train": last_row,
            "eval": last_eval,
            "checkpoint": str(final),
            "stopped_early": stopped,
        }

    def _log_row(self, mean: torch.Tensor, lr: float, grad_norm: torch.Tensor, tok_s: float):
        """The logged row; every rank calls it: losses and tokens/s are summed over ranks."""
        # each rank holds its share of the global mean loss, and its own real tokens/s
        summed = torch.cat([mean.float(), mean.new_tensor([tok_s], dtype=torch.float32)])
        if self.runtime.distributed:
            dist.all_reduce(summed)
        loss, mlm, nsp, tokens_per_s = summed.tolist()
        per_device = tokens_per_s / self.runtime.world_size
        row = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": loss,
            "mlm_loss": mlm,
            "nsp_loss": nsp if self.config.nsp else None,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": tokens_per_s,  # real tokens (padding not counted), all ranks
            # model FLOPs / peak of one device; None off the known GPUs (never guessed)
            "mfu": mfu(
                per_device,
                flops_per_token(self.model.config, self._seq_len),
                self._peak_tflops,
            ),
        }
        if self.scaler.is_enabled():
            row["skipped_steps"] = self.skipped_steps
        if self.metrics:
            self.metrics.write(row)
        return row

    def _shape(self) -> int:
        """The sequence length of the latest batch (for an out-of-memory message)."""
        return self._seq_len or getattr(self.train_data, "max_seq_length", 0)

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

    def _evaluate_fitting(self, stop: _StopFlag | None = None, resume_progress: bool = True):
        """`_evaluate`, with out of GPU memory as one line naming --eval-batch-size."""
        batch = self.config.eval_batch_size or self.config.batch_size
        seq_len = getattr(self.eval_data, "max_seq_length", 0)
        where = f"{self.runtime.device} (evaluation)"
        with batch_must_fit("--eval-batch-size", batch, lambda: seq_len, where):
            return self._evaluate(stop, resume_progress)

    def _evaluate(self, stop: _StopFlag | None = None, resume_progress: bool = True):
        """Evaluate with the run's progress display; None if a stop request ended it early (the
        training progress display then continues, unless this was the final evaluation)."""
        if self.eval_data is None:
            return {}
        result = evaluate_model(
            self.model,
            self.eval_data,
            self.config.eval_batch_size or self.config.batch_size,
            self.runtime,
            self.config.eval_batches or None,
            reporter=self.reporter,
            should_stop=(lambda: stop.requested) if stop is not None else None,
            nsp=self.config.nsp,  # an MLM-only run's NSP head is untrained: no nsp_acc
        )
        if resume_progress:  # evaluate_model's display replaced the training one
            self.reporter.start(
                "Pretraining", total=self.total_steps, unit="steps", completed=self.step
            )
        if result is None:
            self.reporter.log(f"evaluation at step {self.step} stopped on request")
            return None
        row = {"step": self.step, "split": "eval", **result}
        if self.metrics:
            self.metrics.write(row, prefix="eval")
        self.reporter.log(
            f"eval @ step {self.step}: mlm_loss {result['mlm_loss']:.4f}  "
            f"mlm_acc {result['mlm_accuracy']:.4f}  ppl {result['perplexity']:.2f}"
            + (f"  nsp_acc {result['nsp_accuracy']:.4f}" if self.config.nsp else "")
        )
        return row
