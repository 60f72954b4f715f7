// The attention kernel behind ops::attention, one build per instruction set (attention_impl.h is
// compiled three times); ops.cpp picks the one this CPU runs.
#pragma once
#include "kernels/cpu/ops.h"

namespace shardlm::ops::detail {

// Work item: query rows [row_begin, row_end) of one (segment, local kv head), rows ordered
// token-major over the local query heads that read that kv head.
struct AttentionTask {
  const AttentionSegment* segment;
  int64_t first_token;  // index of the segment's first token in q/out
  int64_t kv_head;      // local
  const int64_t* heads; // local query heads reading it
  int64_t n_heads_here;
  int64_t row_begin, row_end;
};
using AttentionKernel = void (*)(const AttentionTask& task, const float* q, const float* k_pool, const float* v_pool,
                                 const AttentionShape& shape, float* out);
AttentionKernel attention_kernel_scalar();
AttentionKernel attention_kernel_avx2();
AttentionKernel attention_kernel_avx512();

}  // namespace shardlm::ops::detail
