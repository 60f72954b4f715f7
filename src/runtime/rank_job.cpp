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
  return o;
}

}  // namespace shardlm
