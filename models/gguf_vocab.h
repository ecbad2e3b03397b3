// The tokenizer metadata of a GGUF file (tokenizer.ggml.*), from the tokenizer a model was
// trained with, as llama.cpp's convert_hf_to_gguf.py writes it:
//   - a sentencepiece tokenizer.model: model "llama", pre "default", pieces, scores and types
//     (unknown 2, control 3, unused 5, byte 6, else normal 1) from the processor, tokens named in
//     tokenizer_config.json's added_tokens_decoder overriding them (control or user-defined 4,
//     score -1000);
//   - a byte-level BPE tokenizer.json (Qwen2/2.5/3, Llama 3): model "gpt2", the vocab strings,
//     merges, added tokens as control (special, or "<|...|>") or user-defined, and the
//     pre-tokenizer llama.cpp implements for the file's split regex ("llama-bpe" for Llama 3's,
//     "qwen2" for Qwen's; another regex is refused: llama.cpp would split text differently);
//   - a Metaspace / byte-fallback BPE tokenizer.json (Llama 2, Mistral): model "llama" (llama.cpp's
//     sentencepiece-style tokenizer). It merges the adjacent pair whose result has the highest score,
//     so each token's score is minus the rank of the first merge that makes it, which gives
//     HF's merge order (the converter's LlamaHfVocab writes -1000 for every token, which merges
//     leftmost-first instead). <0xNN> tokens are bytes, special added tokens control.
// Ids past the tokenizer up to the model's vocab_size are "[PADi]" (unused), as the converter pads.
// Special ids (bos, eos, unk, sep, pad) come from tokenizer_config.json's *_token strings (looked up
// in tokenizer.json's added tokens), then config.json's *_token_id; add_bos/add_eos from the
// tokenizer.json post-processor, then tokenizer_config.json's add_*_token; the chat template from
// tokenizer_config.json's chat_template, else chat_template.jinja, else chat_template.json.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "models/gguf.h"

namespace loom {

struct GgufVocab {
  std::vector<std::pair<std::string, GgufValue>> kv;  // tokenizer.ggml.* and tokenizer.chat_template
  std::string source;                                  // the tokenizer file read, for messages
};

// tokenizer: a tokenizer.json / tokenizer.model file or a folder holding one (a folder's
// tokenizer.model is used when sentencepiece reads it, as the converter does, else tokenizer.json).
// config_json: the model's config.json, or "" (a preset). vocab_size: the model's embedding rows;
// a tokenizer with ids past it is an error naming both.
GgufVocab gguf_vocab(const std::string& tokenizer, const std::string& config_json, int vocab_size,
                     bool llama_arch);

}  // namespace loom
