#define ATTENTION_ISA avx512
#include "kernels/cpu/attention_impl.h"

namespace shardlm::ops::detail {
AttentionKernel attention_kernel_avx512() { return &avx512::run_any; }
}  // namespace shardlm::ops::detail
