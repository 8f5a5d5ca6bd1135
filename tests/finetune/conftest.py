"""A tiny pretrained-looking checkpoint (random weights, a real WordPiece tokenizer) and tiny
labelled files, so fine-tuning tests run in seconds with no network."""

from __future__ import annotations

import pytest
import torch

from bertcli.config import BertConfig
from bertcli.finetune.run import sample_dir
from bertcli.hf import save_pretrained
from bertcli.model import BertForPreTraining
from bertcli.tokenizer import load_tokenizer, train_tokenizer, write_tokenizer_files


def tiny_config(vocab_size: int, **kw) -> BertConfig:
    base = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=128,
    )
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft-tok")
    lines = (sample_dir() / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    text = root / "text.txt"
    extra = "Obama visited New York and London with Microsoft and Google ."
    text.write_text("\n".join(line.split("\t")[0] for line in lines) + f"\n{extra}\n")
    out = root / "tokenizer"
    train_tokenizer("wordpiece", [text], 1000, out)
    return out


@pytest.fixture(scope="session")
def checkpoint(tokenizer_dir, tmp_path_factory):
    """A bertcli-style checkpoint directory: config.json, model.safetensors, tokenizer files."""
    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(tok.vocab_size, pad_token_id=tok.pad_id))
    out = tmp_path_factory.mktemp("ft-ckpt") / "ckpt"
    save_pretrained(model, out)
    write_tokenizer_files(tok, out)
    return out


NER_TRAIN = """-DOCSTART- O

Obama\tB-person
visited\tO
New\tB-location
York\tI-location
\t
Microsoft\tB-corporation
and\tO
Google\tB-corporation
hired\tO
him\tO

London\tB-location
is\tO
big\tO
"""

NER_DEV = """Google\tB-corporation
visited\tO
London\tB-location

New\tB-location
York\tI-location
and\tO
Obama\tB-person
"""


@pytest.fixture
def ner_files(tmp_path):
    train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
    train.write_text(NER_TRAIN * 4, encoding="utf-8")
    dev.write_text(NER_DEV, encoding="utf-8")
    return train, dev


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a loaded machine they spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
