// Each subcommand lives in its own file and registers its flags and its action on the app.
#pragma once
#include <CLI/CLI.hpp>

namespace shardlm::cli {

void add_make_model(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_generate(CLI::App& app);
void add_bench(CLI::App& app);
void add_inspect(CLI::App& app);
void add_convert(CLI::App& app);
void add_plan(CLI::App& app);
void add_worker(CLI::App& app);
void add_rank(CLI::App& app);

}  // namespace shardlm::cli
