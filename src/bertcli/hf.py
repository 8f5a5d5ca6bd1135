"""Reading and writing transformers' checkpoint layout: the one place that maps parameter names.

A checkpoint directory holds `config.json` and `model.safetensors` (or `pytorch_model.bin`) with
transformers' `BertForPreTraining` parameter names. Ours differ in two ways: query/key/value are
fused into one `qkv` matrix, and module names are shorter. The decoder weight is tied to the word
embeddings and not stored, as transformers does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bertcli.atomic import atomic_directory
from bertcli.config import BertConfig
from bertcli.errors import UserError
from bertcli.model import BertForPreTraining

WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"

# ours -> transformers, for everything except the fused qkv.
_EMBEDDINGS = {
    "bert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.position_embeddings.weight": "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight": "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.norm.weight": "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.norm.bias": "bert.embeddings.LayerNorm.bias",
}
_LAYER = {
    "attention.out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_HEADS = {
    "bert.pooler.weight": "bert.pooler.dense.weight",
    "bert.pooler.bias": "bert.pooler.dense.bias",
    "mlm_dense.weight": "cls.predictions.transform.dense.weight",
    "mlm_dense.bias": "cls.predictions.transform.dense.bias",
    "mlm_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm_bias": "cls.predictions.bias",
    "nsp.weight": "cls.seq_relationship.weight",
    "nsp.bias": "cls.seq_relationship.bias",
}
_QKV = ("query", "key", "value")


def _name_map(config: BertConfig) -> dict[str, str]:
    names = dict(_EMBEDDINGS)
    for i in range(config.num_hidden_layers):
        for ours, theirs in _LAYER.items():
            for kind in ("weight", "bias"):
                names[f"bert.layers.{i}.{ours}.{kind}"] = f"bert.encoder.layer.{i}.{theirs}.{kind}"
    names.update(_HEADS)
    return names


def to_hf_state_dict(model: BertForPreTraining) -> dict[str, torch.Tensor]:
    """Our parameters under transformers' names (qkv split, tied decoder left out)."""
    ours = model.state_dict()
    out = {theirs: ours[name] for name, theirs in _name_map(model.config).items()}
    for i in range(model.config.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = ours[f"bert.layers.{i}.attention.qkv.{kind}"].chunk(3, dim=0)
            for part, which in zip(parts, _QKV):
                out[f"bert.encoder.layer.{i}.attention.self.{which}.{kind}"] = part
    return {k: v.detach().contiguous() for k, v in out.items()}


def _normalise_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept old TF-converted names (gamma/beta) and bare `BertModel` checkpoints (no `bert.`)."""
    bare = not any(k.startswith("bert.") for k in state) and any(
        k.startswith("embeddings.") for k in state
    )
    out = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        out[f"bert.{key}" if bare else key] = value
    return out


HEAD_PREFIXES = ("cls.", "bert.pooler.")


def from_hf_state_dict(
    state: dict[str, torch.Tensor],
    config: BertConfig,
    source: str = "checkpoint",
    head_fallback: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """transformers' tensors -> our state dict; names any missing or mis-shaped tensor.

    With `head_fallback` (transformers' names -> tensors), a checkpoint without the pooler or the
    pretraining heads (a bare `BertModel`) takes those tensors from it instead of failing.
    """
    state = _normalise_hf_names(state)
    shapes = _shapes(config)

    def take(name: str) -> torch.Tensor:
        if name not in state:
            if head_fallback is not None and name.startswith(HEAD_PREFIXES):
                return head_fallback[name]
            raise UserError(f"{source}: missing tensor {name}")
        return state[name]

    ours: dict[str, torch.Tensor] = {}
    for name, theirs in _name_map(config).items():
        ours[name] = take(theirs)
    for i in range(config.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = [take(f"bert.encoder.layer.{i}.attention.self.{w}.{kind}") for w in _QKV]
            for part, which in zip(parts, _QKV):
                expected = shapes[f"bert.layers.{i}.attention.qkv.{kind}"]
                expected = (expected[0] // 3, *expected[1:])
                if tuple(part.shape) != expected:
                    raise UserError(
                        f"{source}: tensor bert.encoder.layer.{i}.attention.self.{which}.{kind} "
                        f"has shape {tuple(part.shape)}, expected {expected}"
                    )
            ours[f"bert.layers.{i}.attention.qkv.{kind}"] = torch.cat(parts, dim=0)
    hf_names = _name_map(config)
    for name, tensor in ours.items():
        if tuple(tensor.shape) != shapes[name]:
            label = hf_names.get(name, name)
            raise UserError(
                f"{source}: tensor {label} has shape {tuple(tensor.shape)}, "
                f"expected {shapes[name]} from config.json"
            )
    return ours


def _shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = BertForPreTraining(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def is_checkpoint_dir(path: Path) -> bool:
    """A directory with config.json and weights in a format we read."""
    return (path / CONFIG_NAME).is_file() and (
        (path / WEIGHTS_NAME).is_file() or (path / LEGACY_WEIGHTS_NAME).is_file()
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint directory (safetensors preferred)."""
    if (path / WEIGHTS_NAME).is_file():
        try:
            return load_file(str(path / WEIGHTS_NAME))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path / WEIGHTS_NAME}: unreadable safetensors file ({exc})") from None
    if (path / LEGACY_WEIGHTS_NAME).is_file():
        try:
            state = torch.load(path / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt pickles
            raise UserError(f"{path / LEGACY_WEIGHTS_NAME}: unreadable weights ({exc})") from None
        if not isinstance(state, dict):
            raise UserError(f"{path / LEGACY_WEIGHTS_NAME}: not a state dict")
        return state
    raise UserError(f"{path}: no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME}")


def load_config(path: str | Path) -> BertConfig:
    """The BertConfig of a checkpoint directory, with a clear error if it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a directory (expected a BERT checkpoint directory)")
    if not (path / CONFIG_NAME).is_file():
        raise UserError(f"{path}: not a BERT checkpoint (no {CONFIG_NAME})")
    return BertConfig.load(path / CONFIG_NAME)


def load_pretrained(
    path: str | Path, map_location: str = "cpu", allow_missing_heads: bool = False
) -> BertForPreTraining:
    """Build our model from a transformers-layout directory.

    `allow_missing_heads` (for continued pretraining from an encoder-only checkpoint) starts
    the pooler and pretraining heads from BERT's initialisation when the checkpoint lacks them;
    their transformers names are left in `model.fresh_heads`.
    """
    path = Path(path)
    config = load_config(path)
    model = BertForPreTraining(config)
    raw = read_weights(path)
    fallback = to_hf_state_dict(model) if allow_missing_heads else None
    state = from_hf_state_dict(raw, config, source=str(path), head_fallback=fallback)
    model.load_state_dict(state, strict=True)
    present = _normalise_hf_names(raw)
    model.fresh_heads = sorted(
        k for k in (fallback or {}) if k.startswith(HEAD_PREFIXES) and k not in present
    )
    return model.to(map_location)


def save_pretrained(model: BertForPreTraining, path: str | Path) -> None:
    """Write config.json + model.safetensors atomically (temp dir, then rename)."""
    with atomic_directory(path) as tmp:
        write_pretrained_files(model, tmp)


def write_pretrained_files(model: BertForPreTraining, directory: Path) -> None:
    """config.json + model.safetensors into an existing directory (no atomicity)."""
    model.config.save(directory / CONFIG_NAME)
    tensors = {k: v.to("cpu", torch.float32) for k, v in to_hf_state_dict(model).items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


# ---- task models (fine-tuning): encoder names as above, plus transformers' `classifier` -------

TASK_ARCHITECTURES = {
    "sequence": "BertForSequenceClassification",
    "token": "BertForTokenClassification",
}
_CLASSIFIER = ("classifier.weight", "classifier.bias")


def _encoder_names(config: BertConfig, pooler: bool) -> dict[str, str]:
    """ours -> transformers for the encoder (and the pooler), without the pretraining heads."""
    return {
        ours: theirs
        for ours, theirs in _name_map(config).items()
        if ours.startswith("bert.") and (pooler or not ours.startswith("bert.pooler."))
    }


def task_state_dict(model: torch.nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """A task model's tensors under transformers' names (token models carry no pooler)."""
    ours = model.state_dict()
    names = _encoder_names(model.config, pooler=kind == "sequence")
    out = {theirs: ours[name] for name, theirs in names.items()}
    for i in range(model.config.num_hidden_layers):
        for part_kind in ("weight", "bias"):
            parts = ours[f"bert.layers.{i}.attention.qkv.{part_kind}"].chunk(3, dim=0)
            for part, which in zip(parts, _QKV):
                out[f"bert.encoder.layer.{i}.attention.self.{which}.{part_kind}"] = part
    for name in _CLASSIFIER:
        out[name] = ours[name]
    return {k: v.detach().contiguous() for k, v in out.items()}


def build_task_model(
    path: str | Path,
    kind: str,
    num_labels: int,
    problem_type: str | None = None,
    keep_classifier: bool = False,
) -> torch.nn.Module:
    """A task model from any BERT checkpoint directory (bertcli's or transformers', with or
    without pretraining heads, a bare `BertModel` too): the encoder (and pooler, when the
    checkpoint has one) loaded, the classifier fresh as BERT initialises it.

    `keep_classifier` loads the checkpoint's own `classifier` instead (a fine-tuned model
    read back); its shape must fit `num_labels`. The names started fresh are left in
    `model.fresh_heads`.
    """
    from bertcli.model import BertForSequenceClassification, BertForTokenClassification

    path = Path(path)
    config = load_config(path)
    if kind == "sequence":
        model = BertForSequenceClassification(config, num_labels, problem_type)
    elif kind == "token":
        model = BertForTokenClassification(config, num_labels)
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    raw = _normalise_hf_names(read_weights(path))
    fresh = task_state_dict(model, "sequence")  # every name, pooler included
    # the pretraining-model mapping does the qkv fusion and the shape checks; its heads
    # (absent from a task checkpoint) come from any fallback, then are dropped
    with torch.device("meta"):
        filler = to_hf_state_dict(BertForPreTraining(config))
    fallback = {**filler, **fresh}
    ours = from_hf_state_dict(raw, config, source=str(path), head_fallback=fallback)
    state = {k: v for k, v in ours.items() if k.startswith("bert.")}
    fresh_heads = [k for k in _encoder_names(config, pooler=True).values() if k not in raw]
    fresh_heads = [k for k in fresh_heads if k.startswith(HEAD_PREFIXES)]
    if keep_classifier and all(name in raw for name in _CLASSIFIER):
        for name in _CLASSIFIER:
            expected = tuple(model.state_dict()[name].shape)
            if tuple(raw[name].shape) != expected:
                raise UserError(
                    f"{path}: tensor {name} has shape {tuple(raw[name].shape)}, expected "
                    f"{expected} for {num_labels} labels"
                )
            state[name] = raw[name]
    else:
        state.update({name: model.state_dict()[name] for name in _CLASSIFIER})
        fresh_heads += list(_CLASSIFIER)
    model.load_state_dict(state, strict=True)
    model.fresh_heads = fresh_heads
    return model


def save_task_model(
    model: torch.nn.Module,
    kind: str,
    labels: list[str],
    directory: Path,
    tokenizer=None,
) -> None:
    """Write `model` as a transformers task directory into an existing `directory`: config.json
    (architectures, id2label, label2id, problem_type), model.safetensors, tokenizer files."""
    import json

    from bertcli.tokenizer import write_tokenizer_files

    data = model.config.to_dict()
    data["architectures"] = [TASK_ARCHITECTURES[kind]]
    data["id2label"] = {str(i): label for i, label in enumerate(labels)}
    data["label2id"] = {label: i for i, label in enumerate(labels)}
    data["problem_type"] = model.problem_type
    data["num_labels"] = len(labels)
    (directory / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tensors = {k: v.to("cpu", torch.float32) for k, v in task_state_dict(model, kind).items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        write_tokenizer_files(tokenizer, directory)
