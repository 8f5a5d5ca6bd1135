"""BertConfig: presets, validation messages that name the field, JSON in transformers' format."""

from __future__ import annotations

import json

import pytest

from bertcli.config import PRESETS, BertConfig
from bertcli.errors import UserError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_follow_google_family(name):
    layers, hidden, heads = PRESETS[name]
    cfg = BertConfig.from_preset(name)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (
        layers,
        hidden,
        heads,
    )
    assert cfg.intermediate_size == 4 * hidden


def test_preset_values():
    assert PRESETS["tiny"] == (2, 128, 2)
    assert PRESETS["base"] == (12, 768, 12)
    assert PRESETS["large"] == (24, 1024, 16)


def test_hidden_override_rescales_intermediate():
    cfg = BertConfig.from_preset("tiny", hidden_size=256, num_attention_heads=4)
    assert cfg.intermediate_size == 1024


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"hidden_size": 100, "num_attention_heads": 3}, "hidden_size"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"num_hidden_layers": -1}, "num_hidden_layers"),
        ({"hidden_act": "nope"}, "hidden_act"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"vocab_size": 10, "pad_token_id": 10}, "pad_token_id"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(UserError, match=field):
        BertConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset"):
        BertConfig.from_preset("huge")


def test_json_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = BertConfig.from_preset("mini", vocab_size=1234)
    cfg.save(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "bert" and data["architectures"] == ["BertForPreTraining"]
    theirs = transformers.BertConfig.from_json_file(tmp_path / "config.json")
    for field in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "layer_norm_eps",
        "max_position_embeddings",
    ):
        assert getattr(theirs, field) == getattr(cfg, field)
    assert BertConfig.load(tmp_path / "config.json") == cfg


def test_load_rejects_other_model_types(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="model_type"):
        BertConfig.load(tmp_path / "c.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not a JSON"):
        BertConfig.load(tmp_path / "bad.json")


# ---- TrainConfig: the one source of the training options' defaults and help -----------------


@pytest.mark.parametrize(
    "command, config_name, renamed, library_only",
    [
        ("pretrain", "TrainConfig", {}, ["tensorboard"]),
        ("preprocess", "PreprocessConfig", {"inputs": "input"}, []),
        ("pretrain", "PretrainConfig", {}, ["data_mode", "model_overrides", "train", "command"]),
        ("finetune", "FinetuneConfig", {}, []),
    ],
)
def test_options_take_default_and_help_from_the_config(command, config_name, renamed,
                                                       library_only):  # fmt: skip
    """Every config field on the CLI shows the dataclass default and help, so the two cannot
    drift apart; `library_only` fields have no option on purpose."""
    from dataclasses import MISSING, fields
    from enum import Enum

    import typer

    import bertcli.config
    from bertcli.cli import app

    config = getattr(bertcli.config, config_name)
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    missing = []
    for field in fields(config):
        param = params.get(renamed.get(field.name, field.name))
        if param is None:
            missing.append(field.name)
            continue
        default = param.default.value if isinstance(param.default, Enum) else param.default
        if field.default is not MISSING:
            assert default == field.default, field.name
        elif field.default_factory is not MISSING:
            assert default is None, field.name  # computed when the config is built
        else:
            assert param.required, field.name
        assert param.help == field.metadata["help"], field.name
    assert missing == library_only


def test_train_config_defaults_build_and_bad_values_name_the_flag():
    from bertcli.config import OPTIMIZERS, TrainConfig
    from bertcli.train.schedules import POLICIES

    config = TrainConfig(max_steps=10)
    assert config.optimizer in OPTIMIZERS and config.lr_policy in POLICIES
    for kwargs, flag in [
        ({"eps": 0.0}, "--eps"),
        ({"lr_power": 0.0}, "--lr-power"),
        ({"eval_batch_size": 0}, "--eval-batch-size"),
        ({"optimizer": "adam"}, "--optimizer"),
        ({"lr_policy": "linear"}, "--lr-policy"),
        ({"warmup_ratio": 1.0}, "--warmup-ratio"),
    ]:
        with pytest.raises(UserError, match=flag):
            TrainConfig(max_steps=10, **kwargs)
