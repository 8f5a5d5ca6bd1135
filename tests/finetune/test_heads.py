"""Task heads against transformers' BertForSequenceClassification / BertForTokenClassification,
both directions (transformers -> bertcli -> transformers), dropout off, padded batches."""

from __future__ import annotations

import pytest
import torch

from bertcli.hf import build_task_model, save_task_model
from tests.finetune.conftest import tiny_config

transformers = pytest.importorskip("transformers")  # the reference

VOCAB = 97


def padded(B: int = 4, T: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (B, T), generator=g)
    types = torch.zeros_like(ids)
    types[:, T // 2 :] = 1
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types[mask == 0] = 0
    return ids, types, mask


def _perturb(model: torch.nn.Module) -> None:
    """Non-trivial biases and LayerNorms, so a mis-mapped tensor cannot hide behind zeros."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _hf_config(num_labels: int, problem_type: str | None):
    kwargs = dict(num_labels=num_labels)
    if problem_type:
        kwargs["problem_type"] = problem_type
    return transformers.BertConfig(**tiny_config(VOCAB).to_dict(), **kwargs)


CASES = [(2, None), (3, None), (1, "regression")]


@pytest.mark.parametrize(("num_labels", "problem_type"), CASES)
def test_sequence_head_both_ways(tmp_path, num_labels, problem_type):
    torch.manual_seed(0)
    theirs = transformers.BertForSequenceClassification(_hf_config(num_labels, problem_type))
    _perturb(theirs)
    theirs.eval().save_pretrained(tmp_path / "theirs")
    ours = build_task_model(
        tmp_path / "theirs", "sequence", num_labels, problem_type, keep_classifier=True
    ).eval()
    ids, types, mask = padded()
    if num_labels == 1:
        labels = torch.randn(4)
    else:
        labels = torch.tensor([0, num_labels - 1, 1, 0])
    with torch.no_grad():
        ref = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
        got = ours(ids, types, mask, labels=labels)
    assert ours.problem_type == ("regression" if num_labels == 1 else "single_label_classification")
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-4, rtol=1e-4)

    labels_names = [f"L{i}" for i in range(num_labels)]
    (tmp_path / "ours").mkdir()
    save_task_model(ours, "sequence", labels_names, tmp_path / "ours")
    back = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert back.config.architectures == ["BertForSequenceClassification"]
    assert back.config.id2label == dict(enumerate(labels_names))
    assert back.config.problem_type == ours.problem_type
    with torch.no_grad():
        again = back(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
    torch.testing.assert_close(again.logits, got.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again.loss, got.loss, atol=1e-4, rtol=1e-4)


def test_token_head_both_ways(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.BertForTokenClassification(_hf_config(5, None))
    _perturb(theirs)
    theirs.eval().save_pretrained(tmp_path / "theirs")
    ours = build_task_model(tmp_path / "theirs", "token", 5, keep_classifier=True).eval()
    ids, types, mask = padded()
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(3))
    labels[mask == 0] = -100
    labels[:, 0] = -100
    labels[0, 4] = -100  # a non-first sub-token
    with torch.no_grad():
        ref = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
        got = ours(ids, types, mask, labels=labels)
    real = mask.bool()  # transformers computes values at padding that nothing reads
    torch.testing.assert_close(got.logits[real], ref.logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-4, rtol=1e-4)

    (tmp_path / "ours").mkdir()
    save_task_model(ours, "token", ["O", "B-a", "I-a", "B-b", "I-b"], tmp_path / "ours")
    back = transformers.BertForTokenClassification.from_pretrained(tmp_path / "ours").eval()
    assert back.config.label2id == {"O": 0, "B-a": 1, "I-a": 2, "B-b": 3, "I-b": 4}
    with torch.no_grad():
        again = back(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
    torch.testing.assert_close(again.logits[real], got.logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again.loss, got.loss, atol=1e-4, rtol=1e-4)


def test_init_from_pretraining_checkpoint_loads_encoder_and_fresh_classifier(checkpoint):
    """A bertcli pretraining checkpoint: encoder and pooler loaded, classifier as BERT inits."""
    from bertcli.hf import load_pretrained

    pre = load_pretrained(checkpoint)
    torch.manual_seed(5)
    task = build_task_model(checkpoint, "sequence", 3)
    assert task.fresh_heads == ["classifier.weight", "classifier.bias"]
    for name, tensor in pre.bert.state_dict().items():
        torch.testing.assert_close(task.bert.state_dict()[name], tensor, rtol=0, atol=0)
    w = task.classifier.weight.detach()
    assert (
        abs(float(w.std()) - 0.02) < 0.01 and float(task.classifier.bias.detach().abs().sum()) == 0
    )


def test_bare_encoder_without_pooler_gets_fresh_pooler(tmp_path):
    torch.manual_seed(0)
    encoder = transformers.BertModel(
        transformers.BertConfig(**tiny_config(VOCAB).to_dict()), add_pooling_layer=False
    )
    encoder.save_pretrained(tmp_path / "enc")
    model = build_task_model(tmp_path / "enc", "sequence", 2)
    assert "bert.pooler.dense.weight" in model.fresh_heads
    ids, types, mask = padded()
    with torch.no_grad():
        ref = encoder(input_ids=ids, token_type_ids=types, attention_mask=mask)
        seq, _ = model.eval().bert(ids, types, mask)
    real = mask.bool()
    torch.testing.assert_close(seq[real], ref.last_hidden_state[real], atol=1e-4, rtol=1e-4)
