// The grid `shardlm bench --sweep SPEC` runs. SPEC is "key=v1,v2;key=v1,...", keys:
//   split    1, ppN, tpN, ppNxtpM             (default 1)
//   backend  shm, tcp-ring, tcp-mesh, mpi     (default shm; ignored for split 1)
//   prompt   prompt tokens                    (default 128)
//   gen      generated tokens per request     (default 32)
//   batch    requests run together            (default 1)
//   chunk    prefill chunk, 0 = whole prompt  (default 256)
// e.g. "split=1,pp2,tp2,pp2xtp2;backend=shm,tcp-ring;prompt=512,4096;batch=1,16".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace shardlm::cli {

struct SweepPoint {
  int pp = 1, tp = 1;
  std::string backend = "shm", topology = "ring";
  int64_t prompt = 128, gen = 32, chunk = 256;
  int batch = 1;
  std::string split_name() const;    // "1", "PP2", "TP2", "PP2xTP2"
  std::string backend_name() const;  // "-", "shm", "tcp-ring", ...
};

// All points of the grid, in a stable order (split, backend, prompt, gen, batch, chunk); a split
// of one rank appears once whatever the backends. Throws Error naming a bad key or value.
std::vector<SweepPoint> parse_sweep(const std::string& spec);

}  // namespace shardlm::cli
