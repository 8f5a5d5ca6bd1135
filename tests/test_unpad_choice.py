"""Which layout a batch gets (issue 22): `unpad_pays` is pure, and the model follows it."""

from __future__ import annotations

import torch

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.unpad import CPU_MIN_PADDING, Unpadding, unpad_pays


def test_unpad_pays_by_device_and_padding_share():
    assert not unpad_pays("cpu", 0.0)
    assert not unpad_pays("cuda", 0.0)  # nothing to unpad
    assert not unpad_pays("cpu", 0.10)  # WikiText-2 shards at 128: the padded layout
    assert not unpad_pays("cpu", 0.20)  # ... and at 512
    assert unpad_pays("cpu", CPU_MIN_PADDING)
    assert unpad_pays("cpu", 0.6)
    assert unpad_pays("cuda", 0.05)  # cheap gathers next to GPU kernels


def test_padding_share_of_a_record():
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[0, 5:] = 0
    assert Unpadding.from_mask(mask).padding_share == 5 / 40


def tiny() -> BertForPreTraining:
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForPreTraining(config)


def test_model_takes_the_padded_layout_when_padding_is_light():
    bert = tiny().bert
    light = torch.ones(4, 20, dtype=torch.long)
    light[0, 16:] = 0  # 5% padding
    heavy = torch.ones(4, 20, dtype=torch.long)
    heavy[:2, 5:] = 0  # 37.5% padding
    assert bert._unpadding(light, None) is None
    assert bert._unpadding(light, Unpadding.from_mask(light)) is None  # the trainer's record too
    assert bert._unpadding(heavy, None) is not None


def test_both_layouts_give_the_same_loss_and_gradients_either_side_of_the_threshold():
    """Light and heavy padding: the chosen layout equals the other one (the choice is speed only)."""
    torch.manual_seed(3)
    model = tiny()
    for cut in (18, 6):  # 10% and 70% padding of the first rows
        ids = torch.randint(5, 64, (4, 20))
        mask = torch.ones_like(ids)
        mask[:2, cut:] = 0
        labels = torch.full_like(ids, -100)
        labels[:, 1:4] = ids[:, 1:4]
        nsp = torch.tensor([0, 1, 0, 1])
        grads, losses = [], []
        for unpad_tokens in (True, False):
            model.zero_grad()
            model.bert.unpad_tokens = unpad_tokens
            out = model(ids, None, mask, masked_lm_labels=labels, next_sentence_labels=nsp)
            out.loss.backward()
            losses.append(out.loss.detach())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-5)
        for name, grad in grads[1].items():
            torch.testing.assert_close(grads[0][name], grad, atol=1e-6, rtol=1e-5, msg=name)
