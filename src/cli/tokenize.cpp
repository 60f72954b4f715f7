#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "formats/model_files.h"
#include "tokenizer/tokenizer.h"

namespace shardlm::cli {

void add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "Print the token ids of a text (or the text of ids)");
  auto dir = std::make_shared<std::string>();
  auto model = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto ids = std::make_shared<std::string>();
  auto no_special = std::make_shared<bool>(false);
  auto* tok_opt = cmd->add_option("--tokenizer", *dir, "Folder with tokenizer.json");
  auto* model_opt = cmd->add_option("-m,--model", *model, "Or: a model folder or .gguf file (its tokenizer)");
  tok_opt->excludes(model_opt);
  auto* text_opt = cmd->add_option("--text", *text, "Text to encode");
  auto* ids_opt = cmd->add_option("--decode", *ids, "Comma- or space-separated ids to decode instead");
  text_opt->excludes(ids_opt);
  cmd->add_flag("--no-special", *no_special, "Encode special tokens such as <|im_end|> as plain text");
  cmd->callback([=] {
    if (dir->empty() && model->empty()) fail("tokenize: give --tokenizer DIR or --model PATH");
    Tokenizer tok = dir->empty() ? Tokenizer(open_model_files(*model)->tokenizer()) : Tokenizer::from_dir(*dir);
    if (!ids->empty()) {
      std::vector<int32_t> v;
      std::string s = *ids;
      for (char& c : s)
        if (c == ',') c = ' ';
      std::istringstream in(s);
      for (std::string word; in >> word;) {
        try {
          size_t used = 0;
          long long id = std::stoll(word, &used);
          if (used != word.size() || id < 0 || id > INT32_MAX) throw std::invalid_argument(word);
          v.push_back(int32_t(id));
        } catch (const std::exception&) {
          fail("tokenize: '{}' is not a token id", word);
        }
      }
      std::string out = tok.decode(v);
      std::fwrite(out.data(), 1, out.size(), stdout);
      std::fputc('\n', stdout);
      return;
    }
    fmt::print("{}\n", fmt::join(tok.encode(*text, !*no_special), " "));
  });
}

}  // namespace shardlm::cli
