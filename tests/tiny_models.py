"""Small torch models built in code, for fast profiling tests (used as module:function factories)."""

import torch
from torch import nn

VOCAB = 64


def encode_chars(texts, length=12):
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    for i, t in enumerate(texts):
        for j, ch in enumerate(t[:length]):
            ids[i, j] = 1 + ord(ch) % (VOCAB - 1)
    return ids


class Block(nn.Module):
    def __init__(self, dim, dropout=0.0):
        super().__init__()
        self.dropout = dropout
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.self_attn, name, nn.Linear(dim, dim))
        self.mlp = nn.Module()
        self.mlp.up_proj = nn.Linear(dim, 2 * dim)
        self.mlp.down_proj = nn.Linear(2 * dim, dim)

    def forward(self, x):
        a = self.self_attn
        q, k, v = a.q_proj(x), a.k_proj(x), a.v_proj(x)
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1)
        att = nn.functional.dropout(att, self.dropout, self.training)  # as Hugging Face's eager attention does
        x = x + a.o_proj(att @ v)
        return x + self.mlp.down_proj(torch.relu(self.mlp.up_proj(x)))


class TinyEncoder(nn.Module):
    def __init__(self, dim=16, blocks=2, dropout=0.0):
        super().__init__()
        torch.manual_seed(1234)
        self.embed = nn.Embedding(VOCAB, dim)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList([Block(dim, dropout) for _ in range(blocks)])

    def forward(self, texts):
        x = self.drop(self.embed(encode_chars(texts)))
        for block in self.layers:
            x = block(x)
        return x


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)

    def forward(self, texts):
        return self.embed(encode_chars(texts)).mean(1)


def tiny():
    return TinyEncoder()


def tiny_dropout():
    """The tiny encoder with dropout 0.2 (an nn.Dropout module and a functional one on the attention weights)."""
    return TinyEncoder(dropout=0.2)


def no_linear():
    return NoLinear()


class TinyGPT2(nn.Module):
    """A GPT-2 built from a config in code (Conv1D layers), fed character ids."""

    def __init__(self):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        torch.manual_seed(0)
        self.gpt2 = GPT2Model(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=16))

    def forward(self, texts):
        return self.gpt2(input_ids=encode_chars(texts)).last_hidden_state


def tiny_gpt2():
    return TinyGPT2()
