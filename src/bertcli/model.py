"""A hand-written BERT for pretraining (masked LM + next-sentence prediction).

Semantics are those of transformers' `BertForPreTraining` (post-LayerNorm encoder, tanh pooler,
MLM decoder tied to the word embeddings with its own bias). How it differs from the reference:

* query/key/value are one fused Linear (`qkv`), and attention runs through
  `F.scaled_dot_product_attention`, which picks flash / memory-efficient kernels on GPUs;
* **unpadding** (as in DeepLearningExamples and MosaicBERT): embeddings, projections, the
  feed-forward block and every LayerNorm run on the real tokens only, `(nnz, H)`. Attention
  runs on the real tokens with flash-attn on a GPU (`use_flash_attention`,
  `flash_attn_varlen_qkvpacked_func`); elsewhere (CPUs too) q/k/v are scattered back to the
  padded layout for one masked SDPA call, which beat one call per sequence (unpad.py says why).
  Padded positions of `sequence_output` are then zeros (transformers computes
  values there that nothing reads);
* the MLM head is **static-shape**: with `masked_lm_positions (B, P)` it gathers exactly those
  positions, so `mlm_logits` is `(B, P, V)` and the loss is a sum over the labelled slots
  divided by their count, with no data-dependent shape. Without positions but with
  `masked_lm_labels`, it runs on the labelled positions selected by a boolean mask (the older
  sparse head: `mlm_logits` is `(num_labelled, V)`); without labels it is dense `(B, T, V)`;
* outputs are a small dataclass, not tuples.

Why unpadding is eager-only. The number of real tokens is data-dependent: gathering them makes
every shape after the embeddings vary per batch, and computing `nnz` from a mask on a GPU is a
host sync. So the two paths are kept apart. Eager mode unpads, with the `Unpadding` record built
by the caller from the batch while it is still on the CPU (the trainer and evaluate do this),
so a GPU never syncs; on a CPU mask the model builds it itself. Under `torch.compile` (and
when `unpad_tokens` is False, or a GPU mask comes without a record) the model runs the padded
layout: every shape is static, and `torch._dynamo.explain` finds 0 graph breaks. Unpadding
pays only where padding is large enough to pay for its gathers: `unpad.unpad_pays` decides per
batch from the device and the padding share (on a CPU the padded layout wins below 35%, which
includes WikiText-2's shards at 128 and 512); the padded path is what a compiled graph wants.

Parameter names are ours; `hf.py` is the one place that maps them to transformers' names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bertcli.config import BertConfig
from bertcli.cpu_gemm import Linear, linear
from bertcli.sizing import check_fits
from bertcli.unpad import Unpadding, pad, unpad, unpad_pays

IGNORE_INDEX = -100


def activation(name: str):
    """The feed-forward activation named as in transformers' ACT2FN."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    if name == "tanh":
        return torch.tanh
    raise ValueError(f"unknown activation {name!r}")


class Embeddings(nn.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Ids of any shape `S` (broadcastable to each other) -> (*S, H)."""
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and SDPA (or flash-attn varlen)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.qkv = Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attention_probs_dropout_prob
        self.varlen: Callable | None = None  # flash_attn_varlen_qkvpacked_func, when enabled

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, u: Unpadding | None = None
    ) -> torch.Tensor:
        """(B, T, H) padded, or (nnz, H) unpadded when `u` is given; same layout out."""
        dropout = self.attn_dropout if self.training else 0.0
        qkv = self.qkv(x)  # (B, T, 3H) or (nnz, 3H)
        if u is not None and self.varlen is not None and qkv.dtype in (torch.float16, torch.bfloat16):
            y = self.varlen(
                qkv.view(-1, 3, self.num_heads, self.head_size),  # (nnz, 3, nh, hs)
                u.cu_seqlens,
                u.max_seqlen,
                dropout_p=dropout,
            )  # (nnz, nh, hs)
            return self.out(y.reshape(x.shape))
        if u is not None:
            qkv = pad(qkv, u)  # (B, T, 3H), zeros at the padding (masked out below)
        B, T, H3 = qkv.shape
        qkv = qkv.view(B, T, 3, self.num_heads, self.head_size)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, H3 // 3)  # (B, T, H)
        if u is not None:
            y = unpad(y, u)  # (nnz, H): the output projection runs on real tokens only
        return self.out(y)


class EncoderLayer(nn.Module):
    """Post-LN transformer block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.act = activation(config.hidden_act)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, u: Unpadding | None = None
    ) -> torch.Tensor:
        """(B, T, H) or (nnz, H): everything but attention is token-wise."""
        x = self.attn_norm(x + self.dropout(self.attention(x, attn_mask, u)))
        h = self.ffn_out(self.act(self.ffn_in(x)))
        return self.ffn_norm(x + self.dropout(h))


class BertModel(nn.Module):
    """Embeddings, encoder and pooler: returns (sequence_output, pooled_output)."""

    def __init__(self, config: BertConfig):
        check_fits(config)  # before allocating: a config.json must not exhaust the machine
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = Linear(config.hidden_size, config.hidden_size)
        self.unpad_tokens = True  # False: always the padded layout (the old path, benchmarks)

    def _unpadding(
        self, attention_mask: torch.Tensor | None, unpadding: Unpadding | None
    ) -> Unpadding | None:
        """The record to unpad with, or None for the padded layout (see the module docstring)."""
        if attention_mask is None or not self.unpad_tokens or torch.compiler.is_compiling():
            return None
        if unpadding is None:
            if attention_mask.device.type != "cpu":
                return None  # building it here would be a host sync
            unpadding = Unpadding.from_mask(attention_mask)
        if not unpad_pays(attention_mask.device.type, unpadding.padding_share):
            return None  # too little padding to pay for the gathers: the padded layout
        return unpadding

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        unpadding: Unpadding | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> sequence (B, T, H), pooled (B, H)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        B, T = input_ids.shape
        attn_mask = None
        if attention_mask is not None:
            # bool (B, 1, 1, T), True = attend; keeps SDPA's fused kernels eligible.
            attn_mask = attention_mask.bool()[:, None, None, :]
        u = self._unpadding(attention_mask, unpadding)
        positions = torch.arange(T, device=input_ids.device)
        if u is None:
            x = self.embeddings(input_ids, token_type_ids, positions[None])  # (B, T, H)
        else:
            x = self.embeddings(
                unpad(input_ids, u), unpad(token_type_ids, u), u.indices % T
            )  # (nnz, H)
        for layer in self.layers:
            x = layer(x, attn_mask, u)
        if u is not None:
            x = pad(x, u)  # (B, T, H)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, H)
        return x, pooled


@dataclass
class PreTrainingOutput:
    """Losses are None when the matching labels were not given."""

    loss: torch.Tensor | None
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None
    mlm_logits: torch.Tensor  # (B, P, V) with positions, (N, V) with labels only, else (B, T, V)
    nsp_logits: torch.Tensor  # (B, 2)
    # the labels aligned with mlm_logits' leading dims (-100 at empty slots); None without labels
    mlm_targets: torch.Tensor | None = None


def masked_positions(labels: torch.Tensor, num_slots: int | None = None) -> torch.Tensor:
    """(B, T) labels -> (B, P) labelled positions ascending, padded with 0 (the batch layout).

    P is `num_slots`, else the largest labelled count in the batch. For batches that lack
    `masked_lm_positions`; it syncs on a GPU, so call it on the CPU batch.
    """
    labelled = labels != IGNORE_INDEX  # (B, T)
    if num_slots is None:
        num_slots = int(labelled.sum(dim=1).max()) if labels.numel() else 0
    T = labels.size(1)
    # labelled positions sort first (ascending), the rest become 0 beyond the count
    keys = torch.where(labelled, torch.arange(T, device=labels.device), T + 1)
    order = keys.sort(dim=1).values[:, :num_slots]  # (B, P)
    if order.size(1) < num_slots:
        order = F.pad(order, (0, num_slots - order.size(1)), value=T + 1)
    return torch.where(order > T, 0, order)


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and next-sentence heads."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm_dense = Linear(config.hidden_size, config.hidden_size)
        self.mlm_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.nsp = Linear(config.hidden_size, 2)
        self.act = activation(config.hidden_act)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def decoder_weight(self) -> torch.Tensor:
        """The MLM decoder matrix: the word embeddings themselves (tied)."""
        return self.bert.embeddings.word_embeddings.weight

    def mlm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states -> (..., V) vocabulary logits."""
        h = self.mlm_norm(self.act(self.mlm_dense(hidden)))
        return linear(h, self.decoder_weight, self.mlm_bias)

    def use_flash_attention(self, varlen: Callable | None) -> None:
        """Run unpadded attention through `varlen` (flash-attn's qkv-packed varlen function)."""
        for layer in self.bert.layers:
            layer.attention.varlen = varlen

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        masked_lm_labels: torch.Tensor | None = None,
        next_sentence_labels: torch.Tensor | None = None,
        masked_lm_positions: torch.Tensor | None = None,
        *,
        unpadding: Unpadding | None = None,
        label_smoothing: float = 0.0,
    ) -> PreTrainingOutput:
        """Ids, types, mask (B, T); labels (B, T) with -100; positions (B, P); NSP labels (B,).

        `label_smoothing` applies to the MLM loss only (training; evaluation leaves it 0).
        """
        sequence, pooled = self.bert(input_ids, token_type_ids, attention_mask, unpadding)
        nsp_logits = self.nsp(pooled)  # (B, 2)

        mlm_loss = nsp_loss = loss = targets = None
        if masked_lm_positions is not None:
            B, P = masked_lm_positions.shape
            index = masked_lm_positions[..., None].expand(B, P, sequence.size(-1))  # (B, P, H)
            mlm_logits = self.mlm_head(sequence.gather(1, index))  # (B, P, V)
            if masked_lm_labels is not None:
                # empty slots point at position 0 ([CLS]), whose label is -100: ignored
                targets = masked_lm_labels.gather(1, masked_lm_positions)  # (B, P)
        elif masked_lm_labels is None:
            mlm_logits = self.mlm_head(sequence)  # (B, T, V)
        else:
            selected = masked_lm_labels != IGNORE_INDEX  # (B, T)
            targets = masked_lm_labels[selected]  # (N,)
            mlm_logits = self.mlm_head(sequence[selected])  # (N, V)
        if targets is not None:
            total = F.cross_entropy(
                mlm_logits.reshape(-1, mlm_logits.size(-1)).float(),
                targets.reshape(-1),
                reduction="sum",
                ignore_index=IGNORE_INDEX,
                label_smoothing=label_smoothing,
            )
            # sum / max(N, 1): the mean over labelled tokens, and 0 (not NaN) for none;
            # a tensor count, so there is no host sync and no data-dependent branch
            count = targets.ne(IGNORE_INDEX).sum().clamp(min=1)
            mlm_loss = loss = total / count
        if next_sentence_labels is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_labels.view(-1).long())
            loss = nsp_loss if loss is None else loss + nsp_loss
        return PreTrainingOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits, targets)

    def num_parameters(self) -> int:
        """Unique parameters (the tied decoder counted once)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str = "cpu") -> BertForPreTraining:
        """Load a directory in transformers' layout (config.json + safetensors or .bin)."""
        from bertcli.hf import load_pretrained

        return load_pretrained(path, map_location=map_location)

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json + model.safetensors that transformers loads unchanged."""
        from bertcli.hf import save_pretrained

        save_pretrained(self, path)


# ---- task heads (fine-tuning) -----------------------------------------------------------------


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation of one module (what transformers' `_init_weights` does)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


PROBLEM_TYPES = ("single_label_classification", "regression")


@dataclass
class ClassifierOutput:
    """`loss` is None without labels."""

    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, num_labels) per sequence, (B, T, num_labels) per token


class BertForSequenceClassification(nn.Module):
    """pooled [CLS] -> dropout -> `classifier`; cross-entropy, or MSE for regression.

    As transformers: `problem_type` "regression" (or `num_labels == 1`) takes float labels
    (B,) and the MSE of the squeezed logits; otherwise integer labels and cross-entropy.
    """

    def __init__(self, config: BertConfig, num_labels: int, problem_type: str | None = None):
        super().__init__()
        if problem_type is None:
            problem_type = "regression" if num_labels == 1 else "single_label_classification"
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"unsupported problem_type {problem_type!r}")
        self.config = config
        self.num_labels = num_labels
        self.problem_type = problem_type
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, num_labels)
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        unpadding: Unpadding | None = None,
    ) -> ClassifierOutput:
        """Ids, types, mask (B, T); labels (B,) -> logits (B, num_labels)."""
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask, unpadding)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.problem_type == "regression":
                loss = F.mse_loss(logits.float().squeeze(-1), labels.float().view(-1))
            else:
                loss = F.cross_entropy(logits.float(), labels.view(-1).long())
        return ClassifierOutput(loss, logits)

    def num_parameters(self) -> int:
        """All parameters."""
        return sum(p.numel() for p in self.parameters())


class BertForTokenClassification(nn.Module):
    """Every token's hidden state -> dropout -> `classifier`; cross-entropy with -100 ignored.

    The pooler is kept (so a sequence checkpoint round-trips) but never used: transformers'
    `BertForTokenClassification` has none, and `hf.py` does not save it.
    """

    problem_type = "single_label_classification"

    def __init__(self, config: BertConfig, num_labels: int):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        for p in self.bert.pooler.parameters():
            p.requires_grad_(False)  # unused: DDP must not wait for its gradient
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, num_labels)
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        unpadding: Unpadding | None = None,
    ) -> ClassifierOutput:
        """Ids, types, mask, labels (B, T) with -100 -> logits (B, T, num_labels)."""
        sequence, _ = self.bert(input_ids, token_type_ids, attention_mask, unpadding)
        logits = self.classifier(self.dropout(sequence))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, self.num_labels),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return ClassifierOutput(loss, logits)

    def num_parameters(self) -> int:
        """All parameters."""
        return sum(p.numel() for p in self.parameters())
