"""Model configuration with transformers' field names, presets, validation and JSON I/O.

`BertConfig` is the only thing `model.py` sees. Its JSON form is transformers' `config.json`
for `BertForPreTraining`, so our checkpoints load there unchanged and theirs load here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from bertcli.data.corpus import FORMATS
from bertcli.errors import UserError
from bertcli.train.schedules import POLICIES

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")

# Google's BERT family (Turc et al. 2019 "Well-Read Students"): (layers, hidden, heads).
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


@dataclass
class BertConfig:
    """BERT hyperparameters, named exactly as in `transformers.BertConfig`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise UserError(
                f"hidden_act must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_act!r}"
            )
        for name in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "initializer_range",
            "layer_norm_eps",
        ):  # a JSON string such as "1e-12" is refused, not converted
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UserError(f"{name} must be a number, got {value!r}")
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int):
            raise UserError(f"pad_token_id must be an integer, got {self.pad_token_id!r}")
        if not isinstance(self.hidden_act, str):
            raise UserError(f"hidden_act must be a string, got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {value!r}")
        if not float(self.initializer_range) > 0:
            raise UserError(f"initializer_range must be > 0, got {self.initializer_range!r}")
        if not float(self.layer_norm_eps) > 0:
            raise UserError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise UserError(
                f"pad_token_id ({self.pad_token_id}) must be a valid id below "
                f"vocab_size ({self.vocab_size})"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BertConfig:
        """A preset from Google's BERT family, with any field overridden (None = keep)."""
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        base = {
            "num_hidden_layers": layers,
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "intermediate_size": 4 * hidden,
        }
        given = {k: v for k, v in overrides.items() if v is not None}
        if "hidden_size" in given and "intermediate_size" not in given:
            given["intermediate_size"] = 4 * given["hidden_size"]
        return cls(**{**base, **given})

    def with_overrides(self, **overrides: Any) -> BertConfig:
        """A copy with the non-None overrides applied (and validated)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """transformers' config.json content for `BertForPreTraining`."""
        out: dict[str, Any] = {"architectures": ["BertForPreTraining"], "model_type": "bert"}
        out.update(asdict(self))
        out.update(
            {
                "position_embedding_type": "absolute",
                "tie_word_embeddings": True,
                "classifier_dropout": None,
                "use_cache": True,
            }
        )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> BertConfig:
        """Read transformers' config.json content; unknown keys are ignored."""
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise UserError(f"{source}: model_type is {model_type!r}, expected 'bert'")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise UserError(f"{source}: only absolute position embeddings are supported")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names and v is not None}
        if "hidden_act" in kwargs and not isinstance(kwargs["hidden_act"], str):
            raise UserError(f"{source}: hidden_act must be a string")
        try:
            return cls(**kwargs)
        except UserError as exc:  # name the file as well as the field
            raise UserError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write config.json atomically."""
        from bertcli.atomic import write_text_atomic  # a fresh temp name: never a planted link

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BertConfig:
        """Read a transformers BERT config.json."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such config file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a JSON config file ({exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a JSON object")
        return cls.from_dict(data, source=str(path))


# ---- the training run's options: one source of defaults and help, read by the CLI ---------------

OPTIMIZERS = ("adamw", "lamb", "novograd", "sgd")


def _opt(default: Any, help: str) -> Any:
    """A dataclass field whose `--help` text travels with it (cli.py reads both)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping options of `bertcli pretrain`.

    Each field's default and help text are the CLI option's (`cli.py` reads them from here).
    """

    max_steps: int | None = _opt(None, "Optimizer steps to run.")
    num_epochs: int | None = _opt(None, "Or: passes over the training data.")
    batch_size: int = _opt(32, "Sequences per device per micro-batch.")
    batches_per_step: int = _opt(1, "Micro-batches per optimizer step.")
    optimizer: str = _opt("adamw", "Optimizer.")
    lr: float = _opt(1e-4, "Peak learning rate.")
    weight_decay: float = _opt(0.01, "Weight decay (not on biases, LayerNorm).")
    beta1: float = _opt(0.9, "First-moment decay (momentum for SGD).")
    beta2: float = _opt(0.999, "Second-moment decay.")
    eps: float = _opt(1e-6, "AdamW/LAMB epsilon added to the update's denominator, > 0; e.g. 1e-8.")
    lr_policy: str = _opt("warmup-annealing", "Learning-rate schedule.")
    warmup_ratio: float = _opt(0.01, "Warmup as a fraction of all steps.")
    warmup_steps: int | None = _opt(None, "Warmup steps (overrides the ratio).")
    min_lr: float = _opt(0.0, "Floor of the decaying schedules.")
    lr_power: float = _opt(
        1.0, "Exponent of --lr-policy polynomial, > 0: 1 = linear decay, e.g. 2 decays faster."
    )
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 = none).")
    log_every: int = _opt(10, "Log metrics every N steps.")
    eval_every: int = _opt(0, "Evaluate every N steps (0 = only at the end).")
    eval_batches: int = _opt(0, "Batches per evaluation (0 = all).")
    eval_batch_size: int | None = _opt(
        None, "Sequences per evaluation batch, >= 1; e.g. 128 (default: --batch-size)."
    )
    save_every: int = _opt(0, "Save a checkpoint every N steps (0 = only at end).")
    save_every_epochs: int = _opt(0, "Save a checkpoint every N epochs.")
    keep_last: int = _opt(
        0,
        "Keep only the newest K checkpoints (0 = all); the disk needs room for K + 1 "
        "(the next one is written before the oldest is deleted).",
    )
    allow_changes: bool = _opt(
        False,
        "--resume with a changed batch size, sequence length, data, optimizer, world size "
        "or precision (refused otherwise).",
    )
    seed: int = _opt(12345, "Random seed.")
    nsp: bool = _opt(
        True,
        "Train next-sentence prediction. --no-nsp: MLM only; with --data-text the text is "
        "packed into full sequences across document ends (RoBERTa FULL-SENTENCES).",
    )
    compile: bool = _opt(
        False,
        "torch.compile the model (after DDP wrapping); exits with one line where no "
        "compiler is available (a C++ compiler on the CPU, triton on CUDA).",
    )
    label_smoothing: float = _opt(
        0.0, "Label smoothing of the MLM loss, in [0, 1); e.g. 0.1 (evaluation stays unsmoothed)."
    )
    num_workers: int = _opt(0, "DataLoader worker processes.")
    tensorboard: bool = _opt(True, "Mirror metrics.jsonl to TensorBoard event files.")

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

        for name in (
            "max_steps",
            "num_epochs",
            "batch_size",
            "batches_per_step",
            "log_every",
            "eval_batch_size",
        ):
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
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.eps > 0:
            raise UserError(f"--eps must be > 0, got {self.eps}")
        if not self.lr_power > 0:
            raise UserError(f"--lr-power must be > 0, got {self.lr_power}")


# ---- preprocess's options ------------------------------------------------------------------------

MAX_SEQ_LENGTH_LIMIT = 512  # BERT's position table; longer sequences no BERT could use


@dataclass
class PreprocessConfig:
    """Options of `bertcli preprocess`, with DLE's defaults.

    Each field's default and help text are the CLI option's (`cli.py` reads them from here).
    """

    inputs: list[Path] = field(
        metadata={
            "help": "Corpus files (.gz/.bz2/.xz read as streams) or directories (every file "
            "below, sorted); repeatable."
        }
    )
    out: Path = field(metadata={"help": "Output directory (a DLE-named sub-directory is made)."})
    max_seq_length: int = _opt(128, "Tokens per example, [CLS]/[SEP] included.")
    max_predictions_per_seq: int = _opt(20, "Most masked positions per example.")
    masked_lm_prob: float = _opt(0.15, "Fraction of tokens to predict.")
    short_seq_prob: float = _opt(0.1, "Probability of a shorter target length.")
    dupe_factor: int = _opt(5, "Passes over the corpus with different masks.")
    seed: int = _opt(12345, "Random seed (output is identical for a seed).")
    whole_word_masking: bool = _opt(False, "Mask whole words, not pieces.")
    input_format: str = _opt("auto", "How to read --input.")
    workers: int = field(
        default_factory=lambda: os.cpu_count() or 1,
        metadata={"help": "Cores: single-threaded processes (default: all cores)."},
    )
    shard_size: int = _opt(65536, "Examples per HDF5 shard.")
    eval_fraction: float = _opt(0.0, "Fraction of documents held out as eval shards (DIR/eval).")
    nsp: bool = _opt(
        True,
        "Next-sentence pairs (BERT). --no-nsp: MLM-only, text packed into full sequences "
        "across document ends (RoBERTa FULL-SENTENCES); every next_sentence_labels is 0.",
    )

    def __post_init__(self) -> None:
        if not 8 <= self.max_seq_length <= MAX_SEQ_LENGTH_LIMIT:
            raise UserError(
                f"--max-seq-length must be between 8 and {MAX_SEQ_LENGTH_LIMIT} "
                f"(BERT's position embeddings), got {self.max_seq_length}"
            )
        if not 1 <= self.max_predictions_per_seq <= self.max_seq_length:
            raise UserError(
                f"--max-predictions-per-seq must be between 1 and --max-seq-length, "
                f"got {self.max_predictions_per_seq}"
            )
        # --masked-lm-prob is checked by MaskingSpec, the one check for every command
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise UserError(f"--short-seq-prob must be in [0, 1], got {self.short_seq_prob}")
        if self.dupe_factor < 1:
            raise UserError(f"--dupe-factor must be >= 1, got {self.dupe_factor}")
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.shard_size < 1:
            raise UserError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError(f"--eval-fraction must be in [0, 1), got {self.eval_fraction}")
        if self.input_format not in FORMATS:
            raise UserError(f"--input-format must be one of {', '.join(FORMATS)}")

    def subdir_name(self, lowercase: bool) -> str:
        """DLE's directory name for these settings."""
        return (
            f"lower_case_{int(lowercase)}_seq_len_{self.max_seq_length}"
            f"_max_pred_{self.max_predictions_per_seq}_masked_lm_prob_{self.masked_lm_prob}"
            f"_random_seed_{self.seed}_dupe_factor_{self.dupe_factor}"
            + ("" if self.nsp else "_packed_no_nsp")
        )


# ---- pretrain's options --------------------------------------------------------------------------


@dataclass
class PretrainConfig:
    """Everything `bertcli pretrain` was asked to do, resolved once in the CLI.

    Each field with an option of its own gives that option its default and help text (`cli.py`
    reads them from here); `data_mode`, `model_overrides` and `train` are assembled there.
    """

    out: Path | None = _opt(None, "Run directory (default outputs/bert_lm/<time>).")
    data_mode: str = "preprocessed"  # or "text": --data-text/--data-preprocessed
    train_data: list[Path] = field(
        default_factory=list,
        metadata={
            "help": "Text files, or shard directories (repeatable; DIR:WEIGHT sets a directory's "
            "share of each epoch). Default: data/wikitext2, else the sample."
        },
    )
    eval_data: list[Path] = field(
        default_factory=list,
        metadata={"help": "Held-out text files or shard directories (repeatable)."},
    )
    tokenizer: Path | None = _opt(None, "Tokenizer directory (build-tokenizer).")
    vocab_file: Path | None = _opt(None, "Or a published BERT vocab.txt.")
    vocab_size: int = _opt(30522, "Vocabulary size when a tokenizer is built from the training text.")
    preset: str = _opt("base", "Model size from Google's BERT family.")
    model_overrides: dict[str, Any] = field(default_factory=dict)  # --hidden-size and co.
    config_file: Path | None = _opt(None, "A transformers BERT config.json.")
    init_from: str | None = _opt(
        None,
        "Start from pretrained weights: a checkpoint or run directory, or a Hub name "
        "(bert-base-uncased, org/name; downloaded on first use, with its tokenizer).",
    )
    init_optimizer_from: str | None = _opt(
        None,
        "Phase 2: also carry the optimizer state and step count of this bertcli "
        "checkpoint or run dir (usually the --init-from one); the LR schedule starts anew.",
    )
    max_seq_length: int = _opt(128, "Tokens per example (text data).")
    masked_lm_prob: float = _opt(0.15, "Fraction of tokens to predict (text data).")
    max_predictions_per_seq: int = _opt(20, "Most predictions per example (text).")
    short_seq_prob: float = _opt(
        0.1,
        "Chance that an example targets a random shorter length (text data), in [0, 1]; "
        "e.g. 0.1 as BERT.",
    )
    whole_word_masking: bool = _opt(False, "Mask whole words (text data).")
    hidden_dropout: float | None = _opt(
        None,
        "Dropout on embeddings and layer outputs, in [0, 1); e.g. 0.0 for short runs "
        "(default: the model config's, 0.1).",
    )
    attention_dropout: float | None = _opt(
        None,
        "Dropout on attention probabilities, in [0, 1); e.g. 0.0 (default: the model "
        "config's, 0.1).",
    )
    input_format: str = _opt("auto", "How to read text data.")
    cache_dir: Path | None = _opt(
        None,
        "Token cache shared by runs (text data: a corpus is tokenized once per tokenizer). "
        "Default: $BERTCLI_CACHE, else $XDG_CACHE_HOME/bertcli, else ~/.cache/bertcli.",
    )
    device: str = _opt("auto", "auto = the local GPU if any.")
    precision: str = _opt("auto", "auto = bf16 on capable GPUs, fp32 on CPU.")
    resume: bool = _opt(
        False, "Continue from the newest complete checkpoint (a damaged one is skipped)."
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    # issue 21: the model card and the Hub (what the card says and where the model goes)
    license: str | None = _opt(
        None, "Model card: the license id the Hub knows (apache-2.0, mit, cc-by-4.0 …)."
    )
    language: list[str] = field(
        default_factory=list,
        metadata={"help": "Model card: a language code of the training text (repeatable: en …)."},
    )
    push_to: str | None = _opt(
        None, "Push the final model to this Hub repo (org/name) when the run ends (rank 0)."
    )
    command: list[str] = field(default_factory=list)  # the command line, for run.json and the card

    def __post_init__(self) -> None:
        if self.data_mode not in ("text", "preprocessed"):
            raise UserError("choose --data-text or --data-preprocessed")
        if not 8 <= self.max_seq_length:
            raise UserError(f"--max-seq-length must be >= 8, got {self.max_seq_length}")
        if self.vocab_size < 6:
            raise UserError(f"--vocab-size must be > 5, got {self.vocab_size}")
        if self.resume and self.out is None:
            raise UserError("--resume needs --out DIR (the run to continue)")
        if self.init_optimizer_from is not None and self.init_from is None:
            raise UserError(
                "--init-optimizer-from needs --init-from (the weights its optimizer state "
                "belongs to, usually the same checkpoint)"
            )
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise UserError(f"--short-seq-prob must be in [0, 1], got {self.short_seq_prob}")
        for flag, value in (
            ("--hidden-dropout", self.hidden_dropout),
            ("--attention-dropout", self.attention_dropout),
        ):
            if value is not None and not 0.0 <= value < 1.0:
                raise UserError(f"{flag} must be in [0, 1), got {value}")
        check_card_options(self.license, self.language)


def check_card_options(license: str | None, language: list[str]) -> None:
    """--license / --language as the Hub's card metadata takes them (an id, ISO 639 codes),
    refused at the start rather than by the Hub when the run ends."""
    import re

    if license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license):
        raise UserError(
            f"--license {license!r}: give the Hub's license id in lower case (apache-2.0, mit, "
            "cc-by-4.0, other …)"
        )
    for code in language:
        if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", code):
            raise UserError(
                f"--language {code!r}: give an ISO 639 code such as en, de, zh or pt-BR"
            )


# ---- finetune's options --------------------------------------------------------------------------


@dataclass
class FinetuneConfig:
    """Everything `bertcli finetune` was asked to do; defaults are transformers' `run_glue.py`
    (and its `Trainer`'s AdamW: eps 1e-8, gradient clipping at 1.0, linear decay).

    Each field's default and help text are the CLI option's (`cli.py` reads them from here).
    """

    init_from: str = field(
        metadata={
            "help": "The pretrained model: a checkpoint or run directory, a transformers BERT "
            "directory (a bare BertModel too), or a Hub name (downloaded on first use)."
        }
    )
    task: str = field(
        metadata={
            "help": "A GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli), or classification, "
            "regression or ner for your own files."
        }
    )
    out: Path = field(metadata={"help": "Run directory: model/, results.json, predictions."})
    data_dir: Path | None = _opt(
        None, "A GLUE task directory: train.tsv and dev.tsv (MNLI: dev_matched/mismatched)."
    )
    train_data: Path | None = _opt(None, "Training file: TSV, CSV, JSON lines, or CoNLL (ner).")
    eval_data: Path | None = _opt(None, "Evaluation file, in the training file's format.")
    text_column: str | None = _opt(
        None, "Text column: a header name, or a 0-based index (default: sentence, else text)."
    )
    text_pair_column: str | None = _opt(None, "Second text of a pair (default: none).")
    label_column: str | None = _opt(None, "Label column: a name or 0-based index (default: label).")
    header: bool = _opt(True, "TSV/CSV files start with a header row (--no-header: they do not).")
    tokenizer: Path | None = _opt(None, "Tokenizer directory (default: the checkpoint's own).")
    max_seq_length: int = _opt(128, "Most tokens per example, [CLS]/[SEP] included.")
    lr: float = _opt(2e-5, "Peak learning rate.")
    num_epochs: int = _opt(3, "Passes over the training data.")
    batch_size: int = _opt(32, "Examples per device per micro-batch.")
    eval_batch_size: int | None = _opt(None, "Examples per eval batch (default: --batch-size).")
    batches_per_step: int = _opt(1, "Micro-batches per optimizer step.")
    optimizer: str = _opt("adamw", "Optimizer.")
    lr_policy: str = _opt("warmup-annealing", "Learning-rate schedule (linear decay by default).")
    warmup_ratio: float = _opt(0.0, "Warmup as a fraction of all steps.")
    weight_decay: float = _opt(0.0, "Weight decay (not on biases, LayerNorm).")
    beta1: float = _opt(0.9, "First-moment decay.")
    beta2: float = _opt(0.999, "Second-moment decay.")
    eps: float = _opt(1e-8, "AdamW/LAMB epsilon.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 = none).")
    seed: int = _opt(42, "Random seed (of the first run).")
    seeds: int = _opt(1, "Fine-tune N times with seeds seed … seed+N-1 and report the median.")
    keep_all_seeds: bool = _opt(False, "Keep every seed's model and predictions in seeds/.")
    log_every: int = _opt(10, "Log training metrics every N steps.")
    device: str = _opt("auto", "auto = the local GPU if any.")
    precision: str = _opt("auto", "auto = bf16 on capable GPUs, fp32 on CPU.")
    tensorboard: bool = _opt(True, "Mirror metrics.jsonl to TensorBoard event files.")
    license: str | None = _opt(
        None, "Model card: the license id the Hub knows (apache-2.0, mit, cc-by-4.0 …)."
    )
    language: list[str] = field(
        default_factory=list,
        metadata={"help": "Model card: a language code of the training text (repeatable: en …)."},
    )
    push_to: str | None = _opt(
        None, "Push model/ with its card to this Hub repo (org/name) when the run ends (rank 0)."
    )

    def __post_init__(self) -> None:
        from bertcli.finetune.tasks import TASK_NAMES

        check_card_options(self.license, self.language)

        if self.task not in TASK_NAMES:
            raise UserError(f"--task must be one of {', '.join(TASK_NAMES)}, got {self.task!r}")
        if self.data_dir is not None and (self.train_data or self.eval_data):
            raise UserError("give --data-dir or --train-data/--eval-data, not both")
        if (self.train_data is None) != (self.eval_data is None):
            raise UserError("give both --train-data and --eval-data (or --data-dir)")
        if not 8 <= self.max_seq_length <= MAX_SEQ_LENGTH_LIMIT:
            raise UserError(
                f"--max-seq-length must be between 8 and {MAX_SEQ_LENGTH_LIMIT}, "
                f"got {self.max_seq_length}"
            )
        for name in ("num_epochs", "batch_size", "batches_per_step", "seeds", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise UserError("--eval-batch-size must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.lr_policy not in POLICIES:
            raise UserError(f"--lr-policy must be one of {', '.join(POLICIES)}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UserError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"--{name} must be in [0, 1)")
        if not self.eps > 0:
            raise UserError(f"--eps must be > 0, got {self.eps}")
        if self.max_grad_norm < 0:
            raise UserError("--max-grad-norm must be >= 0 (0 = no clipping)")
