"""bertcli benchmarks: every figure is a ratio against a reference run in the same process.

    python benchmarks/run.py [--device cpu|cuda] [--json OUT]
        [--only step,e2e,preprocess,tokenizer,unpad,real,compile,cuda]

1. step: one training step (forward + backward + AdamW) of bertcli's model vs
   transformers.BertForPreTraining on the same config and batch (16 x 128, 15% masked, some
   padding), alternated, median of several steps each.
2. e2e: `Trainer` tokens/s (data loading, logging, the sparse head) over the bare step's tokens/s.
3. preprocess: WikiText-2 train wall time over bare `encode_batch` of the same lines; peak RSS of
   preprocess at 1x and 4x the corpus (separate processes).
4. tokenizer: training a 30k WordPiece vocabulary, ours vs tokenizers' trainer called bare.
5. unpad: training steps on real shards of WikiText-2 train (preprocessed here at seq 128 / 20
   predictions and seq 512 / 80), small preset: the unpadded, static-head path vs the old padded
   path (`unpad_tokens = False` and the boolean-selected sparse head), alternated over the same
   batches; real tokens per second of each.
5b. real: the step on real shards (WikiText-2 train, dupe 1, bert-base-uncased vocab) at 128 and
   512 for mini and small, fwd + bwd + AdamW with `masked_lm_positions`: transformers, bertcli
   padded (`unpad_tokens = False`), bertcli forced unpadded, and bertcli's default (the trainer's
   record; `unpad.unpad_pays` picks the layout), alternated batch by batch (issue 22: the
   default path must never be slower than the other one).
6. compile: tiny preset, seq-128 shards: `torch.compile` (padded, static shapes) vs eager
   (unpadded), after warm-up, alternated; graph breaks of the compiled step.
7. cuda: tokens/s and model FLOPs utilisation for base and large at seq 128 and 512 (bf16),
   against the dense bf16 peak of `bertcli.train.mfu`'s table (None on other GPUs), at the
   largest batch that fits (halved from a cap), the padded path against the unpadded one,
   alternated. `--dry-run` runs the same code at tiny sizes on any device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WIKITEXT2 = SHARED / "wikitext-2"
VOCAB = SHARED / "vocab" / "bert-base-uncased.txt"


def make_batch(batch: int, seq: int, vocab: int, device, seed: int = 0, max_pred: int = 20):
    """Random ids, both segments, a quarter of the rows padded to 3/4 length; as BERT's data
    pipeline does, round(15%) of each row's real tokens (at most `max_pred`) are predicted, and
    `positions` holds them padded with 0 to `max_pred` (the batch layout of our datasets)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=gen)
    types = torch.zeros_like(ids)
    types[:, seq // 2 :] = 1
    mask = torch.ones_like(ids)
    mask[: batch // 4, (3 * seq) // 4 :] = 0
    labels = torch.full_like(ids, -100)
    positions = torch.zeros(batch, max_pred, dtype=torch.long)
    for row in range(batch):
        real = int(mask[row].sum())
        count = min(max_pred, max(1, round(0.15 * real)))
        chosen = (1 + torch.randperm(real - 1, generator=gen)[:count]).sort().values  # not [CLS]
        labels[row, chosen] = ids[row, chosen]
        positions[row, :count] = chosen
    nsp = torch.randint(0, 2, (batch,), generator=gen)
    return {
        k: v.to(device)
        for k, v in dict(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask,
            labels=labels,
            nsp=nsp,
            positions=positions,
        ).items()
    }


def ours_step(model, opt, b, autocast):
    """The trainer's step: positions head, unpadding record made from the CPU batch (as the
    data side does, once per batch: cached in `b`)."""
    from bertcli.model import masked_positions
    from bertcli.unpad import Unpadding

    if "record" not in b:
        device = b["input_ids"].device
        record = Unpadding.from_mask(b["attention_mask"].cpu())
        b["record"] = None if record.dense else record.to(device)
        if "positions" not in b:
            b["positions"] = masked_positions(b["labels"].cpu()).to(device)
    with autocast():
        out = model(
            b["input_ids"],
            b["token_type_ids"],
            b["attention_mask"],
            masked_lm_labels=b["labels"],
            next_sentence_labels=b["nsp"],
            masked_lm_positions=b["positions"],
            unpadding=b["record"],
        )
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def hf_step(model, opt, b, autocast):
    with autocast():
        out = model(
            input_ids=b["input_ids"],
            token_type_ids=b["token_type_ids"],
            attention_mask=b["attention_mask"],
            labels=b["labels"],
            next_sentence_label=b["nsp"],
        )
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def bench_step(preset: str, device, repeats: int, batch=16, seq=128, precision="fp32"):
    import transformers

    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining

    cfg = BertConfig.from_preset(preset, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    ours = BertForPreTraining(cfg).to(device)
    hf_cfg = transformers.BertConfig(**cfg.to_dict())
    hf_cfg._attn_implementation = "sdpa"
    theirs = transformers.BertForPreTraining(hf_cfg).to(device)
    fused = device.type == "cuda"
    opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-5, fused=fused)
    opt_b = torch.optim.AdamW(theirs.parameters(), lr=1e-5, fused=fused)
    b = make_batch(batch, seq, cfg.vocab_size, device)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def autocast():
        if dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=dtype)

    for _ in range(2):  # warm up both
        ours_step(ours, opt_a, b, autocast)
        hf_step(theirs, opt_b, b, autocast)
    a_times, b_times = [], []
    for _ in range(repeats):
        a_times.append(timed(lambda: ours_step(ours, opt_a, b, autocast), device))
        b_times.append(timed(lambda: hf_step(theirs, opt_b, b, autocast), device))
    ours_s, hf_s = statistics.median(a_times), statistics.median(b_times)
    tokens = int(b["attention_mask"].sum())
    return {
        "preset": preset,
        "batch": f"{batch}x{seq}",
        "ours_ms": ours_s * 1e3,
        "transformers_ms": hf_s * 1e3,
        "speedup": hf_s / ours_s,
        "ours_tokens_per_s": tokens / ours_s,
    }


def bench_e2e(preset: str, device, steps: int, bare_tokens_per_s: float):
    """Trainer over TextDataset (batch 16 x 128) vs the bare step's tokens/s."""
    from bertcli.config import BertConfig
    from bertcli.data.datasets import TextDataset
    from bertcli.model import BertForPreTraining
    from bertcli.tokenizer import tokenizer_from_vocab
    from bertcli.train.runtime import Runtime
    from bertcli.train.trainer import TrainConfig, Trainer

    tok = tokenizer_from_vocab(VOCAB)
    data = TextDataset([WIKITEXT2 / "valid.txt"], tok, max_seq_length=128)
    cfg = BertConfig.from_preset(
        preset, vocab_size=tok.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model = BertForPreTraining(cfg).to(device)
    runtime = Runtime(0, 0, 1, device, "bf16" if device.type == "cuda" else "fp32")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            TrainConfig(
                max_steps=steps,
                batch_size=16,
                log_every=steps // 2,
                tensorboard=False,
                warmup_steps=0,
            ),
            model,
            data,
            runtime,
            Path(out),
        )
        trainer.fit()
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    tokens_per_s = rows[-1]["tokens_per_s"]  # the second half: warm
    return {
        "preset": preset,
        "trainer_tokens_per_s": tokens_per_s,
        "bare_tokens_per_s": bare_tokens_per_s,
        "ratio": tokens_per_s / bare_tokens_per_s,
    }


def make_shards(seq: int, max_pred: int, out: Path) -> Path:
    """WikiText-2 train as DLE shards at `seq` tokens / `max_pred` predictions (dupe factor 1)."""
    if not out.is_dir():
        from bertcli.preprocess import PreprocessConfig, preprocess
        from bertcli.tokenizer import tokenizer_from_vocab

        config = PreprocessConfig(
            [WIKITEXT2 / "train.txt"],
            out,
            max_seq_length=seq,
            max_predictions_per_seq=max_pred,
            dupe_factor=1,
        )
        preprocess(config, tokenizer_from_vocab(VOCAB))
    return out


def padded_step(model, opt, b, positions: bool = False):
    """The padded layout everywhere; the MLM head on boolean-selected positions (the old path)
    or, with `positions`, on `masked_lm_positions` (the static head)."""
    model.bert.unpad_tokens = False
    out = model(
        b["input_ids"],
        b["token_type_ids"],
        b["attention_mask"],
        masked_lm_labels=b["masked_lm_labels"],
        next_sentence_labels=b["next_sentence_labels"],
        masked_lm_positions=b["masked_lm_positions"] if positions else None,
    )
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@contextlib.contextmanager
def forced_unpadding():
    """Unpad whatever the padding share (`unpad_pays` would keep light padding padded)."""
    import bertcli.unpad

    saved = bertcli.unpad.CPU_MIN_PADDING
    bertcli.unpad.CPU_MIN_PADDING = 0.0
    try:
        yield
    finally:
        bertcli.unpad.CPU_MIN_PADDING = saved


def unpadded_step(model, opt, b, device, force: bool = True):
    """The trainer's path: unpadding record from the CPU batch, static (B, P) head; `force`
    unpads even where `unpad_pays` would choose the padded layout."""
    if force:
        with forced_unpadding():
            return unpadded_step(model, opt, b, device, force=False)
    from bertcli.unpad import Unpadding

    model.bert.unpad_tokens = True
    record = Unpadding.from_mask(b["attention_mask"])
    moved = {k: v.to(device) for k, v in b.items()}
    out = model(
        moved["input_ids"],
        moved["token_type_ids"],
        moved["attention_mask"],
        masked_lm_labels=moved["masked_lm_labels"],
        next_sentence_labels=moved["next_sentence_labels"],
        masked_lm_positions=moved["masked_lm_positions"],
        unpadding=None if record.dense else record.to(device),
    )
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def shard_batches(shards: Path, batch: int, count: int):
    """`count` batches in the training order of epoch 0, and the padding share of all data."""
    from bertcli.data.datasets import PreprocessedDataset, collate

    data = PreprocessedDataset(shards)
    real = sum(int(data[i]["attention_mask"].sum()) for i in range(len(data)))
    padding = 1.0 - real / (len(data) * data.max_seq_length)
    order = data.order(0)
    batches = [
        collate([data[int(i)] for i in order[j * batch : (j + 1) * batch]]) for j in range(count)
    ]
    return batches, padding


def bench_unpad(preset: str, seq: int, max_pred: int, batch: int, repeats: int, tmp: Path):
    """Unpadded + static head vs the old padded path, alternated over the same real batches."""
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining

    device = torch.device("cpu")
    shards = make_shards(seq, max_pred, tmp / f"shards{seq}")
    batches, padding = shard_batches(shards, batch, repeats)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_preset(preset))  # dropout 0.1, as trained
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    unpadded_step(model, opt, batches[0], device)  # warm up both
    padded_step(model, opt, batches[0])
    new_s = old_s = 0.0
    for j, b in enumerate(batches):
        runs = [("new", partial(unpadded_step, model, opt, b, device))]
        runs.append(("old", partial(padded_step, model, opt, b)))
        for name, fn in runs if j % 2 == 0 else runs[::-1]:  # alternate who goes first
            t = timed(fn, device)
            if name == "new":
                new_s += t
            else:
                old_s += t
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return {
        "preset": preset,
        "batch": f"{batch}x{seq}",
        "max_predictions": max_pred,
        "padding": padding,  # of the whole data
        "padding_of_timed_batches": 1.0 - tokens / (len(batches) * batch * seq),
        "unpadded_tokens_per_s": tokens / new_s,
        "padded_tokens_per_s": tokens / old_s,
        "speedup": old_s / new_s,
        "steps": len(batches),
    }


def bench_real_shards(preset: str, seq: int, max_pred: int, batch: int, count: int, tmp: Path):
    """transformers vs bertcli padded / forced unpadded / default on the same real batches."""
    import transformers

    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining

    device = torch.device("cpu")
    batches, padding = shard_batches(make_shards(seq, max_pred, tmp / f"shards{seq}"), batch, count)
    cfg = BertConfig.from_preset(preset)  # dropout 0.1 in both, as trained
    torch.manual_seed(0)
    ours = BertForPreTraining(cfg)
    hf_cfg = transformers.BertConfig(**cfg.to_dict())
    hf_cfg._attn_implementation = "sdpa"
    theirs = transformers.BertForPreTraining(hf_cfg)
    opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_b = torch.optim.AdamW(theirs.parameters(), lr=1e-5)

    def hf(b):
        out = theirs(
            input_ids=b["input_ids"],
            token_type_ids=b["token_type_ids"],
            attention_mask=b["attention_mask"],
            labels=b["masked_lm_labels"],
            next_sentence_label=b["next_sentence_labels"],
        )
        out.loss.backward()
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)

    def padded(b):
        padded_step(ours, opt_a, b, positions=True)

    from bertcli import cpu_gemm

    chosen = "onednn" if cpu_gemm.onednn_enabled() else "torch"

    def torch_blas(b):
        """The default path with torch's own BLAS for the linear layers (before cpu_gemm)."""
        cpu_gemm.set_backend("torch")
        try:
            unpadded_step(ours, opt_a, b, device, force=False)
        finally:
            cpu_gemm.set_backend(chosen)

    runs = {
        "transformers": hf,
        "padded": padded,
        "unpadded": lambda b: unpadded_step(ours, opt_a, b, device, force=True),
        "default": lambda b: unpadded_step(ours, opt_a, b, device, force=False),
    }
    if chosen == "onednn":
        runs["default_torch_blas"] = torch_blas
    for fn in runs.values():  # warm up every path
        fn(batches[0])
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for j, b in enumerate(batches):
        for name in names[j % len(names) :] + names[: j % len(names)]:  # rotate who goes first
            times[name].append(timed(partial(runs[name], b), device))
    total = {name: sum(t) for name, t in times.items()}
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    from bertcli.unpad import Unpadding, unpad_pays

    shares = [Unpadding.from_mask(b["attention_mask"]).padding_share for b in batches]
    return {
        "preset": preset,
        "batch": f"{batch}x{seq}",
        "steps": len(batches),
        "padding": padding,
        "padding_of_timed_batches": 1.0 - tokens / (len(batches) * batch * seq),
        "default_unpadded_batches": sum(unpad_pays("cpu", p) for p in shares),
        "seconds": total,
        "cpu_gemm": chosen,
        "speedup_vs_transformers": {
            name: total["transformers"] / total[name] for name in runs if name != "transformers"
        },
        # the median over batches of each path's time over the padded path's (load-robust)
        "median_ratio_to_padded": {
            name: statistics.median(a / p for a, p in zip(times[name], times["padded"]))
            for name in runs
            if name != "padded"
        },
    }


def _printed(row: dict) -> dict:
    """A row as one JSON line as soon as it is measured (long sections survive a timeout)."""
    print(json.dumps(row), flush=True)
    return row


def bench_compile(repeats: int, tmp: Path, batch: int = 32):
    """tiny preset, seq-128 shards: torch.compile (padded, static) vs eager (unpadded)."""
    import copy

    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining

    device = torch.device("cpu")
    batches, _ = shard_batches(make_shards(128, 20, tmp / "shards128"), batch, repeats)
    torch.manual_seed(0)
    eager = BertForPreTraining(BertConfig.from_preset("tiny"))
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-5)
    opt_c = torch.optim.AdamW(compiled_model.parameters(), lr=1e-5)

    def compiled_step(b):
        out = compiled(
            b["input_ids"],
            b["token_type_ids"],
            b["attention_mask"],
            masked_lm_labels=b["masked_lm_labels"],
            next_sentence_labels=b["next_sentence_labels"],
            masked_lm_positions=b["masked_lm_positions"],
        )
        out.loss.backward()
        opt_c.step()
        opt_c.zero_grad(set_to_none=True)

    t = time.perf_counter()
    compiled_step(batches[0])
    compile_s = time.perf_counter() - t
    for b in batches[:2]:  # warm up both (the backward graph compiles on first use too)
        compiled_step(b)
        unpadded_step(eager, opt_e, b, device)
    eager_s = comp_s = 0.0
    for j, b in enumerate(batches):
        comp = partial(compiled_step, b)
        eag = partial(unpadded_step, eager, opt_e, b, device)
        if j % 2:
            comp_s += timed(comp, device)
            eager_s += timed(eag, device)
        else:
            eager_s += timed(eag, device)
            comp_s += timed(comp, device)
    b = batches[0]
    explanation = torch._dynamo.explain(compiled_model)(
        b["input_ids"],
        b["token_type_ids"],
        b["attention_mask"],
        masked_lm_labels=b["masked_lm_labels"],
        next_sentence_labels=b["next_sentence_labels"],
        masked_lm_positions=b["masked_lm_positions"],
    )
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return {
        "preset": "tiny",
        "batch": f"{batch}x128",
        "eager_tokens_per_s": tokens / eager_s,
        "compiled_tokens_per_s": tokens / comp_s,
        "ratio": eager_s / comp_s,
        "first_compile_s": compile_s,
        "graph_breaks": explanation.graph_break_count,
    }


RSS_SCRIPT = """
import resource, sys
from pathlib import Path
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import tokenizer_from_vocab
tok = tokenizer_from_vocab(sys.argv[1])
preprocess(PreprocessConfig([Path(sys.argv[2])], Path(sys.argv[3]), dupe_factor=1,
                            workers=int(sys.argv[4])), tok)
# VmHWM is this process's own peak (ru_maxrss can carry the forking parent's over exec);
# workers are forked from this small process, so RUSAGE_CHILDREN is theirs.
own = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(max(own, kids) / 1024)
"""


def bench_preprocess(workers: int):
    from bertcli.preprocess import PreprocessConfig, preprocess
    from bertcli.tokenizer import tokenizer_from_vocab

    tok = tokenizer_from_vocab(VOCAB)
    train = WIKITEXT2 / "train.txt"
    lines = train.read_text(encoding="utf-8").splitlines()
    t = time.perf_counter()
    tok.tokenizer.encode_batch(lines, add_special_tokens=False)
    bare = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        preprocess(PreprocessConfig([train], Path(tmp) / "o", dupe_factor=1, workers=workers), tok)
        ours = time.perf_counter() - t
        big = Path(tmp) / "train4x.txt"
        with big.open("wb") as handle:
            for _ in range(4):
                handle.write(train.read_bytes())
        rss = {}
        for name, path in (("1x", train), ("4x", big)):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    RSS_SCRIPT,
                    str(VOCAB),
                    str(path),
                    str(Path(tmp) / name),
                    str(workers),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rss[name] = float(proc.stdout.strip().splitlines()[-1])
    return {
        "preprocess_s": ours,
        "bare_encode_batch_s": bare,
        "ratio": ours / bare,
        "peak_rss_mb_1x": rss["1x"],
        "peak_rss_mb_4x": rss["4x"],
        "workers": workers,
    }


def bench_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from bertcli.tokenizer import SPECIAL_TOKENS, train_tokenizer

    train = WIKITEXT2 / "train.txt"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train_tokenizer("wordpiece", [train], 30522, Path(tmp) / "ours")
        ours = time.perf_counter() - t
    bare_tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    bare_tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    bare_tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=30522, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    t = time.perf_counter()
    bare_tok.train([str(train)], trainer)
    bare = time.perf_counter() - t
    return {"ours_s": ours, "bare_trainer_s": bare, "overhead": ours / bare - 1.0}


# (preset, sequence length, batch cap): the batch is the largest power-of-two fraction of the cap
# that fits; the caps keep one step under ~0.3 s on an H100 while filling it
CUDA_CASES = (("base", 128, 256), ("base", 512, 64), ("large", 128, 256), ("large", 512, 64))
# the same code at CPU sizes: a 2,000-piece vocabulary, fp32 (CPU bf16 is another code path)
DRY_RUN_CASES = (("tiny", 128, 4), ("tiny", 512, 2))
DRY_RUN_VOCAB = 2000


def bench_cuda(
    device, repeats: int, cases=CUDA_CASES, precision: str = "bf16", vocab_size: int | None = None
) -> list[dict]:
    """Tokens/s and MFU per case, padded (`unpad_tokens = False`) against unpadded (the eager
    trainer's path), at the largest batch that fits; MFU is None off the peak table."""
    from bertcli.train.mfu import device_peak_tflops

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = device_peak_tflops(device, precision)
    results = []
    for preset, seq, cap in cases:
        results.append(
            _cuda_case(device, preset, seq, cap, repeats, peak, name, precision, vocab_size)
        )
        _release(device)
    return results


def _release(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cuda_case(device, preset, seq, cap, repeats, peak, name, precision, vocab_size) -> dict:
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining
    from bertcli.train.mfu import flops_per_token
    from bertcli.train.optim import build_optimizer

    cfg = BertConfig.from_preset(preset, vocab_size=vocab_size)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).to(device)  # dropout 0.1, as trained
    # the trainer's optimizer: fused AdamW on CUDA
    opt = build_optimizer("adamw", model, 1e-5, 0.01, (0.9, 0.999), device.type)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def step(b, unpadded: bool):
        model.bert.unpad_tokens = unpadded
        ours_step(model, opt, b, autocast)

    batch, out_of_memory = cap, []
    while True:  # halve from the cap until a step of each path fits (the warm-up)
        b = make_batch(batch, seq, cfg.vocab_size, device, max_pred=20 if seq <= 128 else 80)
        try:
            for _ in range(2):
                step(b, False)
                step(b, True)
            sync(device)
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            out_of_memory.append(batch)
        # outside the handler: the exception's frames (and the graph they hold) are gone
        opt.zero_grad(set_to_none=True)
        del b
        _release(device)
        batch //= 2
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {"padded": [], "unpadded": []}
    for j in range(repeats):  # alternated, and who goes first alternates too
        order = ("padded", "unpadded") if j % 2 == 0 else ("unpadded", "padded")
        for path in order:
            times[path].append(timed(partial(step, b, path == "unpadded"), device))
    tokens = int(b["attention_mask"].sum())  # real tokens, as the trainer counts them
    flops = flops_per_token(cfg, seq)
    row = {
        "preset": preset,
        "seq": seq,
        "batch": batch,
        "batch_cap": cap,
        "out_of_memory_at": out_of_memory,
        "padding": 1.0 - tokens / (batch * seq),
        "precision": precision,
        "vocab_size": cfg.vocab_size,
        "device": name,
        "peak_tflops": peak,
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    }
    for path, measured in times.items():
        seconds = statistics.median(measured)
        achieved = flops * tokens / seconds / 1e12
        row[path] = {
            "step_ms": seconds * 1e3,
            "tokens_per_s": tokens / seconds,
            "sequences_per_s": batch / seconds,
            "tflops": achieved,
            "mfu": achieved / peak if peak else None,
        }
    # the trainer's eager path, which logged MFU is compared with
    row["tokens_per_s"] = row["unpadded"]["tokens_per_s"]
    row["mfu"] = row["unpadded"]["mfu"]
    row["unpadded_over_padded"] = row["padded"]["step_ms"] / row["unpadded"]["step_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", default="step,e2e,preprocess,tokenizer,unpad,real,compile,cuda")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the cuda section at tiny sizes on any device (benchmarks/gpu.sh --dry-run)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep the WikiText-2 shards here between runs (default: temp)"
    )
    parser.add_argument(
        "--real-presets", default="", help="only these presets' real-shard rows (e.g. mini)"
    )
    parser.add_argument(
        "--cpu-gemm",
        choices=["auto", "onednn", "torch"],
        default="auto",
        help="fp32 CPU linear layers as the commands choose them (auto), or forced",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    only = set(args.only.split(","))
    from bertcli import cpu_gemm

    os.environ[cpu_gemm.ENV] = args.cpu_gemm
    gemm, gemm_speedup = cpu_gemm.choose(device)
    results: dict = {
        "machine": {
            "device": args.device,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_gemm": gemm,
            "cpu_gemm_measured_speedup": gemm_speedup,
        }
    }
    if "step" in only:
        presets = ["mini", "small"] + (["base"] if device.type == "cuda" else [])
        precision = "bf16" if device.type == "cuda" else "fp32"
        results["step"] = [
            bench_step(p, device, args.repeats, precision=precision) for p in presets
        ]
    if "e2e" in only:
        bare = results.get("step", [bench_step("mini", device, args.repeats)])[0]
        results["e2e"] = bench_e2e("mini", device, 40, bare["ours_tokens_per_s"])
    if "preprocess" in only:
        results["preprocess"] = bench_preprocess(os.cpu_count() or 1)
    if "tokenizer" in only:
        results["tokenizer"] = bench_tokenizer()
    if ({"unpad", "real", "compile"} & only) and device.type == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work_dir or Path(tmp)
            if "unpad" in only:
                # batches vary in padding (4x512: 6-45%): enough of them to track the data's
                results["unpad"] = [
                    bench_unpad("small", 512, 80, 4, max(32, args.repeats), work),
                    bench_unpad("small", 128, 20, 16, max(12, args.repeats), work),
                ]
            if "real" in only:
                # issue 22's shapes: mini 16 x 128, small 8 x 128; 4 x 512 for both
                results["real"] = [
                    _printed(bench_real_shards(p, seq, pred, batch, max(count, args.repeats), work))
                    for p, seq, pred, batch, count in (
                        ("mini", 128, 20, 16, 10),
                        ("small", 128, 20, 8, 12),
                        ("mini", 512, 80, 4, 12),
                        ("small", 512, 80, 4, 12),
                    )
                    if not args.real_presets or p in args.real_presets.split(",")
                ]
            if "compile" in only:
                results["compile"] = bench_compile(args.repeats, work)
    if "cuda" in only and (device.type == "cuda" or args.dry_run):
        if args.dry_run:
            results["cuda"] = bench_cuda(device, 1, DRY_RUN_CASES, "fp32", DRY_RUN_VOCAB)
        else:
            results["cuda"] = bench_cuda(device, args.repeats)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bertcli benchmarks")
    table.add_column("benchmark")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in results.get("step", []):
        table.add_row(
            f"step {row['preset']} {row['batch']}",
            "speedup vs transformers",
            f"{row['speedup']:.2f}x ({row['ours_ms']:.0f} vs {row['transformers_ms']:.0f} ms)",
        )
    if "e2e" in results:
        r = results["e2e"]
        table.add_row(f"e2e {r['preset']}", "trainer / bare step tokens/s", f"{r['ratio']:.2f}")
    if "preprocess" in results:
        r = results["preprocess"]
        table.add_row(
            "preprocess WikiText-2",
            "time / bare encode_batch",
            f"{r['ratio']:.2f}x ({r['preprocess_s']:.1f} vs {r['bare_encode_batch_s']:.1f} s)",
        )
        table.add_row(
            "preprocess RSS",
            "peak MB at 1x / 4x",
            f"{r['peak_rss_mb_1x']:.0f} / {r['peak_rss_mb_4x']:.0f}",
        )
    if "tokenizer" in results:
        r = results["tokenizer"]
        table.add_row(
            "tokenizer 30k WordPiece",
            "overhead vs bare trainer",
            f"{100 * r['overhead']:+.1f}% ({r['ours_s']:.1f} vs {r['bare_trainer_s']:.1f} s)",
        )
    for r in results.get("unpad", []):
        table.add_row(
            f"unpad {r['preset']} {r['batch']} ({100 * r['padding']:.1f}% padding; "
            f"{100 * r['padding_of_timed_batches']:.1f}% in the {r['steps']} timed batches)",
            "tokens/s over the old padded path",
            f"{r['speedup']:.2f}x ({r['unpadded_tokens_per_s']:.0f} vs "
            f"{r['padded_tokens_per_s']:.0f})",
        )
    for r in results.get("real", []):
        x = r["speedup_vs_transformers"]
        table.add_row(
            f"real shards {r['preset']} {r['batch']} ({100 * r['padding_of_timed_batches']:.1f}% "
            f"padding; {r['default_unpadded_batches']}/{r['steps']} batches unpadded by default)",
            "speedup vs transformers: padded / unpadded / default",
            f"{x['padded']:.2f}x / {x['unpadded']:.2f}x / {x['default']:.2f}x",
        )
    if "compile" in results:
        r = results["compile"]
        table.add_row(
            f"compile tiny {r['batch']}",
            "tokens/s compiled over eager",
            f"{r['ratio']:.2f}x ({r['graph_breaks']} graph breaks)",
        )
    for r in results.get("cuda", []):
        for path in ("unpadded", "padded"):
            m = r[path]
            mfu = f"{100 * m['mfu']:.1f}% MFU" if m["mfu"] else "peak unknown"
            table.add_row(
                f"{r['device']} {r['preset']} {r['batch']}x{r['seq']} {r['precision']} {path}",
                "tokens/s, MFU",
                f"{m['tokens_per_s']:.0f} tok/s, {mfu}",
            )
    Console().print(table)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
