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


# ----------------------------------------------------------------------------- toy layers with a known best method
# Each reads a text of D numbers ("0.12 -1.30 ...") as its input vector and has one adaptable layer, mlp.up_proj,
# whose frozen weight is built so that one kind of update is what the task needs (tests/test_method_probe.py).

TOY_DIM = 16


def parse_vectors(texts):
    """Each text's numbers; a text that is not D numbers (the loader's shape probe) reads as zeros."""
    rows = []
    for t in texts:
        try:
            row = [float(v) for v in t.split()]
        except ValueError:
            row = []
        rows.append(row if len(row) == TOY_DIM else [0.0] * TOY_DIM)
    return torch.tensor(rows, dtype=torch.float32)


class ToyLayer(nn.Module):
    def __init__(self, weight, after=None):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.up_proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.mlp.up_proj.weight.data = weight.clone()
        self.after = after

    def forward(self, texts):
        y = self.mlp.up_proj(parse_vectors(texts))
        return (self.after(y) if self.after else y)[:, None, :]


def toy_direction():
    """The input direction the LoRA toy's label depends on."""
    v = torch.zeros(TOY_DIM)
    v[0] = 1.0
    return v


def toy_low_rank():
    """The layer drops the one input direction the label depends on: only an update that reads the input (LoRA) can bring
    it back; a scaling or an adapter acts on the output, where it is gone."""
    v = toy_direction()
    return ToyLayer(torch.eye(TOY_DIM) - torch.outer(v, v))


def toy_scaling():
    """The layer shrinks every output 2.5-fold before a fixed even threshold (softplus(4 (y^2 - 1)) / 4, about
    relu(y^2 - 1)) that the label's evidence (the input's squared norm) must pass on every coordinate: one scaling vector
    (IA3) restores them all; a rank-4 update or a width-4 adapter only a few."""
    return ToyLayer(torch.eye(TOY_DIM) * 0.4, after=lambda y: nn.functional.softplus(4 * (y * y - 1)) / 4)


def toy_rows(kind: str, n: int, seed: int = 0) -> list[dict]:
    """Rows for the toy layers: ``low-rank``: the label is the sign of the input's first coordinate; ``scaling``: whether
    its squared norm is above the median."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, TOY_DIM, generator=g)
    score = x[:, 0] if kind == "low-rank" else (x * x).sum(1)
    labels = (score > score.median()).long().tolist()
    return [{"text": " ".join(f"{v:.3f}" for v in row), "label": y} for row, y in zip(x.tolist(), labels)]


def tiny4():
    """The tiny encoder with four blocks (twice the layers)."""
    return TinyEncoder(blocks=4)


# ----------------------------------------------------------------------------- tiny decoders saved as Hugging Face folders

WORDS = ("the a cat dog bird sees likes eats runs sleeps big small red blue fast slow and then who what "
         "question answer user assistant yes no").split()

CHAT_TEMPLATE = ("{% for m in messages %}{{ '<s>' + m['role'] + ': ' + m['content'] + ' </s>' }}{% endfor %}")


def word_tokenizer():
    """A word-level fast tokenizer made in code (no download): the words above, <unk>, <pad>, <s>, </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", ":", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_decoder(folder, arch: str = "llama"):
    """:func:`tiny_decoder` saved as a Hugging Face folder (weights, config, tokenizer); returns the folder."""
    model, tokenizer = tiny_decoder(arch)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_decoder(arch: str = "llama"):
    """A tiny LLaMA-style decoder (grouped-query attention: k and v narrower than q, biases on), Qwen2 (q/k/v biases, tied
    embeddings) or GPT-2 (fused c_attn, Conv1D) with random weights (seed 0) and the word tokenizer: (model, tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, attention_bias=True, max_position_embeddings=128,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    elif arch == "qwen2":
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(config)
    else:
        raise ValueError(arch)
    return model, tokenizer


def lm_rows(kind: str, n: int, seed: int = 0) -> list[dict]:
    """Rows of a tiny language: subject verb object (the verb decides the object's colour), as text, prompt/completion
    or chat messages."""
    import random

    rng = random.Random(seed)
    subjects, verbs = ["the cat", "a dog", "the bird", "a cat"], ["sees", "likes", "eats"]
    colour = {"sees": "red", "likes": "blue", "eats": "big"}
    rows = []
    for _ in range(n):
        s, v = rng.choice(subjects), rng.choice(verbs)
        obj = f"{colour[v]} {rng.choice(['dog', 'bird', 'cat'])}"
        if kind == "text":
            rows.append({"text": f"{s} {v} the {obj} and then {s} {rng.choice(['runs', 'sleeps'])}"})
        elif kind == "sft":
            rows.append({"prompt": f"question what {s} {v}", "completion": f"answer the {obj}"})
        else:
            rows.append({"messages": [{"role": "user", "content": f"what {s} {v}"}, {"role": "assistant", "content": f"the {obj}"}]})
    return rows


def tiny_llama():
    """A factory (``tiny_models:tiny_llama``): the tiny LLaMA-style decoder and its tokenizer, made in memory."""
    return tiny_decoder("llama")


def tiny_keeps_rng():
    """The tiny encoder built without touching the caller's random state: what a Hugging Face directory's load does, so
    the classifier head drawn after it comes from whatever state the process is in."""
    state = torch.get_rng_state()
    encoder = TinyEncoder()
    torch.set_rng_state(state)
    return encoder
