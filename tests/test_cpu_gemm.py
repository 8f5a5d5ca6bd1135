"""The oneDNN linear path against F.linear, and how the backend is chosen."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bertcli import cpu_gemm
from bertcli.config import BertConfig
from bertcli.errors import UserError
from bertcli.model import BertForPreTraining, masked_positions

pytestmark = pytest.mark.skipif(
    not cpu_gemm.onednn_available(), reason="this torch build has no oneDNN linear"
)


@pytest.fixture
def backend():
    """Restore torch's path after each test: the switch is process-wide."""
    yield cpu_gemm.set_backend
    cpu_gemm.set_backend("torch")


def _grads(fn, x, w, b, grad):
    leaves = [t for t in (x, w, b) if t is not None and t.requires_grad]
    out = fn(x, w, b)
    return out, torch.autograd.grad(out, leaves, grad)


@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16), (2, 3, 4, 16)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_f_linear_forward_and_backward(backend, shape, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    w = torch.randn(24, 16, generator=gen, requires_grad=True)
    b = torch.randn(24, generator=gen, requires_grad=True) if with_bias else None
    grad = torch.randn(*shape[:-1], 24, generator=gen)
    ref, ref_grads = _grads(F.linear, x, w, b, grad)
    backend("onednn")
    out, grads = _grads(cpu_gemm.linear, x, w, b, grad)
    assert out.grad_fn is not None and "OneDnn" in type(out.grad_fn).__name__  # the new path ran
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(ref_grads)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_linear_frozen_weight_and_expanded_gradient(backend):
    """Frozen weights get no gradient; an expanded (stride-0) gradient, as .sum() gives, works."""
    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(48, 32)
    backend("onednn")
    out = cpu_gemm.linear(x, w)
    out.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(64, 32), rtol=1e-5, atol=1e-4)


def test_linear_falls_back_outside_fp32_cpu(backend):
    """bf16 autocast and non-fp32 inputs keep torch's own linear (it uses oneDNN for bf16)."""
    backend("onednn")
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_gemm.linear(x, w).dtype == torch.bfloat16
    assert cpu_gemm.linear(x.double(), w.double()).dtype == torch.float64
    assert cpu_gemm.linear(torch.randn(0, 8), w).shape == (0, 3)


def test_model_losses_and_gradients_agree_between_backends(backend):
    """The whole pretraining step, padded batch, dropout off: the same to fp32 round-off."""
    config = BertConfig.from_preset("tiny")
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    ids = torch.randint(5, config.vocab_size, (4, 32))
    mask = torch.ones(4, 32, dtype=torch.long)
    mask[1, 20:] = 0
    labels = torch.full((4, 32), -100)
    labels[:, 3:6] = ids[:, 3:6]
    results = {}
    for name in ("torch", "onednn"):
        backend(name)
        model.zero_grad()
        out = model(ids, None, mask, labels, torch.tensor([0, 1, 1, 0]), masked_positions(labels))
        out.loss.backward()
        results[name] = (
            out.loss.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters()},
        )
    torch.testing.assert_close(results["onednn"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    for name, grad in results["torch"][1].items():
        got = results["onednn"][1][name]
        assert got.is_contiguous(), name
        torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_choose_respects_device_precision_and_env(monkeypatch, backend):
    cpu = torch.device("cpu")
    monkeypatch.setenv(cpu_gemm.ENV, "torch")
    assert cpu_gemm.choose(cpu) == ("torch", None) and not cpu_gemm.onednn_enabled()
    monkeypatch.setenv(cpu_gemm.ENV, "onednn")
    assert cpu_gemm.choose(cpu) == ("onednn", None) and cpu_gemm.onednn_enabled()
    assert cpu_gemm.choose(cpu, "bf16") == ("torch", None) and not cpu_gemm.onednn_enabled()
    assert cpu_gemm.choose(torch.device("cuda"))[0] == "torch"
    monkeypatch.setenv(cpu_gemm.ENV, "fast")
    with pytest.raises(UserError, match="BERTCLI_CPU_GEMM must be one of"):
        cpu_gemm.choose(cpu)


def test_choose_measures_once_per_machine(monkeypatch, tmp_path, backend):
    """auto: the measured speedup is cached; the threshold decides; a broken cache re-measures."""
    monkeypatch.setenv("BERTCLI_CACHE", str(tmp_path))
    monkeypatch.setenv(cpu_gemm.ENV, "auto")
    calls = []
    monkeypatch.setattr(cpu_gemm, "measure", lambda: calls.append(1) or 3.0)
    assert cpu_gemm.choose(torch.device("cpu")) == ("onednn", 3.0)
    assert cpu_gemm.choose(torch.device("cpu")) == ("onednn", 3.0) and len(calls) == 1
    cache = tmp_path / "cpu-gemm.json"
    assert json.loads(cache.read_text()) == {cpu_gemm.machine_key(): 3.0}
    cache.write_text(json.dumps({cpu_gemm.machine_key(): 1.05}))
    assert cpu_gemm.choose(torch.device("cpu")) == ("torch", 1.05)  # below MIN_SPEEDUP
    cache.write_text("\x00garbage")
    assert cpu_gemm.choose(torch.device("cpu")) == ("onednn", 3.0) and len(calls) == 2
    cache.write_text(json.dumps({cpu_gemm.machine_key(): 1.05, "pad": "x" * (1 << 20)}))
    assert cpu_gemm.choose(torch.device("cpu")) == ("onednn", 3.0) and len(calls) == 3  # not read


def test_measure_returns_a_positive_ratio(backend):
    assert cpu_gemm.measure(hidden=32, tokens=64, repeats=1) > 0


def test_flop_counter_counts_the_onednn_path(backend):
    """MFU and FLOP checks count oneDNN's products as they count addmm: 2 M K N each."""
    from torch.utils.flop_counter import FlopCounterMode

    backend("onednn")
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(4, 16, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        cpu_gemm.linear(x, w).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 8 * 16 * 4  # forward, grad input, grad weight


def test_linear_on_strided_views(backend):
    """The pooler reads x[:, 0], a strided view; its gradient flows back into the full tensor."""
    x = torch.randn(4, 9, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    ref_out, ref_grads = _grads(lambda a, b, c: F.linear(a[:, 0], b), x, w, None, torch.ones(4, 8))
    backend("onednn")
    out, grads = _grads(lambda a, b, c: cpu_gemm.linear(a[:, 0], b), x, w, None, torch.ones(4, 8))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
