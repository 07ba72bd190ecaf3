"""Tiny random-weight models built from configs, for tests and examples (no download).

Example:
    >>> model = tiny_model("llama")
    >>> model.n_layers
    2
"""
from __future__ import annotations

import torch

from .model import Model

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "How do I bake bread at home?",
    "Write a poem about the sea and the sky.", "Explain photosynthesis to a child in simple words.",
    "Tell me how to make a cake with chocolate and cream.", "What is the capital of France? Paris!",
    "Numbers like 1234567890 and symbols ,.;:!?'\"()[]{}-_+=*/\\<>@#$%^&|~` appear too.",
]


def tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer with a ChatML template, trained in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, padding_side="left")
    fast.chat_template = CHATML
    return fast


def tiny_config(arch: str, vocab_size: int, n_layers: int = 2):
    """A small transformers config for ``arch`` in llama, qwen2, gemma3, gpt2."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size)
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=n_layers, n_head=4, n_positions=128,
                                    bos_token_id=0, eos_token_id=2, **common)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, **common)
    if arch == "gemma3":
        return AutoConfig.for_model("gemma3_text", head_dim=8, sliding_window=16, query_pre_attn_scalar=8,
                                    layer_types=(["sliding_attention", "full_attention"] * n_layers)[:n_layers],
                                    **kw)
    if arch in ("llama", "qwen2"):
        return AutoConfig.for_model(arch, **kw)
    raise ValueError(f"unknown tiny architecture {arch!r}")


def tiny_model(arch: str = "llama", seed: int = 0, n_layers: int = 2) -> Model:
    """A random-weight ``Model`` of the given architecture (float32, CPU)."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_config(arch, vocab_size=len(tok), n_layers=n_layers)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    return Model(hf, tok, name=f"tiny-{arch}")


def tiny_vit(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, n_layers: int = 2, seed: int = 0):
    """A random-weight ``transformers.ViTModel`` (no download): patch tokens for the binding probes' tests and
    the image example (``interp.data.binding.vit_hidden_states`` reads it).

    Example:
        >>> tiny_vit().config.num_hidden_layers
        2
    """
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, num_hidden_layers=n_layers,
                    num_attention_heads=4, intermediate_size=2 * hidden_size, num_channels=3)
    torch.manual_seed(seed)
    return ViTModel(cfg, add_pooling_layer=False).eval()
