"""A tiny Hugging Face Qwen2 folder built here: config, safetensors weights and a local tokenizer.

Nothing is downloaded. The tokenizer is a byte-level BPE trained on a small built-in corpus, with
the Qwen chat special tokens, so the chat template and `<|im_end|>` behave as in the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Enough varied English for a few hundred merges; the tiny model's words come from here.
_CORPUS = """
system user assistant You are a helpful assistant. You are a helpful voice assistant.
Hello! How can I help you today? Good morning. Good evening. Thank you very much.
What is two plus two? Two plus two is four. What is three plus five? Three plus five is eight.
What colour is the sky? The sky is blue. What colour is grass? Grass is green.
What day comes after Monday? Tuesday comes after Monday. Wednesday, Thursday, Friday, Saturday, Sunday.
What can you do? I can answer simple questions about numbers, colours and days.
Yes. No. Maybe. Please speak a little louder. Sorry, I did not catch that.
one two three four five six seven eight nine ten eleven twelve zero hundred
red orange yellow green blue purple black white grey brown pink
The weather is nice today. It is raining. The sun is shining. Let us talk about something else.
Your answer should be coherent, natural, simple, complete.
0 1 2 3 4 5 6 7 8 9 , . ? ! : ; ' " ( ) - \n
"""


def build_tokenizer(vocab_size: int = 600):
    """Train a byte-level BPE tokenizer on the built-in corpus, specials first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()] * 4
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer


def write_tokenizer(folder: Path, vocab_size: int = 600) -> int:
    """Write tokenizer.json and tokenizer_config.json; returns the real vocabulary size."""
    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save(str(folder / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tokenizer.get_vocab_size()


def _silence_unprintable_tokens(model, folder: Path) -> None:
    """Zero the LM-head rows of lone bytes, control characters and padding rows.

    With random weights the best logit is large and positive, so a zero row is never the argmax:
    greedy answers are made of printable word pieces instead of broken UTF-8.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    head = model.lm_head.weight
    for token_id in range(head.shape[0]):
        if token_id >= len(tokenizer):
            head[token_id] = 0.0
            continue
        text = tokenizer.decode([token_id])
        keep = token_id == tokenizer.convert_tokens_to_ids("<|im_end|>") or (
            text and "\ufffd" not in text and text.isprintable() and not text.startswith("<|")
        )
        if not keep:
            head[token_id] = 0.0


def write_tiny_qwen2(
    folder: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random-weight Qwen2 folder (fixed seed) that `transformers` and our runtime both load."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder)
    # Round the embedding table up, as real checkpoints do; the extra rows are never produced.
    vocab_rows = (vocab + 63) // 64 * 64
    config = Qwen2Config(
        vocab_size=vocab_rows,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),
        pad_token_id=SPECIAL_TOKENS.index("<|endoftext|>"),
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2ForCausalLM(config)
        # HF initialises with std 0.02; a larger spread gives the tiny model varied outputs.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() == 2:
                    param.normal_(0.0, 0.15 if "embed" not in name else 1.0)
            _silence_unprintable_tokens(model, folder)
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        torch.random.set_rng_state(generator_state)
    return folder
