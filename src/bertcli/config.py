"""Model configuration with transformers' field names, presets, validation and JSON I/O.

`BertConfig` is the only thing `model.py` sees. Its JSON form is transformers' `config.json`
for `BertForPreTraining`, so our checkpoints load there unchanged and theirs load here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from bertcli.errors import UserError

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
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        """Write config.json atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

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
