"""GPT-2, written from scratch in the style of *Build a Large Language Model (From Scratch)*, ch. 4.

This file is only the model. Generation's caches and kernels live in ``engine/``; the names
of the model's tensors, for the checkpoint formats, in ``slots.py``.

Shapes in comments: B = batch, T = tokens, D = embedding dimension, H = heads, Dh = D / H,
F = feed-forward width (4D in GPT-2), V = vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import attention_scale, feed_forward_width, validate_config


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
                 qkv_bias: bool, bias: bool = True, scale: float | None = None):
        super().__init__()
        self.number_of_heads = number_of_heads
        self.head_dimension = embedding_dimension // number_of_heads
        self.dropout_rate = dropout_rate
        self.scale = scale  # what the scores are multiplied by; None: 1 / sqrt(head_dimension)
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
            dropout_p=self.dropout_rate if self.training else 0.0, scale=self.scale,
        )  # (B, H, T, Dh)
        return self.output_projection(self.merge_heads(context))  # (B, T, D)


class FastGELU(nn.Module):
    """The tanh GELU written as transformers' ``gelu_fast`` computes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU's sigmoid approximation (transformers' ``quick_gelu``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATION_MODULES = {"gelu_fast": FastGELU, "quick_gelu": QuickGELU, "relu": nn.ReLU,
                      "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "mish": nn.Mish,
                      "relu6": nn.ReLU6, "linear": nn.Identity}


def activation_module(activation: str, gelu_approximation: str) -> nn.Module:
    """The feed-forward's function: GPT-2's GELU (tanh approximation, or the exact erf one), or
    another a config names."""
    if activation == "gelu":
        return nn.GELU(approximate=gelu_approximation)
    return ACTIVATION_MODULES[activation]()


class FeedForward(nn.Module):
    """Two linear layers around a GELU (or the function the config names); the hidden layer is
    4x as wide unless the config says otherwise (F below)."""

    def __init__(self, embedding_dimension: int, gelu_approximation: str = "tanh",
                 bias: bool = True, *, hidden_width: int | None = None,
                 activation: str = "gelu"):
        super().__init__()
        hidden_width = hidden_width or 4 * embedding_dimension
        self.expansion = nn.Linear(embedding_dimension, hidden_width, bias=bias)
        self.activation = activation_module(activation, gelu_approximation)
        self.contraction = nn.Linear(hidden_width, embedding_dimension, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contraction(self.activation(self.expansion(x)))  # (B, T, F) inside


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + feed_forward(norm(x)), with dropout."""

    def __init__(self, config: dict, layer: int = 0):
        super().__init__()
        width, epsilon, bias = (config["embedding_dimension"], config["layer_norm_epsilon"],
                                config["bias"])
        self.attention_norm = LayerNorm(width, epsilon, bias)
        self.attention = MultiHeadAttention(
            width, config["number_of_heads"], config["dropout_rate"], config["qkv_bias"], bias,
            scale=attention_scale(config, layer),
        )
        self.feed_forward_norm = LayerNorm(width, epsilon, bias)
        self.feed_forward = FeedForward(width, config["gelu_approximation"], bias,
                                        hidden_width=feed_forward_width(config),
                                        activation=config["activation"])
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
            TransformerBlock(config, layer) for layer in range(config["number_of_layers"])
        )
        self.layer_norm = LayerNorm(width, config["layer_norm_epsilon"], config["bias"])
        self.output_head = nn.Linear(width, config["output_size"], bias=config["output_bias"])
        if config["choice_outputs"]:  # transformers' double-heads model: a choice's score
            self.choice_head = nn.Linear(width, config["choice_outputs"])
        self.tie_output_head()

    def tie_output_head(self) -> None:
        """Share the token embedding table with the output head when the config asks for it."""
        if self.config["tie_output_head"]:
            self.output_head.weight = self.token_embedding_table.weight

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.output_head(self.hidden_states(token_ids))  # (B, T, V) or (B, T, O)

    def choice_scores(self, token_ids: torch.Tensor) -> torch.Tensor:
        """A multiple-choice head's scores (B, choice_outputs): each row of ``token_ids`` is one
        choice, scored at its last token (transformers' ``mc_logits`` without ``mc_token_ids``)."""
        return self.choices_from(self.hidden_states(token_ids))

    def choices_from(self, hidden: torch.Tensor) -> torch.Tensor:
        """``choice_scores`` from ``hidden_states``' output (B, T, D)."""
        scores = self.choice_head(hidden[:, -1])  # (B, K)
        return scores.tanh() if self.config["choice_activation"] == "tanh" else scores

    def hidden_states(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The final layer norm's output (B, T, D), which the heads read."""
        tokens = token_ids.shape[1]  # token_ids: (B, T)
        if tokens > self.config["context_length"]:
            raise ValueError(f"{tokens} tokens exceed the context length of "
                             f"{self.config['context_length']}")
        positions = torch.arange(tokens, device=token_ids.device)  # (T,)
        x = self.token_embedding_table(token_ids) + self.position_embedding_table(positions)
        x = self.dropout_embedding(x)  # (B, T, D)
        for block in self.transformer_blocks:
            x = block(x)  # (B, T, D)
        return self.layer_norm(x)
