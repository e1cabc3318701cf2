"""GPT-2, written from scratch in the style of *Build a Large Language Model (From Scratch)*, ch. 4.

This file is only the model. Generation's caches and kernels live in ``decoding.py``; the names
of the model's tensors, for the checkpoint formats, in ``slots.py``.

Shapes in comments: B = batch, T = tokens, D = embedding dimension, H = heads, Dh = D / H,
V = vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import validate_config


class LayerNorm(nn.Module):
    """Normalises each token's features to zero mean and unit variance, then scales and shifts."""

    def __init__(self, embedding_dimension: int, epsilon: float, bias: bool = True):
        super().__init__()
        self.epsilon = epsilon
        self.scale = nn.Parameter(torch.ones(embedding_dimension))
        self.shift = nn.Parameter(torch.zeros(embedding_dimension)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.epsilon)


class MultiHeadAttention(nn.Module):
    """Causal self-attention: each token attends to itself and the tokens before it, in H heads."""

    def __init__(self, embedding_dimension: int, number_of_heads: int, dropout_rate: float,
                 qkv_bias: bool, bias: bool = True):
        super().__init__()
        self.number_of_heads = number_of_heads
        self.head_dimension = embedding_dimension // number_of_heads
        self.dropout_rate = dropout_rate
        self.query_projection = nn.Linear(embedding_dimension, embedding_dimension, bias=qkv_bias)
        self.key_projection = nn.Linear(embedding_dimension, embedding_dimension, bias=qkv_bias)
        self.value_projection = nn.Linear(embedding_dimension, embedding_dimension, bias=qkv_bias)
        self.output_projection = nn.Linear(embedding_dimension, embedding_dimension, bias=bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, Dh)."""
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.number_of_heads, self.head_dimension).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, Dh) -> (B, T, D)."""
        batch, _, tokens, _ = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, self.number_of_heads * self.head_dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries = self.split_heads(self.query_projection(x))  # (B, H, T, Dh)
        keys = self.split_heads(self.key_projection(x))
        values = self.split_heads(self.value_projection(x))
        context = F.scaled_dot_product_attention(
            queries, keys, values, is_causal=True,
            dropout_p=self.dropout_rate if self.training else 0.0,
        )  # (B, H, T, Dh)
        return self.output_projection(self.merge_heads(context))  # (B, T, D)


class FeedForward(nn.Module):
    """Two linear layers around a GELU (GPT-2's tanh approximation, or the exact erf one); the
    hidden layer is 4x as wide."""

    def __init__(self, embedding_dimension: int, gelu_approximation: str = "tanh",
                 bias: bool = True):
        super().__init__()
        self.expansion = nn.Linear(embedding_dimension, 4 * embedding_dimension, bias=bias)
        self.activation = nn.GELU(approximate=gelu_approximation)
        self.contraction = nn.Linear(4 * embedding_dimension, embedding_dimension, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contraction(self.activation(self.expansion(x)))  # (B, T, 4D) inside


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + feed_forward(norm(x)), with dropout."""

    def __init__(self, config: dict):
        super().__init__()
        width, epsilon, bias = (config["embedding_dimension"], config["layer_norm_epsilon"],
                                config["bias"])
        self.attention_norm = LayerNorm(width, epsilon, bias)
        self.attention = MultiHeadAttention(
            width, config["number_of_heads"], config["dropout_rate"], config["qkv_bias"], bias
        )
        self.feed_forward_norm = LayerNorm(width, epsilon, bias)
        self.feed_forward = FeedForward(width, config["gelu_approximation"], bias)
        self.residual_dropout = nn.Dropout(config["dropout_rate"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.residual_dropout(self.attention(self.attention_norm(x)))  # (B, T, D)
        return x + self.residual_dropout(self.feed_forward(self.feed_forward_norm(x)))


class GPTModel(nn.Module):
    """Token ids (B, T) in, next-token logits (B, T, V) out (V: padded_vocab_size), or a
    classifier's scores (B, T, output_size) when the config asks for fewer outputs (ch. 6: the
    last token's row classifies the text).

    ``config`` is a dict like ``GPT_CONFIG_124M``; the book's key names (``emb_dim``...) work too.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = validate_config(config)
        config = self.config
        width = config["embedding_dimension"]
        self.token_embedding_table = nn.Embedding(config["padded_vocab_size"], width)
        self.position_embedding_table = nn.Embedding(config["context_length"], width)
        self.dropout_embedding = nn.Dropout(config["dropout_rate"])
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(config) for _ in range(config["number_of_layers"])
        )
        self.layer_norm = LayerNorm(width, config["layer_norm_epsilon"], config["bias"])
        self.output_head = nn.Linear(width, config["output_size"], bias=config["output_bias"])
        self.tie_output_head()

    def tie_output_head(self) -> None:
        """Share the token embedding table with the output head when the config asks for it."""
        if self.config["tie_output_head"]:
            self.output_head.weight = self.token_embedding_table.weight

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        tokens = token_ids.shape[1]  # token_ids: (B, T)
        if tokens > self.config["context_length"]:
            raise ValueError(f"{tokens} tokens exceed the context length of "
                             f"{self.config['context_length']}")
        positions = torch.arange(tokens, device=token_ids.device)  # (T,)
        x = self.token_embedding_table(token_ids) + self.position_embedding_table(positions)
        x = self.dropout_embedding(x)  # (B, T, D)
        for block in self.transformer_blocks:
            x = block(x)  # (B, T, D)
        return self.output_head(self.layer_norm(x))  # (B, T, V) or (B, T, output_size)
