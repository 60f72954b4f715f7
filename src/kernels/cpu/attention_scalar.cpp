#define ATTENTION_ISA scalar
#include "kernels/cpu/attention_impl.h"

namespace shardlm::ops::detail {
AttentionKernel attention_kernel_scalar() { return &scalar::run_any; }
}  // namespace shardlm::ops::detail
