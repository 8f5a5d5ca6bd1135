"""Published BERT checkpoints by name, fetched with `huggingface_hub` into its standard cache.

`fetch_model("bert-base-uncased")` asks the Hub's own client for the few files a BERT checkpoint
needs — `config.json`, `model.safetensors` (or `pytorch_model.bin` where a repo has none) and
the tokenizer files — and returns the snapshot directory in the shared cache, so transformers
finds the very same files and vice versa. The client reads `HF_HOME`, `HF_HUB_CACHE`,
`HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_TOKEN`; it resumes a cut transfer with HTTP Range and
only renames a file into the cache once it is complete. Every failure becomes one `UserError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bertcli.console import Reporter
from bertcli.errors import UserError
from bertcli.remote import warn_plain_http

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # first one the repo has
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json")  # each optional

# Google's original checkpoints (their Hub names; org/name repos work too). Sizes are the fp32
# weights file, which is nearly all of a download.
KNOWN_MODELS: dict[str, tuple[str, str]] = {
    "bert-base-uncased": ("440 MB", "BERT-base (110M), English, lower-cased"),
    "bert-base-cased": ("436 MB", "BERT-base (108M), English, cased"),
    "bert-large-uncased": ("1.34 GB", "BERT-large (335M), English, lower-cased"),
    "bert-large-cased": ("1.33 GB", "BERT-large (333M), English, cased"),
    "bert-large-uncased-whole-word-masking": ("1.34 GB", "BERT-large, whole-word masking"),
    "bert-large-cased-whole-word-masking": ("1.33 GB", "BERT-large, cased, whole-word masking"),
    "bert-base-chinese": ("412 MB", "BERT-base (102M), Chinese characters"),
    "bert-base-multilingual-cased": ("714 MB", "BERT-base (178M), 104 languages, cased"),
    "bert-base-multilingual-uncased": ("672 MB", "BERT-base (167M), 102 languages, uncased"),
}

# What the Hub accepts as a repo id (huggingface_hub's validate_repo_id): one optional namespace,
# then a name; each starts with a letter or digit and ends with a word character, no `--` or
# `..`, and the name does not end in `.git`.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")
# A revision is a 40-hex commit or a git ref name (git check-ref-format): huggingface_hub writes
# `refs/<revision>` in the cache as a path, so `..`, a leading `/` or a `.`-component would
# point outside it.
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


@dataclass
class ModelDownload:
    """What `fetch_model` left in the cache."""

    name: str
    directory: str  # the snapshot directory: a transformers BERT directory
    revision: str  # the commit it resolved to
    files: list[str] = field(default_factory=list)
    bytes: int = 0


def is_model_name(value: str) -> bool:
    """A known checkpoint name or an `org/name` repo id (callers check local paths first)."""
    if value in KNOWN_MODELS:
        return True
    return (
        "/" in value
        and bool(_REPO_ID.match(value))
        and ".." not in value
        and "--" not in value
        and not value.endswith(".git")
    )


def check_revision(revision: str) -> None:
    """Refuse a `--revision` that is neither a commit nor a valid git ref name."""
    if _COMMIT.fullmatch(revision):
        return
    parts = revision.split("/")
    bad = (
        not revision
        or revision == "@"
        or _REF_FORBIDDEN.search(revision) is not None
        or revision.endswith((".", "/"))
        or any(not p or p.startswith(".") or p.endswith(".lock") for p in parts)
    )
    if bad:
        raise UserError(
            f"--revision {revision!r} is not a commit (40 hex digits) or a git branch/tag name "
            "(no '..', no leading '/' or '.', no spaces or ~^:?*[\\)"
        )


def known_names() -> str:
    """The known checkpoint names, comma-separated, for error messages."""
    return ", ".join(KNOWN_MODELS)


def check_model_name(name: str) -> None:
    """Refuse a name that is neither a known checkpoint nor an org/name repo id."""
    if not is_model_name(name):
        raise UserError(
            f"unknown model {name!r}; known: {known_names()} (or any org/name BERT repo "
            "on the Hugging Face Hub)"
        )


class _Bar:
    """A tqdm stand-in that forwards the client's byte counts to a bertcli Reporter."""

    def __init__(
        self, reporter: Reporter, label: str, total: Any = None, initial: int = 0, **_: Any
    ):
        self.reporter = reporter
        reporter.start(f"Downloading {label}", total=total, unit="bytes")
        if initial:
            reporter.advance(initial)

    def update(self, n: float = 1) -> None:
        """Count `n` more bytes (negative when the client restarts a file)."""
        self.reporter.advance(n)

    def close(self) -> None:
        """End the bar."""
        self.reporter.finish()

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextmanager
def _quiet_client() -> Iterator[None]:
    """The client logs each retry as a warning; bertcli reports the outcome in one line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _where_to_run(name: str) -> str:
    return (
        f"run `bertcli download {name}` where there is a network (with the same HF_HOME / "
        "HF_HUB_CACHE, or copy that cache here)"
    )


def _get(
    name: str,
    filename: str,
    revision: str | None,
    reporter: Reporter,
    local_only: bool,
    optional: bool = False,
) -> Path:
    """One file through the client; its errors become one line.

    A file the repo lacks raises `EntryNotFoundError` for the caller to skip; so does an
    `optional` file missing from the cache when the network is off limits.
    """
    from huggingface_hub import errors, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # the transport's base error (httpx's, or httpx2's in huggingface_hub 2.x)
    transport_error = getattr(errors, "HTTPError", OSError)

    try:
        with _quiet_client():
            path = hf_hub_download(
                name,
                filename,
                revision=revision,
                tqdm_class=partial(_Bar, reporter, f"{name}/{filename}"),  # type: ignore[arg-type]
                local_files_only=local_only,
            )
        return Path(path)
    except LocalEntryNotFoundError as exc:
        offline = local_only or _offline()
        if optional and offline:
            raise
        if offline:
            raise UserError(
                f"{name}: {filename} is not in the Hugging Face cache and the network is off "
                f"({'HF_HUB_OFFLINE is set' if _offline() else 'cache only'}); "
                + _where_to_run(name)
            ) from None
        cause = exc.__cause__
        why = (
            f"the Hub answered HTTP {cause.response.status_code}"
            if isinstance(cause, HfHubHTTPError) and cause.response is not None
            else f"cannot reach {_endpoint()}"
        )
        raise UserError(
            f"{name}: {why} and {filename} is not cached; " + _where_to_run(name)
        ) from None
    except GatedRepoError:
        raise UserError(
            f"{name} is gated: accept its terms on the Hub and set HF_TOKEN to a token that may "
            "read it"
        ) from None
    except RepositoryNotFoundError:
        hint = "" if name in KNOWN_MODELS else f"; known: {known_names()}"
        raise UserError(
            f"{name}: no such model repo on {_endpoint()} (or it is private: set HF_TOKEN){hint}"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{name}: no revision {revision!r} on the Hub") from None
    except EntryNotFoundError:
        raise
    except HFValidationError as exc:  # what our own checks did not foresee
        raise UserError(f"{name}: not a valid repo id or revision ({exc})") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise UserError(f"{name}: the Hub answered HTTP {status} for {filename}") from None
    except transport_error as exc:
        raise UserError(
            f"{name}: download of {filename} failed ({type(exc).__name__}: {exc}); run again "
            "to retry"
        ) from None
    except OSError as exc:  # a full disk, an unwritable cache, a size mismatch
        raise UserError(f"{name}: could not store {filename} ({exc})") from None


def _model_type(config_path: Path, name: str) -> str:
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{name}: its {CONFIG_FILE} is not JSON") from None
    if not isinstance(data, dict):
        raise UserError(f"{name}: its {CONFIG_FILE} is not a JSON object")
    return str(data.get("model_type", "bert"))


def fetch_model(
    name: str,
    revision: str | None = None,
    reporter: Reporter | None = None,
    local_only: bool = False,
) -> ModelDownload:
    """Config, weights and tokenizer files of a BERT repo into the HF cache; cached files stay.

    `local_only` never touches the network (for ranks that wait for rank 0's download).
    """
    from huggingface_hub.errors import EntryNotFoundError

    reporter = reporter or Reporter()
    check_model_name(name)
    if revision is not None:
        check_revision(revision)
    if not local_only:
        warn_plain_http(_endpoint(), reporter, "HF_ENDPOINT")
    config = _get(name, CONFIG_FILE, revision, reporter, local_only)
    model_type = _model_type(config, name)
    if model_type != "bert":
        raise UserError(
            f"{name} is not a BERT model (its config.json says model_type {model_type!r}); "
            "bertcli trains BERT checkpoints only"
        )
    # every later file comes from the same commit, even if the branch moves meanwhile
    commit = config.parent.name
    files = [config]
    for weights in WEIGHT_FILES:
        try:
            files.append(_get(name, weights, commit, reporter, local_only, optional=True))
            break
        except EntryNotFoundError:
            continue
    else:
        if local_only or _offline():
            raise UserError(f"{name}: its weights are not in the cache; " + _where_to_run(name))
        raise UserError(
            f"{name} has neither {' nor '.join(WEIGHT_FILES)} (TensorFlow-only repos are not read)"
        )
    for extra in TOKENIZER_FILES:
        try:
            files.append(_get(name, extra, commit, reporter, local_only, optional=True))
        except EntryNotFoundError:
            pass  # a repo may ship only some of them
    return ModelDownload(
        name=name,
        directory=str(config.parent),
        revision=commit,
        files=[p.name for p in files],
        bytes=sum(os.path.getsize(p) for p in files),
    )


def cached_model(name: str) -> Path | None:
    """The snapshot directory of `name` if the cache already holds its config and weights."""
    try:
        return Path(fetch_model(name, local_only=True).directory)
    except UserError:
        return None


def resolve_model(value: str, flag: str, runtime=None, log: Reporter | None = None) -> Path:
    """A checkpoint dir, a run dir (its newest checkpoint), or a Hub model name, as a directory.

    A name is fetched into the Hugging Face cache on first use; under torchrun (`runtime`)
    rank 0 downloads while the others wait, and its error, if any, reaches every rank, so none
    waits forever. Then the others read rank 0's files from the cache (or fetch them, when this
    node has a cache of its own).
    """
    import torch.distributed as dist

    from bertcli.hf import is_checkpoint_dir
    from bertcli.train.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(value)
    if path.exists():
        if not path.is_dir() or not is_checkpoint_dir(path):
            raise UserError(f"{flag} {value} is not a BERT checkpoint directory")
        return path
    if not is_model_name(str(value)):
        raise UserError(
            f"{flag} {value}: no such directory, and not a model name (known: "
            f"{known_names()}; or any org/name BERT repo on the Hugging Face Hub)"
        )
    main = runtime is None or runtime.is_main
    outcome: list[str | None] = [None]  # rank 0's error, if any
    if main:
        try:
            snapshot = fetch_model(str(value), reporter=log).directory
        except UserError as exc:
            outcome = [str(exc)]
        except ValueError as exc:  # huggingface_hub refusing a repo id our pattern let through
            outcome = [f"{value}: not a valid Hub repo id ({exc})"]
    if runtime is not None and runtime.distributed:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise UserError(f"{flag} {outcome[0]}")
    if not main:
        cached = cached_model(str(value))
        snapshot = str(cached) if cached is not None else fetch_model(str(value)).directory
    if log is not None:
        log.log(f"{flag} {value}: {snapshot}")
    return Path(snapshot)


# ---- push: a checkpoint to a Hub model repo ------------------------------------------------

# What a transformers user needs from a checkpoint (the rest stays home unless asked)
PUSH_FILES = (
    CONFIG_FILE,
    *WEIGHT_FILES,  # the first one there only
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
    "extension.json",  # build-tokenizer --extend's record, where the checkpoint carries it
)
STATE_FILES = ("trainer_state.pt", "trainer_state.json")  # bertcli's resume state
_LOGIN_HINT = "run `hf auth login` or set HF_TOKEN to a token with write access"


@dataclass
class Push:
    """What `push_checkpoint` committed."""

    repo_id: str
    repo_url: str
    commit_url: str
    commit: str
    revision: str
    directory: str  # the checkpoint directory that was uploaded
    files: list[str] = field(default_factory=list)
    private: bool = False


def push_source(path: str | Path) -> Path:
    """The checkpoint directory behind PATH: a checkpoint, a run directory (its newest
    checkpoint) or a `finetune` output (its `model/`)."""
    from bertcli.hf import is_checkpoint_dir
    from bertcli.train.checkpoint import resolve_checkpoint

    given = Path(path)
    if not given.exists():
        raise UserError(f"push: {path}: no such directory")
    if given.is_dir() and not is_checkpoint_dir(given) and is_checkpoint_dir(given / "model"):
        return given / "model"  # bertcli finetune --out
    found = resolve_checkpoint(given)
    if not found.is_dir() or not is_checkpoint_dir(found):
        raise UserError(
            f"push: {path} is not a checkpoint (config.json + model.safetensors), a run "
            "directory with checkpoints/, or a finetune output with model/"
        )
    return found


def check_push_target(repo_id: str, flag: str = "REPO_ID", token: str | None = None) -> None:
    """Refuse, before any work, a repo id the Hub would refuse, HF_HUB_OFFLINE, or no token."""
    from huggingface_hub import get_token

    if "/" in repo_id and repo_id.split("/", 1)[0] in ("datasets", "spaces", "models"):
        raise UserError(f"{flag} {repo_id}: give the model repo as org/name (no type prefix)")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise UserError(f"{flag} {repo_id}: not a valid Hub repo id (org/name or name)")
    if _offline():
        raise UserError(f"cannot push {repo_id}: HF_HUB_OFFLINE is set (unset it to upload)")
    if token is None and get_token() is None:
        raise UserError(f"cannot push {repo_id}: no Hugging Face token; {_LOGIN_HINT}")


def push_checkpoint(
    path: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    token: str | None = None,
    include_state: bool = False,
    reporter: Reporter | None = None,
) -> Push:
    """Upload a checkpoint's transformers files (config, weights, tokenizer, model card) to the
    model repo `repo_id`, creating it (and the branch `revision`) when missing.

    `create_repo(exist_ok=True)` + `upload_folder`: one commit, large files through the
    client's LFS/Xet uploads and retries. `include_state` adds bertcli's trainer state.
    Every failure becomes one `UserError`.
    """
    from huggingface_hub import HfApi

    directory = push_source(path)
    check_push_target(repo_id, token=token)
    refresh_card(directory, repo_id)
    patterns = [*PUSH_FILES, *(STATE_FILES if include_state else ())]
    files = [name for name in patterns if (directory / name).is_file()]
    weights = [name for name in files if name in WEIGHT_FILES]
    files = [name for name in files if name not in weights[1:]]  # safetensors, not both
    reporter = reporter or Reporter()
    api = HfApi(token=token)
    with _quiet_client(), _client_bars(reporter), _push_errors(api, repo_id, revision):
        repo_url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        target = revision or "main"
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        size = sum((directory / name).stat().st_size for name in files)
        reporter.log(
            f"uploading {len(files)} files ({size / 1e6:.1f} MB) of {directory} to "
            f"{repo_id}@{target}"
        )
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=directory,
            repo_type="model",
            revision=target,
            allow_patterns=files,
            commit_message=message or f"Upload {directory.name} with bertcli",
        )
    return Push(
        repo_id=repo_id,
        repo_url=str(repo_url),
        commit_url=info.commit_url,
        commit=info.oid,
        revision=target,
        directory=str(directory),
        files=files,
        private=private,
    )


@contextmanager
def _client_bars(reporter: Reporter) -> Iterator[None]:
    """The client's own upload bars on a terminal (bertcli's rich reporter); none off one
    (--json, logs), where bertcli's plain lines say what happens."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    from bertcli.console import RichReporter

    if isinstance(reporter, RichReporter) or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


@contextmanager
def _push_errors(api, repo_id: str, revision: str | None) -> Iterator[None]:
    """The client's exceptions during a push, as one line each."""
    from huggingface_hub import errors
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    transport_error = getattr(errors, "HTTPError", OSError)
    try:
        yield
    except RepositoryNotFoundError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise UserError(
                f"cannot push {repo_id}: the Hub rejected the token (HTTP 401); {_LOGIN_HINT}"
            ) from None
        other = _other_type(api, repo_id)
        if other is not None:
            raise UserError(
                f"cannot push {repo_id}: it is a {other} repo on the Hub, not a model repo; "
                "push to another name"
            ) from None
        raise UserError(
            f"cannot push {repo_id}: the Hub has no such model repo and did not create it"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise UserError(
                f"cannot push {repo_id}: the Hub rejected the token (HTTP 401); {_LOGIN_HINT}"
            ) from None
        if status == 403:
            raise UserError(
                f"cannot push {repo_id}: the token may not write there (HTTP 403); use a token "
                "with write access to that namespace (hf auth login, or HF_TOKEN)"
            ) from None
        if status == 409:
            other = _other_type(api, repo_id)
            if other is not None:
                raise UserError(
                    f"cannot push {repo_id}: it is a {other} repo on the Hub, not a model "
                    "repo; push to another name"
                ) from None
        where = f" (revision {revision})" if revision else ""
        raise UserError(f"cannot push {repo_id}{where}: the Hub answered HTTP {status}") from None
    except transport_error as exc:
        raise UserError(
            f"cannot push {repo_id}: cannot reach {_endpoint()} ({type(exc).__name__}); check "
            "the network (or HF_ENDPOINT) and run again"
        ) from None
    except ValueError as exc:  # the client refusing a repo id or a malformed server answer
        raise UserError(f"cannot push {repo_id}: {str(exc).splitlines()[0]}") from None


def _other_type(api, repo_id: str) -> str | None:
    """`dataset` or `space` when `repo_id` exists as that type (the Hub shares the name)."""
    for kind in ("dataset", "space"):
        try:
            if api.repo_exists(repo_id, repo_type=kind):
                return kind
        except Exception:  # noqa: BLE001 - a probe for a better message, never the error itself
            continue
    return None


def refresh_card(directory: Path, repo_id: str | None) -> Path | None:
    """(Re)write the model card of a checkpoint from its run's record, naming `repo_id` in the
    usage code; a README.md the user wrote is left alone, as is a directory with no record.

    A pretrain checkpoint's record is `RUN/run.json` + `RUN/metrics.jsonl` (up to its step);
    a finetune `model/`'s is `OUT/results.json` (+ `OUT/run.json`, if any)."""
    from bertcli.modelcard import CARD_FILE, is_bertcli_card, run_metrics, write_model_card

    card = directory / CARD_FILE
    if card.is_file() and not is_bertcli_card(card):
        return None
    results = directory.parent / "results.json"
    run_dir = directory.parent.parent if directory.parent.name == "checkpoints" else None
    try:
        if results.is_file():
            run_file = directory.parent / "run.json"
            run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
            task = json.loads(results.read_text(encoding="utf-8"))
            return write_model_card(directory, run, None, task_results=task, repo_id=repo_id)
        if run_dir is not None and (run_dir / "run.json").is_file():
            run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
            state = directory / "trainer_state.json"
            step = json.loads(state.read_text())["step"] if state.is_file() else None
            if step is not None and (run.get("result") or {}).get("steps") != step:
                run = {**run, "result": {"steps": step}}  # an earlier checkpoint than the end
            return write_model_card(directory, run, run_metrics(run_dir, step), repo_id=repo_id)
    except OSError:
        return None  # a read-only checkpoint: push it with the card it has
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"push: cannot read the run record of {directory} ({exc})") from None
    return None
