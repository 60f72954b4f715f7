# The two commands of the README. Both set up a fresh Debian 12 machine first (apt packages,
# the tokenizer asset), idempotently.
BUILD ?= build
JOBS ?= $(shell nproc)
SHARDLM := $(BUILD)/src/cli/shardlm
DEMO_MODEL ?= models/llama-small-bf16

.PHONY: all deps assets build test test-slow demo clean
all: build

deps:
	@scripts/install-deps

assets: deps
	@scripts/fetch-assets

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Fast suite (CI). Cases labelled "slow" are left out; `make test-slow` runs them.
test: build assets
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE slow --timeout 900

test-slow: build assets
	@cd $(BUILD) && ctest --output-on-failure -L slow --timeout 3600

$(DEMO_MODEL)/config.json: | build assets
	$(SHARDLM) make-model --arch llama --preset small --dtype bf16 --tokenizer assets/qwen3 --seed 1 --out $(DEMO_MODEL)

demo: build assets $(DEMO_MODEL)/config.json
	$(SHARDLM) inspect --model $(DEMO_MODEL)
	$(SHARDLM) generate --model $(DEMO_MODEL) --prompt "The capital of France is" -n 32
	$(SHARDLM) generate --model $(DEMO_MODEL) --prompt "The capital of France is" -n 32 --json

clean:
	rm -rf $(BUILD)
