"""A tiny random Llama written as a Hugging Face directory, for exact parity tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def byte_tokenizer_json(path: Path) -> None:
    """The byte-level tokenizer (ids 0/1 = <s>/</s>) saved as an HF tokenizer directory."""
    from podserve.model.byte_tokenizer import byte_level_backend

    byte_level_backend().save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False,
                    "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"})
    )


def write_tiny_llama(path: Path, *, seed: int = 0, qwen2: bool = False, tie: bool = False, **overrides):
    """Save a random transformers Llama (or Qwen2) plus a byte tokenizer; return the HF model."""
    import transformers

    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=258, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
        rms_norm_eps=1e-5, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1,
    )
    kwargs.update(overrides)
    if qwen2:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
    # Weights far from the default init so that real differences show up in the tokens.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.15)
    model.eval()
    model.save_pretrained(path)
    byte_tokenizer_json(path)
    return model


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Reference greedy continuation, one prompt at a time (no padding effects)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=0, eos_token_id=None,
        )
    return out[0, len(prompt_ids):].tolist()
