"""The `bertcli` command line: one thin function per command (parse, build a config, call the core).

Every `UserError` raised below becomes one line on stderr and exit code 2, and so does every
usage error Typer/Click detects (unknown option, bad type), instead of a multi-line panel.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from bertcli import __version__
from bertcli.config import FinetuneConfig, PreprocessConfig, PretrainConfig, TrainConfig
from bertcli.errors import UserError, unhandled_message, user_message

try:  # recent typer vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - typer on top of click
    from click.exceptions import ClickException

# `bertcli --help` lists commands in the order a run uses them, not in definition order.
PIPELINE = (
    "download",
    "build-tokenizer",
    "preprocess",
    "pretrain",
    "evaluate",
    "finetune",
    "export-config",
)


def _flags_without_metavar(params: list) -> None:
    """A flag takes no value: --help shows no `<bool>` type for it."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


_INVOCATION: list[str] = []  # the command line being run, for run.json and the model card


class _OneLineErrors(TyperGroup):
    """Run commands non-standalone so errors can be reported as a single stderr line; list
    commands in pipeline order; show flags without a value type."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: PIPELINE.index(n) if n in PIPELINE else len(PIPELINE))

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)
        _flags_without_metavar(params)
        return params

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_without_metavar(command.get_params(ctx))
        return command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _INVOCATION[:] = ["bertcli", *(sys.argv[1:] if args is None else list(args))]
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except UserError as exc:
            _fail(user_message(exc))
        except ClickException as exc:
            _fail(exc.format_message(), exc.exit_code or 2)
        except typer.Abort:
            sys.stderr.write("aborted\n")
            sys.exit(130)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        except Exception as exc:  # a full disk or an OS error no command named: still one line
            message = unhandled_message(exc)
            if message is None:
                raise
            _fail(message)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int = 2) -> None:
    first = " ".join(message.strip().split("\n")[:1]) or "error"
    first = first.replace("Value error, ", "")  # typer's pydantic wording for bad choices
    sys.stderr.write(f"error: {first}\n")
    sys.exit(code)


app = typer.Typer(
    cls=_OneLineErrors,
    name="bertcli",
    help="Pretrain BERT: download a corpus, build a tokenizer, preprocess, pretrain, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bertcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Pretrain BERT from raw text to a checkpoint that loads in Hugging Face transformers."""


class Preset(str, Enum):
    tiny = "tiny"
    mini = "mini"
    small = "small"
    medium = "medium"
    base = "base"
    large = "large"


def _option(config: type, name: str, *param_decls: str, choices: type[Enum] | None = None) -> Any:
    """A typer.Option whose default and help are the config dataclass field's: one source."""
    from dataclasses import MISSING, fields

    field = next(f for f in fields(config) if f.name == name)
    default = field.default
    if default is MISSING:  # a default_factory: computed later (None); else a required option
        default = None if field.default_factory is not MISSING else ...
    if choices is not None and default is not None:
        default = choices(default)
    return typer.Option(default, *param_decls, help=field.metadata["help"])


def _model_overrides(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


@app.command("export-config")
def export_config(
    preset: Preset = typer.Option(Preset.base, help="Size from Google's BERT family."),
    from_checkpoint: Path | None = typer.Option(
        None, help="Take the config of a checkpoint (or a run's newest) instead of a preset."
    ),
    vocab_size: int | None = typer.Option(None, help="Vocabulary size (default 30522)."),
    hidden_size: int | None = typer.Option(None, help="Hidden size H."),
    num_hidden_layers: int | None = typer.Option(None, help="Encoder layers L."),
    num_attention_heads: int | None = typer.Option(None, help="Attention heads A."),
    intermediate_size: int | None = typer.Option(None, help="Feed-forward size (default 4H)."),
    hidden_act: str | None = typer.Option(None, help="gelu, gelu_new, relu, silu …"),
    max_position_embeddings: int | None = typer.Option(None, help="Longest sequence."),
    out: Path = typer.Option(Path("bert-config.json"), help="Where to write the config JSON."),
) -> None:
    """Write the model config in transformers' config.json format.

    Example: bertcli export-config --preset base --vocab-size 21128 --out bert-config.json
    """
    from bertcli.config import BertConfig
    from bertcli.hf import load_config

    overrides = _model_overrides(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        hidden_act=hidden_act,
        max_position_embeddings=max_position_embeddings,
    )
    if from_checkpoint is not None:
        from bertcli.train.checkpoint import resolve_checkpoint

        config = load_config(resolve_checkpoint(from_checkpoint)).with_overrides(**overrides)
    else:
        config = BertConfig.from_preset(preset.value, **overrides)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name")
    if not out.parent.exists():
        raise UserError(f"--out: directory {out.parent} does not exist")
    config.save(out)
    typer.echo(f"wrote {out}")


class TokenizerType(str, Enum):
    wordpiece = "wordpiece"
    sentencepiece = "sentencepiece"


class InputFormat(str, Enum):
    auto = "auto"
    text = "text"
    wikitext = "wikitext"
    jsonl = "jsonl"


@app.command("build-tokenizer")
def build_tokenizer(
    out: Path = typer.Option(..., help="Tokenizer directory to write (later: --tokenizer DIR)."),
    type: TokenizerType = typer.Option(TokenizerType.wordpiece, help="Vocabulary to train."),
    train_data: list[Path] = typer.Option(
        None, help="Corpus files to train on (text, WikiText or JSON lines); repeatable."
    ),
    vocab_size: int = typer.Option(30522, help="Exact size of the trained vocabulary."),
    min_frequency: int = typer.Option(2, help="Drop pieces seen fewer times (WordPiece)."),
    sample_size: int | None = typer.Option(
        None, help="Train on a random sample of this many sentences (default: all)."
    ),
    lowercase: bool | None = typer.Option(
        None,
        "--lowercase/--no-lowercase",
        help="Lowercase and strip accents (default: on when training, inferred from --vocab-file).",
    ),
    input_format: InputFormat = typer.Option(InputFormat.auto, help="How to read --train-data."),
    vocab_file: Path | None = typer.Option(
        None, help="Wrap a published BERT vocab.txt instead of training."
    ),
    sentencepiece_model: Path | None = typer.Option(
        None, help="Import a SentencePiece Unigram tokenizer.model instead of training."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary, no progress."),
    extend: str | None = typer.Option(
        None,
        metavar="BASE",
        help="Extend this WordPiece vocabulary (tokenizer dir, vocab.txt, checkpoint or published "
        "name) with pieces learnt from --train-data; base ids stay.",
    ),
    add_tokens: int | None = typer.Option(
        None, help="With --extend: how many pieces to add ([unused*] slots first, then appended)."
    ),
) -> None:
    """Train a WordPiece / SentencePiece vocabulary, or wrap a published vocab.txt.

    Example: bertcli build-tokenizer --train-data data/wikitext2/train.txt --vocab-size 30522
    --out tokenizer/
    """
    from bertcli import tokenizer as tk
    from bertcli.console import make_reporter

    if extend is not None or add_tokens is not None:
        _extend_tokenizer(
            extend, train_data, add_tokens, out, type, lowercase, vocab_file, sentencepiece_model,
            min_frequency, sample_size, input_format, json_output,
        )  # fmt: skip
        return
    sources = [bool(train_data), vocab_file is not None, sentencepiece_model is not None]
    if sum(sources) != 1:
        raise UserError("give exactly one of --train-data, --vocab-file, --sentencepiece-model")
    reporter = make_reporter(quiet=json_output)
    stats = None
    if vocab_file is not None:
        tok = tk.tokenizer_from_vocab(vocab_file, lowercase)
        tk.save_tokenizer(tok, out)
    elif sentencepiece_model is not None:
        tok = tk.tokenizer_from_sentencepiece(sentencepiece_model, bool(lowercase))
        tk.save_tokenizer(tok, out)
    else:
        tok, stats = tk.train_tokenizer(
            type.value,
            train_data,
            vocab_size,
            out,
            min_frequency=min_frequency,
            sample_size=sample_size,
            lowercase=True if lowercase is None else lowercase,
            input_format=input_format.value,
            reporter=reporter,
        )
    summary = {
        "out": str(out),
        "type": tok.kind,
        "vocab_size": tok.vocab_size,
        "lowercase": tok.lowercase,
    }
    if stats is not None:
        summary.update(sentences=stats.sentences, invalid_utf8_lines=stats.invalid_utf8_lines)
        if stats.invalid_utf8_lines:
            reporter.log(f"warning: {stats.invalid_utf8_lines} lines had invalid UTF-8 (replaced)")
        if stats.bad_json_lines:
            reporter.log(
                f"warning: skipped {stats.bad_json_lines} lines that are not a JSON object with a "
                'string "text" field'
            )
    _report(summary, json_output, f"wrote {tok.kind} tokenizer ({tok.vocab_size} tokens) to {out}")


def _extend_tokenizer(
    extend, train_data, add_tokens, out, type, lowercase, vocab_file, sentencepiece_model,
    min_frequency, sample_size, input_format, json_output,
) -> None:  # fmt: skip
    """build-tokenizer --extend: check the option combination, then extend."""
    from bertcli.console import make_reporter
    from bertcli.vocab_extension import extend_tokenizer

    if extend is None or add_tokens is None:
        raise UserError("--extend BASE and --add-tokens N go together")
    if not train_data:
        raise UserError("--extend needs --train-data (the domain corpus)")
    if vocab_file is not None or sentencepiece_model is not None:
        raise UserError(
            "--extend takes its vocabulary from BASE: drop --vocab-file/--sentencepiece-model"
        )
    if type is not TokenizerType.wordpiece:
        raise UserError("--extend extends WordPiece vocabularies only: drop --type")
    if lowercase is not None:
        raise UserError("--extend keeps the base's normaliser: drop --lowercase/--no-lowercase")
    reporter = make_reporter(quiet=json_output)
    ext = extend_tokenizer(
        extend, train_data, add_tokens, out, min_frequency=min_frequency,
        sample_size=sample_size, input_format=input_format.value, reporter=reporter,
    )  # fmt: skip
    filled = sum(1 for p in ext.pieces if p.slot is not None)
    summary = {
        "out": str(out),
        "type": "wordpiece",
        "vocab_size": ext.tokenizer.vocab_size,
        "lowercase": ext.tokenizer.lowercase,
        "base": ext.base,
        "added": len(ext.pieces),
        "slots_filled": filled,
        "appended": len(ext.pieces) - filled,
        "corpus_tokens_base": ext.corpus["base_tokens"],
        "corpus_tokens_extended": ext.corpus["extended_tokens"],
    }
    saved = ext.corpus["base_tokens"] - ext.corpus["extended_tokens"]
    _report(
        summary,
        json_output,
        f"wrote extended tokenizer ({ext.tokenizer.vocab_size} tokens: {filled} [unused*] slots "
        f"filled, {len(ext.pieces) - filled} appended) to {out}; the corpus takes {saved} fewer "
        f"tokens ({ext.corpus['base_tokens']} -> {ext.corpus['extended_tokens']})",
    )


@app.command("download")
def download(
    name: str | None = typer.Argument(
        None,
        help="A corpus (wikitext2, wikitext2-raw, wikitext103, wikitext103-raw, wikipedia) or a "
        "published "
        "BERT checkpoint (bert-base-uncased, bert-large-cased … or any org/name Hub repo).",
    ),
    out: Path | None = typer.Option(None, help="Directory to fill (default: data/NAME)."),
    url: str | None = typer.Option(
        None,
        help="Use this mirror (http(s):// or file://) instead of the known ones; for wikipedia "
        "the base URL of a dump server with dumps.wikimedia.org's layout.",
    ),
    sha256: str | None = typer.Option(None, help="Expected sha256 of the archive."),
    retries: int = typer.Option(5, help="Retries per mirror for transient errors."),
    revision: str | None = typer.Option(
        None, help="Checkpoints: a branch, tag or commit of the Hub repo (default: main)."
    ),
    list_names: bool = typer.Option(
        False, "--list", help="List the corpora and checkpoint names with their sizes."
    ),
    lang: str = typer.Option("en", help="wikipedia: language code (en, zh, de, simple …)."),
    date: str | None = typer.Option(
        None, help="wikipedia: dump date YYYYMMDD (default: newest finished dump)."
    ),
    input: list[Path] | None = typer.Option(
        None, help="wikipedia: extract this dump on disk (.xml/.xml.bz2, repeatable) instead."
    ),
    workers: int | None = typer.Option(
        None, help="wikipedia: extraction processes (default: all cores)."
    ),
    part_size: float = typer.Option(100.0, help="wikipedia: MB per JSON-lines part."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary, no progress."),
) -> None:
    """Download a corpus (verified, unpacked) or a BERT checkpoint into the Hugging Face cache.

    `wikipedia` fetches a pages-articles dump (sha1-checked) and extracts it to JSON lines.

    Example: bertcli download wikipedia --lang en --out data/enwiki

    Example: bertcli download wikitext2 --out data/wikitext2

    Example: bertcli download bert-base-uncased
    """
    from dataclasses import asdict

    from bertcli.console import make_reporter
    from bertcli.download import REGISTRY
    from bertcli.download import download as fetch_corpus

    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}")
    if list_names:
        _list_downloads(json_output)
        return
    if name is None:
        raise UserError("give a NAME to download; `bertcli download --list` shows them")
    if name == "wikipedia":
        if sha256 is not None:
            raise UserError("--sha256: wikipedia dumps are checked against their published sha1")
        _download_wikipedia(out, lang, date, input, url, workers, part_size, retries, json_output)
        return
    if input or date is not None or workers is not None:
        raise UserError("--input, --date and --workers are for `download wikipedia`")
    if name not in REGISTRY:  # not a corpus: a checkpoint on the Hugging Face Hub
        _download_model(name, revision, out, url, sha256, json_output)
        return
    result = fetch_corpus(
        name, out, url=url, sha256=sha256, reporter=make_reporter(json_output), retries=retries
    )
    line = (
        f"{name}: already complete in {result.directory}"
        if result.skipped
        else f"{name}: wrote {', '.join(result.files.values())}"
    )
    _report(asdict(result), json_output, line)


def _download_wikipedia(
    out, lang, date, inputs, url, workers, part_size, retries, json_output
) -> None:
    import os
    from dataclasses import asdict

    from bertcli.console import make_reporter
    from bertcli.wikipedia import download_wikipedia

    out = out if out is not None else Path("data") / f"{lang}wiki"
    result = download_wikipedia(
        out,
        lang=lang,
        date=date,
        inputs=inputs or None,
        url=url,
        workers=workers if workers is not None else (os.cpu_count() or 1),
        part_size_mb=part_size,
        reporter=make_reporter(json_output),
        retries=retries,
    )
    line = (
        f"wikipedia: {result.articles} articles ({result.redirects} redirects, "
        f"{result.other_namespaces} other pages skipped"
        + (f", {result.too_large} pages too large skipped" if result.too_large else "")
        + f") in {len(result.parts)} part(s) "
        f"in {result.directory}, {result.seconds:.1f} s"
        + (" (already complete)" if result.skipped else "")
    )
    _report(asdict(result), json_output, line)


def _list_downloads(json_output: bool) -> None:
    from bertcli.download import REGISTRY
    from bertcli.hub import KNOWN_MODELS

    rows = [
        {"name": spec.name, "kind": "corpus", "size": spec.size, "description": spec.description}
        for spec in REGISTRY.values()
    ]
    rows.append(
        {
            "name": "wikipedia",
            "kind": "corpus",
            "size": "varies",
            "description": "a Wikipedia pages-articles dump as JSON lines (--lang, --date)",
        }
    )
    rows += [
        {"name": name, "kind": "checkpoint", "size": size, "description": description}
        for name, (size, description) in KNOWN_MODELS.items()
    ]
    width = max(len(row["name"]) for row in rows)
    lines = [
        f"{row['name']:<{width}}  {row['kind']:<10}  {row['size']:>8}  {row['description']}"
        for row in rows
    ]
    lines.append("checkpoints: also any org/name BERT repo on the Hugging Face Hub")
    _report({"downloads": rows}, json_output, "\n".join(lines))


def _download_model(name, revision, out, url, sha256, json_output) -> None:
    from dataclasses import asdict

    from bertcli.console import make_reporter
    from bertcli.download import REGISTRY
    from bertcli.hub import fetch_model, is_model_name, known_names

    if not is_model_name(name):
        raise UserError(
            f"unknown name {name!r}; corpora: {', '.join(REGISTRY)}, wikipedia; checkpoints: "
            f"{known_names()} or any org/name BERT repo on the Hugging Face Hub"
        )
    for flag, value in (("--out", out), ("--url", url), ("--sha256", sha256)):
        if value is not None:
            raise UserError(
                f"{flag} is for corpora; checkpoints go to the Hugging Face cache (HF_HOME, "
                "HF_HUB_CACHE) from HF_ENDPOINT"
            )
    result = fetch_model(name, revision=revision, reporter=make_reporter(json_output))
    line = f"{name}: {', '.join(result.files)} in {result.directory}"
    _report(asdict(result), json_output, line)


@app.command("preprocess")
def preprocess(
    input: list[Path] = _option(PreprocessConfig, "inputs"),
    out: Path = _option(PreprocessConfig, "out"),
    tokenizer: Path | None = typer.Option(None, help="Tokenizer directory (build-tokenizer)."),
    vocab_file: Path | None = typer.Option(None, help="Or a published BERT vocab.txt."),
    lowercase: bool | None = typer.Option(
        None, "--lowercase/--no-lowercase", help="With --vocab-file: override inferred casing."
    ),
    max_seq_length: int = _option(PreprocessConfig, "max_seq_length"),
    max_predictions_per_seq: int = _option(PreprocessConfig, "max_predictions_per_seq"),
    masked_lm_prob: float = _option(PreprocessConfig, "masked_lm_prob"),
    short_seq_prob: float = _option(PreprocessConfig, "short_seq_prob"),
    dupe_factor: int = _option(PreprocessConfig, "dupe_factor"),
    seed: int = _option(PreprocessConfig, "seed"),
    whole_word_masking: bool = _option(PreprocessConfig, "whole_word_masking"),
    nsp: bool = _option(PreprocessConfig, "nsp", "--nsp/--no-nsp"),
    input_format: InputFormat = _option(PreprocessConfig, "input_format", choices=InputFormat),
    workers: int | None = _option(PreprocessConfig, "workers"),
    shard_size: int = _option(PreprocessConfig, "shard_size"),
    eval_fraction: float = _option(PreprocessConfig, "eval_fraction"),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary, no progress."),
) -> None:
    """Turn raw text into masked-LM + next-sentence HDF5 shards (DeepLearningExamples format).

    Example: bertcli preprocess --input data/wikitext2/train.txt --tokenizer tokenizer/
    --out shards/
    """
    import os
    from dataclasses import asdict

    from bertcli.console import make_reporter
    from bertcli.preprocess import preprocess as run_preprocess

    tok = _load_tokenizer(tokenizer, vocab_file, lowercase)
    config = PreprocessConfig(
        inputs=list(input),
        out=out,
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max_predictions_per_seq,
        masked_lm_prob=masked_lm_prob,
        short_seq_prob=short_seq_prob,
        dupe_factor=dupe_factor,
        seed=seed,
        whole_word_masking=whole_word_masking,
        input_format=input_format.value,
        workers=workers if workers is not None else (os.cpu_count() or 1),
        shard_size=shard_size,
        eval_fraction=eval_fraction,
        nsp=nsp,
    )
    from bertcli.data.corpus import MAX_DOCUMENT_CHARS

    reporter = make_reporter(json_output)
    result = run_preprocess(config, tok, reporter)
    if result.skipped_documents:
        reporter.log(f"skipped {result.skipped_documents} documents too short to pair")
    if result.long_sentences:
        reporter.log(
            f"warning: {result.long_sentences} sentences are longer than --max-seq-length - 3 "
            f"tokens; truncation drops at least {result.long_sentence_tokens_dropped} of their "
            "tokens (as google-research/bert does; pretrain --data-text splits them instead)"
        )
    if result.invalid_utf8_lines:
        reporter.log(f"warning: {result.invalid_utf8_lines} lines had invalid UTF-8 (replaced)")
    if result.bad_json_lines:
        reporter.log(
            f"warning: skipped {result.bad_json_lines} lines that are not a JSON object with a "
            'string "text" field'
        )
    if result.split_documents:
        reporter.log(
            f"warning: {result.split_documents} documents are longer than "
            f"{MAX_DOCUMENT_CHARS:,} characters (no blank line or title ends them): each was "
            "cut into documents of about that size at sentence boundaries"
        )
    _report(
        asdict(result),
        json_output,
        f"wrote {result.train_examples} examples in {result.train_shards} shards"
        + (f" (+{result.eval_examples} eval)" if result.eval_examples else "")
        + f" to {result.directory}",
    )


class Optimizer(str, Enum):
    adamw = "adamw"
    lamb = "lamb"
    novograd = "novograd"
    sgd = "sgd"


class LRPolicy(str, Enum):
    warmup_annealing = "warmup-annealing"
    cosine = "cosine"
    square = "square"
    square_root = "square-root"
    polynomial = "polynomial"
    inverse_square_root = "inverse-square-root"
    warmup_hold = "warmup-hold"
    constant = "constant"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command("pretrain")
def pretrain(
    data_text: bool = typer.Option(
        False,
        "--data-text/--data-preprocessed",
        help="Raw text with examples made on the fly, or HDF5 shards (the default).",
    ),
    train_data: list[Path] = _option(PretrainConfig, "train_data"),
    eval_data: list[Path] = _option(PretrainConfig, "eval_data"),
    tokenizer: Path | None = _option(PretrainConfig, "tokenizer"),
    vocab_file: Path | None = _option(PretrainConfig, "vocab_file"),
    vocab_size: int = _option(PretrainConfig, "vocab_size"),
    preset: Preset = _option(PretrainConfig, "preset", choices=Preset),
    num_hidden_layers: int | None = typer.Option(None, help="Override: encoder layers."),
    hidden_size: int | None = typer.Option(None, help="Override: hidden size."),
    num_attention_heads: int | None = typer.Option(None, help="Override: attention heads."),
    intermediate_size: int | None = typer.Option(None, help="Override: feed-forward size."),
    hidden_act: str | None = typer.Option(None, help="Override: activation (gelu, relu …)."),
    config_file: Path | None = _option(PretrainConfig, "config_file"),
    init_from: str | None = _option(PretrainConfig, "init_from"),
    init_optimizer_from: str | None = _option(PretrainConfig, "init_optimizer_from"),
    nsp: bool = _option(TrainConfig, "nsp", "--nsp/--no-nsp"),
    max_seq_length: int = _option(PretrainConfig, "max_seq_length"),
    masked_lm_prob: float = _option(PretrainConfig, "masked_lm_prob"),
    max_predictions_per_seq: int = _option(PretrainConfig, "max_predictions_per_seq"),
    whole_word_masking: bool = _option(PretrainConfig, "whole_word_masking"),
    short_seq_prob: float = _option(PretrainConfig, "short_seq_prob"),
    input_format: InputFormat = _option(PretrainConfig, "input_format", choices=InputFormat),
    cache_dir: Path | None = _option(PretrainConfig, "cache_dir"),
    hidden_dropout: float | None = _option(PretrainConfig, "hidden_dropout"),
    attention_dropout: float | None = _option(PretrainConfig, "attention_dropout"),
    optimizer: Optimizer = _option(TrainConfig, "optimizer", choices=Optimizer),
    lr: float = _option(TrainConfig, "lr"),
    weight_decay: float = _option(TrainConfig, "weight_decay"),
    beta1: float = _option(TrainConfig, "beta1"),
    beta2: float = _option(TrainConfig, "beta2"),
    eps: float = _option(TrainConfig, "eps"),
    lr_policy: LRPolicy = _option(TrainConfig, "lr_policy", choices=LRPolicy),
    warmup_ratio: float = _option(TrainConfig, "warmup_ratio"),
    warmup_steps: int | None = _option(TrainConfig, "warmup_steps"),
    min_lr: float = _option(TrainConfig, "min_lr"),
    lr_power: float = _option(TrainConfig, "lr_power"),
    max_steps: int | None = _option(TrainConfig, "max_steps"),
    num_epochs: int | None = _option(TrainConfig, "num_epochs"),
    batch_size: int = _option(TrainConfig, "batch_size"),
    batches_per_step: int = _option(TrainConfig, "batches_per_step"),
    max_grad_norm: float = _option(TrainConfig, "max_grad_norm"),
    precision: Precision = _option(PretrainConfig, "precision", choices=Precision),
    device: Device = _option(PretrainConfig, "device", choices=Device),
    compile: bool = _option(TrainConfig, "compile", "--compile"),
    label_smoothing: float = _option(TrainConfig, "label_smoothing"),
    num_workers: int = _option(TrainConfig, "num_workers"),
    seed: int = _option(TrainConfig, "seed"),
    out: Path | None = _option(PretrainConfig, "out"),
    log_every: int = _option(TrainConfig, "log_every"),
    eval_every: int = _option(TrainConfig, "eval_every"),
    eval_batches: int = _option(TrainConfig, "eval_batches"),
    eval_batch_size: int | None = _option(TrainConfig, "eval_batch_size"),
    save_every: int = _option(TrainConfig, "save_every"),
    save_every_epochs: int = _option(TrainConfig, "save_every_epochs"),
    keep_last: int = _option(TrainConfig, "keep_last"),
    resume: bool = _option(PretrainConfig, "resume", "--resume"),
    allow_changes: bool = _option(TrainConfig, "allow_changes", "--allow-changes"),
    license: str | None = _option(PretrainConfig, "license"),
    language: list[str] = _option(PretrainConfig, "language"),
    push_to: str | None = _option(PretrainConfig, "push_to"),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary, no progress."),
) -> None:
    """Pretrain BERT with masked-LM (+ next-sentence) loss; DDP under torchrun.

    Example: bertcli pretrain --data-text --preset tiny --max-steps 200
    """
    from bertcli.console import make_reporter
    from bertcli.pretrain import run_pretraining
    from bertcli.train.runtime import init_runtime, shutdown

    if max_steps is None and num_epochs is None:
        raise UserError("give --max-steps or --num-epochs")
    train_config = TrainConfig(
        max_steps=max_steps,
        num_epochs=num_epochs,
        batch_size=batch_size,
        batches_per_step=batches_per_step,
        optimizer=optimizer.value,
        lr=lr,
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        lr_policy=lr_policy.value,
        warmup_ratio=warmup_ratio,
        warmup_steps=warmup_steps,
        min_lr=min_lr,
        lr_power=lr_power,
        max_grad_norm=max_grad_norm,
        log_every=log_every,
        eval_every=eval_every,
        eval_batches=eval_batches,
        eval_batch_size=eval_batch_size,
        save_every=save_every,
        save_every_epochs=save_every_epochs,
        keep_last=keep_last,
        allow_changes=allow_changes,
        seed=seed,
        nsp=nsp,
        compile=compile,
        label_smoothing=label_smoothing,
        num_workers=num_workers,
    )
    config = PretrainConfig(
        out=out,
        data_mode="text" if data_text else "preprocessed",
        train_data=list(train_data or []),
        eval_data=list(eval_data or []),
        tokenizer=tokenizer,
        vocab_file=vocab_file,
        vocab_size=vocab_size,
        preset=preset.value,
        model_overrides=dict(
            num_hidden_layers=num_hidden_layers,
            hidden_size=hidden_size,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            hidden_act=hidden_act,
        ),
        config_file=config_file,
        init_from=init_from,
        init_optimizer_from=init_optimizer_from,
        max_seq_length=max_seq_length,
        masked_lm_prob=masked_lm_prob,
        max_predictions_per_seq=max_predictions_per_seq,
        whole_word_masking=whole_word_masking,
        short_seq_prob=short_seq_prob,
        hidden_dropout=hidden_dropout,
        attention_dropout=attention_dropout,
        input_format=input_format.value,
        cache_dir=cache_dir,
        device=device.value,
        precision=precision.value,
        resume=resume,
        train=train_config,
        license=license,
        language=list(language or []),
        push_to=push_to,
        command=list(_INVOCATION),
    )
    reporter = make_reporter(json_output)
    runtime = init_runtime(config.device, config.precision)
    try:
        result = run_pretraining(config, reporter, runtime)
    finally:
        shutdown(runtime)
    train = result.get("train") or {}
    line = f"trained to step {train.get('step')} (loss {train.get('loss', float('nan')):.4f}); "
    line += f"checkpoint {result['checkpoint']}"
    if runtime.is_main:  # under torchrun, one summary: rank 0's
        _report(result, json_output, line)


@app.command("evaluate")
def evaluate(
    checkpoint: Path = typer.Option(
        ...,
        help="A checkpoint, a pretrain run dir (its newest checkpoint), a transformers dir, or a "
        "published checkpoint by name (bert-base-uncased, org/name; downloaded on first use).",
    ),
    data_text: list[Path] = typer.Option(None, help="Evaluate on raw text files."),
    data_preprocessed: list[Path] = typer.Option(
        None, help="Or on shard directories (repeatable; every example of each, once)."
    ),
    tokenizer: Path | None = typer.Option(
        None, help="Tokenizer for text data (default: the checkpoint's)."
    ),
    batch_size: int = typer.Option(32, help="Sequences per batch."),
    max_seq_length: int = typer.Option(128, help="Tokens per example (text data)."),
    masked_lm_prob: float = typer.Option(
        0.15, help="Fraction of tokens to predict (text data), in (0, 1); e.g. 0.15 as trained."
    ),
    max_predictions_per_seq: int = typer.Option(
        20, help="Most predictions per example (text data), >= 1; e.g. 80 for 512 tokens."
    ),
    whole_word_masking: bool = typer.Option(
        False, help="Mask whole words (text data), as a model trained with it."
    ),
    nsp: bool | None = typer.Option(
        None,
        "--nsp/--no-nsp",
        help="Score next-sentence prediction (text data: NSP pairs) or MLM only (packed text). "
        "Default: as the checkpoint was trained; MLM only without an NSP head.",
        show_default=False,
    ),
    max_batches: int = typer.Option(0, help="Stop after N batches (0 = all)."),
    seed: int = typer.Option(12345, help="Seed of the (static) text masks."),
    device: Device = typer.Option(Device.auto, help="auto = the local GPU if any."),
    precision: Precision = typer.Option(Precision.fp32, help="Evaluation precision."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """MLM loss/accuracy, perplexity and NSP loss/accuracy of a checkpoint.

    Example: bertcli evaluate --checkpoint outputs/run/checkpoints/step_00000200 --data-text
    data/wikitext2/valid.txt --json
    """
    from bertcli.console import make_reporter
    from bertcli.evaluate import evaluate_checkpoint
    from bertcli.train.runtime import init_runtime, shutdown

    if max_batches < 0:
        raise UserError("--max-batches must be >= 0")
    runtime = init_runtime(device.value, precision.value)
    try:
        result = evaluate_checkpoint(
            checkpoint,
            runtime,
            data_text=list(data_text) if data_text else None,
            data_preprocessed=list(data_preprocessed) if data_preprocessed else None,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            masked_lm_prob=masked_lm_prob,
            max_predictions_per_seq=max_predictions_per_seq,
            whole_word_masking=whole_word_masking,
            seed=seed,
            max_batches=max_batches or None,
            reporter=make_reporter(json_output) if runtime.is_main else None,
            nsp=nsp,
        )
    finally:
        shutdown(runtime)
    if not runtime.is_main:
        return
    if json_output:
        import json

        typer.echo(json.dumps(result))
        return
    from rich.table import Table

    from bertcli.console import stdout

    table = Table(title=f"evaluation of {checkpoint}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    stdout.print(table)


@app.command("push")
def push(
    path: Path = typer.Argument(
        ..., help="A checkpoint, a run directory (its newest checkpoint) or a finetune --out."
    ),
    repo_id: str = typer.Argument(..., help="The Hub model repo, org/name (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    revision: str | None = typer.Option(
        None, help="Commit to this branch (created from main if missing; default main)."
    ),
    message: str | None = typer.Option(None, help="The commit message."),
    include_trainer_state: bool = typer.Option(
        False,
        "--include-trainer-state",
        help="Also upload trainer_state.pt/.json (bertcli's resume state; not needed to use it).",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Upload a checkpoint's model, tokenizer and model card to the Hugging Face Hub.

    Example: bertcli push outputs/run my-org/my-bert --private
    """
    from dataclasses import asdict

    from bertcli.console import make_reporter
    from bertcli.hub import push_checkpoint

    pushed = push_checkpoint(
        path,
        repo_id,
        private=private,
        revision=revision,
        message=message,
        include_state=include_trainer_state,
        reporter=make_reporter(json_output),
    )
    _report(asdict(pushed), json_output, pushed.commit_url)


class FinetuneTask(str, Enum):
    cola = "cola"
    sst2 = "sst2"
    mrpc = "mrpc"
    stsb = "stsb"
    qqp = "qqp"
    mnli = "mnli"
    qnli = "qnli"
    rte = "rte"
    wnli = "wnli"
    classification = "classification"
    regression = "regression"
    ner = "ner"


@app.command("finetune")
def finetune(
    init_from: str = _option(FinetuneConfig, "init_from"),
    task: FinetuneTask = _option(FinetuneConfig, "task"),
    out: Path = _option(FinetuneConfig, "out"),
    data_dir: Path | None = _option(FinetuneConfig, "data_dir"),
    train_data: Path | None = _option(FinetuneConfig, "train_data"),
    eval_data: Path | None = _option(FinetuneConfig, "eval_data"),
    text_column: str | None = _option(FinetuneConfig, "text_column"),
    text_pair_column: str | None = _option(FinetuneConfig, "text_pair_column"),
    label_column: str | None = _option(FinetuneConfig, "label_column"),
    header: bool = _option(FinetuneConfig, "header", "--header/--no-header"),
    tokenizer: Path | None = _option(FinetuneConfig, "tokenizer"),
    max_seq_length: int = _option(FinetuneConfig, "max_seq_length"),
    lr: float = _option(FinetuneConfig, "lr"),
    num_epochs: int = _option(FinetuneConfig, "num_epochs"),
    batch_size: int = _option(FinetuneConfig, "batch_size"),
    eval_batch_size: int | None = _option(FinetuneConfig, "eval_batch_size"),
    batches_per_step: int = _option(FinetuneConfig, "batches_per_step"),
    optimizer: Optimizer = _option(FinetuneConfig, "optimizer", choices=Optimizer),
    lr_policy: LRPolicy = _option(FinetuneConfig, "lr_policy", choices=LRPolicy),
    warmup_ratio: float = _option(FinetuneConfig, "warmup_ratio"),
    weight_decay: float = _option(FinetuneConfig, "weight_decay"),
    beta1: float = _option(FinetuneConfig, "beta1"),
    beta2: float = _option(FinetuneConfig, "beta2"),
    eps: float = _option(FinetuneConfig, "eps"),
    max_grad_norm: float = _option(FinetuneConfig, "max_grad_norm"),
    seed: int = _option(FinetuneConfig, "seed"),
    seeds: int = _option(FinetuneConfig, "seeds"),
    keep_all_seeds: bool = _option(FinetuneConfig, "keep_all_seeds", "--keep-all-seeds"),
    log_every: int = _option(FinetuneConfig, "log_every"),
    precision: Precision = _option(FinetuneConfig, "precision", choices=Precision),
    device: Device = _option(FinetuneConfig, "device", choices=Device),
    tensorboard: bool = _option(FinetuneConfig, "tensorboard", "--tensorboard/--no-tensorboard"),
    license: str | None = _option(FinetuneConfig, "license"),
    language: list[str] = _option(FinetuneConfig, "language"),
    push_to: str | None = _option(FinetuneConfig, "push_to"),
    json_output: bool = typer.Option(False, "--json", help="Print results.json, no progress."),
) -> None:
    """Fine-tune a pretrained checkpoint on GLUE, your own labels, or NER; DDP under torchrun.

    Example: bertcli finetune --init-from runs/quickstart --task sst2 --out runs/quickstart-sst2
    """
    from bertcli.console import make_reporter
    from bertcli.finetune.run import run_finetune
    from bertcli.train.runtime import init_runtime, shutdown

    config = FinetuneConfig(
        init_from=init_from,
        task=task.value,
        out=out,
        data_dir=data_dir,
        train_data=train_data,
        eval_data=eval_data,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        header=header,
        tokenizer=tokenizer,
        max_seq_length=max_seq_length,
        lr=lr,
        num_epochs=num_epochs,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        batches_per_step=batches_per_step,
        optimizer=optimizer.value,
        lr_policy=lr_policy.value,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        max_grad_norm=max_grad_norm,
        seed=seed,
        seeds=seeds,
        keep_all_seeds=keep_all_seeds,
        log_every=log_every,
        device=device.value,
        precision=precision.value,
        tensorboard=tensorboard,
        license=license,
        language=list(language or []),
        push_to=push_to,
    )
    reporter = make_reporter(json_output)
    runtime = init_runtime(config.device, config.precision)
    try:
        result = run_finetune(config, reporter, runtime)
    finally:
        shutdown(runtime)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result["eval"].items())
    line = f"{result['task']}: {shown} (median of {len(result['runs'])}); model {out / 'model'}"
    if runtime.is_main:
        _report(result, json_output, line)


def _load_tokenizer(tokenizer: Path | None, vocab_file: Path | None, lowercase: bool | None):
    from bertcli.tokenizer import tokenizer_from_options

    tok = tokenizer_from_options(tokenizer, vocab_file, lowercase)
    if tok is None:
        raise UserError("give --tokenizer DIR or --vocab-file vocab.txt")
    return tok


def _report(summary: dict[str, Any], json_output: bool, line: str) -> None:
    import json

    if json_output:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(line)


def main() -> None:
    """Console-script entry point."""
    app()
