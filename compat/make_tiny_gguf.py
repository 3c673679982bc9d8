"""Write a tiny llama-architecture GGUF model whose output is known: `just compat` serves it with
llama.cpp (through `llama-cpp-python[server]`) so that a real llama.cpp engine streams to the
adapter without downloading any weights.

How it speaks: every attention and feed-forward output matrix is zero, so each layer adds
nothing and the residual stream stays the token's embedding. Embeddings are one-hot: every
"other" token (specials, the 256 byte-fallback tokens) shares basis vector 0, and word k of
SENTENCE has basis vector k + 1. The output matrix maps each basis vector to the token that
should follow it, with a large logit: after any prompt the model says SENTENCE word by word
and then `</s>` (finish "stop"), at any temperature. Runs in `.venv-compat-llama` (gguf, numpy).
"""

from __future__ import annotations

import sys

import gguf
import numpy as np

SENTENCE = "Trio makes structured concurrency feel natural: every task has a parent.".split()
N_EMBD = 64
N_FF = 128
N_LAYER = 2
N_HEAD = 4
N_CTX = 512
LOGIT = 8.0  # x RMS-norm gain of a one-hot vector (sqrt(64) = 8) = 64: nothing else competes


def main(path: str) -> None:
    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>".encode() for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    first_word = len(tokens)
    tokens += [("\u2581" + w).encode() for w in SENTENCE]  # "▁Trio": SentencePiece's space
    types += [gguf.TokenType.NORMAL] * len(SENTENCE)
    n_vocab = len(tokens)
    assert len(SENTENCE) + 1 <= N_EMBD

    basis = np.zeros(n_vocab, dtype=np.int64)  # the embedding's basis vector, per token
    basis[first_word:] = np.arange(1, len(SENTENCE) + 1)
    embd = np.zeros((n_vocab, N_EMBD), dtype=np.float32)
    embd[np.arange(n_vocab), basis] = 1.0
    output = np.zeros((n_vocab, N_EMBD), dtype=np.float32)
    output[first_word, 0] = LOGIT  # after anything else: the first word
    for k in range(1, len(SENTENCE)):
        output[first_word + k, k] = LOGIT  # after word k (basis k): word k + 1
    output[2, len(SENTENCE)] = LOGIT  # after the last word: </s>

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("oai-adapter-compat-tiny")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )

    ones = np.ones(N_EMBD, dtype=np.float32)
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", output)
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", np.zeros((N_EMBD, N_EMBD), np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", np.zeros((N_FF, N_EMBD), np.float32))
        w.add_tensor(f"blk.{i}.ffn_up.weight", np.zeros((N_FF, N_EMBD), np.float32))
        w.add_tensor(f"blk.{i}.ffn_down.weight", np.zeros((N_EMBD, N_FF), np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])
