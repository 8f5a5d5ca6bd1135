"""A hand-written BERT for pretraining (masked LM + next-sentence prediction).

Semantics are those of transformers' `BertForPreTraining` (post-LayerNorm encoder, tanh pooler,
MLM decoder tied to the word embeddings with its own bias). How it differs from the reference:

* query/key/value are one fused Linear (`qkv`), and attention runs through
  `F.scaled_dot_product_attention`, which picks flash / memory-efficient kernels on GPUs;
* with `masked_lm_labels`, the MLM head runs only on labelled positions (sparse prediction, as in
  NVIDIA's reference), so `mlm_logits` is `[num_labelled, vocab]` instead of `[B, T, vocab]`;
* outputs are a small dataclass, not tuples.

Parameter names are ours; `hf.py` is the one place that maps them to transformers' names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bertcli.config import BertConfig

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

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.size(1)
        positions = torch.arange(T, device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings(token_type_ids)
        )  # (B, T, H)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and SDPA."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_size)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)
        return self.out(y)


class EncoderLayer(nn.Module):
    """Post-LN transformer block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attention(x, attn_mask)))
        h = self.ffn_out(self.act(self.ffn_in(x)))
        return self.ffn_norm(x + self.dropout(h))


class BertModel(nn.Module):
    """Embeddings, encoder and pooler: returns (sequence_output, pooled_output)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        attn_mask = None
        if attention_mask is not None:
            # bool (B, 1, 1, T), True = attend; keeps SDPA's fused kernels eligible.
            attn_mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        for layer in self.layers:
            x = layer(x, attn_mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, H)
        return x, pooled


@dataclass
class PreTrainingOutput:
    """Losses are None when the matching labels were not given."""

    loss: torch.Tensor | None
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None
    mlm_logits: torch.Tensor  # (B, T, V) without labels, (num_labelled, V) with them
    nsp_logits: torch.Tensor  # (B, 2)


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and next-sentence heads."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm_dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.mlm_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.nsp = nn.Linear(config.hidden_size, 2)
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
        return F.linear(h, self.decoder_weight, self.mlm_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        masked_lm_labels: torch.Tensor | None = None,
        next_sentence_labels: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        sequence, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        nsp_logits = self.nsp(pooled)  # (B, 2)

        mlm_loss = nsp_loss = loss = None
        if masked_lm_labels is None:
            mlm_logits = self.mlm_head(sequence)  # (B, T, V)
        else:
            selected = masked_lm_labels != IGNORE_INDEX  # (B, T)
            targets = masked_lm_labels[selected]  # (N,)
            mlm_logits = self.mlm_head(sequence[selected])  # (N, V)
            # sum / max(N, 1): the mean over labelled tokens, and 0 (not NaN) for none.
            total = F.cross_entropy(mlm_logits.float(), targets, reduction="sum")
            mlm_loss = total / targets.numel() if targets.numel() else total
            loss = mlm_loss
        if next_sentence_labels is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_labels.view(-1).long())
            loss = nsp_loss if loss is None else loss + nsp_loss
        return PreTrainingOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits)

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


def flops_per_token(config: BertConfig, seq_len: int, masked_fraction: float = 0.15) -> float:
    """Training FLOPs per token: 6 x (matmul params) + attention scores, sparse MLM head."""
    H, L, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 4 * H * H + 2 * H * inter  # qkv + out + ffn weights
    attention = 2 * seq_len * H  # QK^T and AV per token per layer (multiply-adds)
    head = masked_fraction * (H * H + H * config.vocab_size)
    return 6.0 * (L * (per_layer + attention) + head)
