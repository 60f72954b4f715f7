#include "runtime/rank_job.h"

namespace shardlm {

nlohmann::json rank_job(const RankOptions& o) {
  return {{"model", o.model_path},
          {"pp", o.plan.pp},
          {"tp", o.plan.tp},
          {"stage_weights", o.plan.stage_weights},
          {"threads", o.threads},
          {"context", o.max_context},
          {"max_sequences", o.max_sequences},
          {"kv_memory", o.kv_memory},
          {"device", o.device}};
}

RankOptions rank_options_from_job(const nlohmann::json& job, const std::string& from) {
  RankOptions o;
  o.model_path = job_field<std::string>(job, "model", from);
  o.plan.pp = job_field<int>(job, "pp", from);
  o.plan.tp = job_field<int>(job, "tp", from);
  o.plan.stage_weights = job_field<std::vector<double>>(job, "stage_weights", from);
  o.threads = job_field<int>(job, "threads", from);
  o.max_context = job_field<int64_t>(job, "context", from);
  o.max_sequences = job_field<int>(job, "max_sequences", from);
  o.kv_memory = job_field<int64_t>(job, "kv_memory", from);
  o.device = job_field<std::string>(job, "device", from);
  // The numbers come from another process: refuse what no run asks for before acting on them (a
  // pool of a million threads, a negative cache budget). Rank checks the slots and the split.
  if (o.plan.pp < 1 || o.plan.pp > 4096 || o.plan.tp < 1 || o.plan.tp > 4096)
    fail("malformed job from {}: --pp {} --tp {}", from, o.plan.pp, o.plan.tp);
  if (o.threads < 0 || o.threads > 4096) fail("malformed job from {}: {} threads a rank", from, o.threads);
  if (o.max_context < 1 || o.max_context > (int64_t(1) << 31))
    fail("malformed job from {}: a context of {} positions", from, o.max_context);
  if (o.kv_memory < 0) fail("malformed job from {}: a KV cache budget of {} bytes", from, o.kv_memory);
  return o;
}

}  // namespace shardlm
