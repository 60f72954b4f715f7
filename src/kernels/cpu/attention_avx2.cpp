#define ATTENTION_ISA avx2
#include "kernels/cpu/attention_impl.h"

namespace shardlm::ops::detail {
AttentionKernel attention_kernel_avx2() { return &avx2::run_any; }
}  // namespace shardlm::ops::detail
