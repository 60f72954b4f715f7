// libFuzzer target: any bytes given to the GGUF parser give tensors inside the buffer or a
// shardlm::Error, never a crash, an out-of-bounds read (ASan checks) or a runaway allocation;
// the same holds for the hyper-parameter and tokenizer readers on whatever metadata parsed.
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = shardlm::GgufFile::from_memory(data, size, "fuzz.gguf");
    uint64_t sum = 0;
    for (const auto& t : f.tensors()) {
      // Touch the first and last byte of every tensor: ASan flags any view outside the input.
      if (t.nbytes > 0) sum += t.bytes()[0] + t.bytes()[t.nbytes - 1];
      sum += uint64_t(t.numel());
    }
    try {
      shardlm::ModelConfig c = shardlm::gguf_model_config(f);
      sum += uint64_t(c.vocab_size) + c.rope_freq_factors.size();
    } catch (const shardlm::Error&) {
    }
    try {
      shardlm::TokenizerSpec s = shardlm::gguf_tokenizer_spec(f);
      sum += s.vocab.size() + s.merges.size() + s.added_tokens.size();
    } catch (const shardlm::Error&) {
    }
    volatile uint64_t sink = sum;
    (void)sink;
  } catch (const shardlm::Error&) {
  }
  return 0;
}
