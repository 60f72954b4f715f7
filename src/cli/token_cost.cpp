#include "cli/token_cost.h"

#include "model/weights.h"

namespace shardlm::cli {

namespace {
int64_t matrix_bytes(const WeightMatrix& m) { return m.data ? m.rows * dtype_bytes(m.dtype, m.cols) : 0; }
int64_t matrix_params(const WeightMatrix& m) { return m.data ? m.rows * m.cols : 0; }
}  // namespace

TokenCost token_cost(const ModelFiles& files) {
  ModelWeights w = load_weights(files);  // views only: nothing is read
  TokenCost c;
  for (const auto& L : w.layers) {
    for (const WeightMatrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
      c.layer_bytes += matrix_bytes(*m);
      c.layer_params += matrix_params(*m);
    }
    for (int64_t bytes : {matrix_bytes(L.q) + matrix_bytes(L.k) + matrix_bytes(L.v), matrix_bytes(L.o),
                          matrix_bytes(L.gate) + matrix_bytes(L.up), matrix_bytes(L.down)})
      c.products.push_back(size_t(bytes));
  }
  c.products.push_back(size_t(matrix_bytes(w.lm_head)));
  c.head_bytes = matrix_bytes(w.lm_head);
  c.head_params = matrix_params(w.lm_head);
  c.dtype = std::string(dtype_name(w.layers.at(0).q.dtype));
  return c;
}

}  // namespace shardlm::cli
