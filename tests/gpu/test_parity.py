"""The model under bf16/fp16 autocast on the GPU against the fp32 model on the CPU, and the
GPU's attention paths against each other.

Tolerances are norm-wise relative errors (||got - want|| / ||want||), from the formats' unit
roundoff: bf16 keeps 8 significant bits (2^-8 = 3.9e-3 per rounding), fp16 11 (4.9e-4); four
post-LN layers of roundings give ~1e-2 on bf16 logits, which is what the mixed-precision
literature reports. So: logits 3e-2 (bf16) / 8e-3 (fp16); gradients, which compound the
backward's roundings too, 6e-2 / 2e-2; the fp32 loss 1e-2 / 3e-3. fp32 on the GPU (TF32 off)
against fp32 on the CPU: 1e-4.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bertcli.model import BertForPreTraining
from bertcli.unpad import Unpadding
from tests.gpu.synthetic import SyntheticPretraining, flat_grads, relative_error, small_config

pytestmark = pytest.mark.gpu

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {  # (logits, gradients, loss)
    "bf16": (3e-2, 6e-2, 1e-2),
    "fp16": (8e-3, 2e-2, 3e-3),
    "fp32": (1e-4, 1e-4, 1e-5),
}


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 means fp32 here (init_runtime turns TF32 on for training)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def reference_and_copy(device):
    torch.manual_seed(0)
    reference = BertForPreTraining(small_config())
    return reference, copy.deepcopy(reference).to(device)


def run(model, batch, precision: str, *, unpadding=None, unpad_tokens: bool = True):
    """Forward and backward of the MLM + NSP loss; the outputs (gradients stay on `model`)."""
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    model.bert.unpad_tokens = unpad_tokens
    b = {k: v.to(device) for k, v in batch.items()}
    dtype = DTYPES.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    with autocast:
        out = model(
            b["input_ids"],
            b["token_type_ids"],
            b["attention_mask"],
            masked_lm_labels=b["masked_lm_labels"],
            next_sentence_labels=b["next_sentence_labels"],
            masked_lm_positions=b["masked_lm_positions"],
            unpadding=unpadding,
        )
    out.loss.backward()
    return out


def record_for(batch, device) -> Unpadding:
    """The trainer's way: built from the CPU batch, then moved."""
    return Unpadding.from_mask(batch["attention_mask"]).to(device)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_gpu_autocast_matches_fp32_cpu(device, precision, record):
    if precision == "fp16" and device.type == "cpu":
        pytest.skip("fp16 autocast is a CUDA precision (bertcli refuses it on the CPU)")
    batch = SyntheticPretraining(16, 128, 4096).batch(0, 16)
    reference, model = reference_and_copy(device)
    want = run(reference, batch, "fp32")  # CPU, fp32, per-sequence attention
    got = run(model, batch, precision, unpadding=record_for(batch, device))
    grads, ref_grads = flat_grads(model), flat_grads(reference)
    errors = {
        "mlm_logits": relative_error(got.mlm_logits, want.mlm_logits),
        "nsp_logits": relative_error(got.nsp_logits, want.nsp_logits),
        "loss": abs(got.loss.item() - want.loss.item()) / want.loss.item(),
        "gradients": relative_error(grads, ref_grads),
    }
    record(f"parity_{precision}_vs_fp32_cpu", errors)
    logits_tol, grad_tol, loss_tol = TOLERANCE[precision]
    assert errors["mlm_logits"] < logits_tol, errors
    assert errors["nsp_logits"] < logits_tol, errors
    assert errors["loss"] < loss_tol, errors
    assert errors["gradients"] < grad_tol, errors


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_padded_and_unpadded_agree_on_the_gpu(device, precision):
    """unpad_tokens=False (one masked SDPA call on the padded batch) against the unpadded
    path the trainer takes on a GPU (real tokens only, q/k/v scattered back for attention)."""
    batch = SyntheticPretraining(16, 128, 4096, seed=3).batch(0, 16)
    _, model = reference_and_copy(device)
    padded = run(model, batch, precision, unpad_tokens=False)
    padded_grads = flat_grads(model)
    unpadded = run(model, batch, precision, unpadding=record_for(batch, device))
    logits_tol, grad_tol, _ = TOLERANCE[precision]
    assert relative_error(unpadded.mlm_logits, padded.mlm_logits) < logits_tol
    assert relative_error(unpadded.nsp_logits, padded.nsp_logits) < logits_tol
    assert relative_error(flat_grads(model), padded_grads) < grad_tol


def test_flash_attn_varlen_matches_sdpa(device):
    flash_attn = pytest.importorskip(
        "flash_attn", reason="flash-attn is not installed: its varlen path is untested here"
    )
    if device.type != "cuda":
        pytest.skip("flash-attn runs on CUDA only")
    batch = SyntheticPretraining(16, 128, 4096, seed=4).batch(0, 16)
    _, model = reference_and_copy(device)
    sdpa = run(model, batch, "bf16", unpad_tokens=False)
    sdpa_grads = flat_grads(model)
    model.use_flash_attention(flash_attn.flash_attn_varlen_qkvpacked_func)
    try:
        flash = run(model, batch, "bf16", unpadding=record_for(batch, device))
    finally:
        model.use_flash_attention(None)
    logits_tol, grad_tol, _ = TOLERANCE["bf16"]
    assert relative_error(flash.mlm_logits, sdpa.mlm_logits) < logits_tol
    assert relative_error(flat_grads(model), sdpa_grads) < grad_tol
