# selfspec build.
#   make            build bin/selfspec (release, -O3 -march=native)
#   make run        set-up + build + generate a reply on the default model
#   make check      release build + the fast unit tests (about a minute)
#   make test       everything: layering check, unit tests (ASan+UBSan build),
#                   the exactness tests again for a CPU without AVX-512
#                   (-march=x86-64-v3), fixture checks, e2e tests; no set-up
#   make fuzz       build the libFuzzer targets (clang) into $(BUILD)/fuzz/
#   make setup      install dependencies and fetch the default model
#   make layers     check that no file includes a header of a higher layer
#   make WERROR=    any target with warnings kept but not fatal (another gcc)
#
# The library is common/<layer>/ (see ARCHITECTURE.md); every object tracks
# the headers it really includes (-MMD). BUILD and BIN may be moved, e.g.
# `make BUILD=/tmp/b BIN=/tmp/b/bin` for a second build beside this one.
CC      ?= gcc
COMMA   := ,
ARCH    ?= -march=native
OPT     ?= -O3
BUILD   ?= build
BIN     ?= bin
# Warnings are errors. `make WERROR=` keeps the warnings and drops -Werror
# (C and nvcc's host compiler), for a machine whose gcc warns about more
# (scripts/gpu_check.sh builds so on the GPU machine).
WERROR  ?= -Werror
WARN    := -Wall -Wextra $(WERROR) -Wno-unused-parameter -Wno-format-truncation
DEFS    := -D_GNU_SOURCE
INC     := -Icommon -I$(BUILD)/proto
CFLAGS_BASE := -std=c11 -ffp-contract=fast $(WARN) $(DEFS) $(INC) -fopenmp -pthread -MMD -MP
CFLAGS  := $(CFLAGS_BASE) $(OPT) $(ARCH) -g
TCFLAGS_NOARCH := $(CFLAGS_BASE) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
                  -fno-sanitize-recover=undefined -DSELFSPEC_TEST
TCFLAGS := $(TCFLAGS_NOARCH) $(ARCH)
# The second test build: a CPU without AVX-512 (and so without VNNI).
V3ARCH  := -march=x86-64-v3
LIBS    := -lutf8proc -lcjson -lzmq -lprotobuf-c -lhiredis -lmicrohttpd -lm -lpthread -lrt
# OpenBLAS: only scripts/bench_kernels (its sgemm baseline).
BLAS_LIBS := -lopenblas
MODEL   ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
MODELS  ?= smollm2
QWEN    ?= models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
GEMMA   ?= models/gemma-3-270m-q4_k_m.gguf

LAYERS     := util format kernels model cuda text decode tune ipc api engine serve
COMMON_SRC := $(wildcard $(patsubst %,common/%/*.c,$(LAYERS)))
PROTO_SRC  := $(wildcard proto/*.proto)
PROTO_C    := $(patsubst proto/%.proto,$(BUILD)/proto/%.pb-c.c,$(PROTO_SRC))
PROTO_H    := $(PROTO_C:.c=.h)
LIB_SRC    := $(COMMON_SRC) $(PROTO_C)
# CUDA backend (common/cuda/*.cu): built with nvcc when it is found (PATH,
# else /usr/local/cuda), else common/cuda/stub.c stands in. `make NVCC=`
# forces the stub. The CUDA objects are not sanitized and go into every library.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifneq ($(strip $(NVCC)),)
CUDA_HOME   ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
CUDA_LIBDIR ?= $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/targets/x86_64-linux/lib))
CUDA_ARCH   ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NV_WERROR   := $(if $(strip $(WERROR)),$(COMMA)-Werror)
NVFLAGS     := -O3 -std=c++17 $(CUDA_ARCH) $(DEFS) -Icommon -Xcompiler -Wall,-Wextra,-Wno-unused-parameter$(NV_WERROR) -MMD -MP
LIB_SRC     := $(filter-out common/cuda/stub.c,$(LIB_SRC))
CUDA_OBJ    := $(patsubst %.cu,$(BUILD)/cuda/%.o,$(wildcard common/*/*.cu))
LIBS        += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcublas -lcudart -lstdc++
endif
REL_OBJ    := $(patsubst %.c,$(BUILD)/rel/%.o,$(LIB_SRC)) $(CUDA_OBJ)
TST_OBJ    := $(patsubst %.c,$(BUILD)/tst/%.o,$(LIB_SRC)) $(CUDA_OBJ)
V3_OBJ     := $(patsubst %.c,$(BUILD)/tst-v3/%.o,$(LIB_SRC)) $(CUDA_OBJ)
VERIFIER_OBJ := $(patsubst %.c,$(BUILD)/rel/%.o,$(wildcard verifier/*.c))
DRAFTER_OBJ  := $(patsubst %.c,$(BUILD)/rel/%.o,$(wildcard drafter/*.c))
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(patsubst tests/%.c,$(BUILD)/test/%,$(TEST_SRC))
# The tests that assert "a token's logits do not depend on its block" (and the
# attention kernel's grouping), run a second time from the -march=x86-64-v3
# build.
V3_TESTS   := test_model test_spec test_engine test_attn
V3_BIN     := $(patsubst %,$(BUILD)/test-v3/%,$(V3_TESTS))
E2E_SRC    := $(wildcard tests/e2e_*.c)
E2E_BIN    := $(patsubst tests/%.c,$(BUILD)/e2e/%,$(E2E_SRC))
TEST_SUPPORT := $(filter-out $(TEST_SRC) $(E2E_SRC),$(wildcard tests/*.c))
TEST_SUPPORT_OBJ := $(patsubst %.c,$(BUILD)/tst/%.o,$(TEST_SUPPORT))
TEST_SUPPORT_V3  := $(patsubst %.c,$(BUILD)/tst-v3/%.o,$(TEST_SUPPORT))

.PHONY: all run check test test-qwen test-gemma unit unit-v3 e2e fuzz setup clean bench layers gpu-check-test
all: $(BIN)/selfspec $(BIN)/selfspec-drafter $(BIN)/selfspec-drafter-cuda

setup:
	@MODELS="$(MODELS)" scripts/setup.sh

run: setup all
	$(BIN)/selfspec generate --chat --stats -n 128 -p "Explain in three sentences why the sky is blue."

layers:
	@python3 scripts/check_layers.py

# generated sources are kept (make would delete them as intermediates); the
# .proto.sha256 beside them lets scripts/gpu_check.sh check a carried copy
# on a machine without protoc-c
# (and so are the tests' objects, which make check and make test share)
.SECONDARY:

$(BUILD)/proto/%.pb-c.c $(BUILD)/proto/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/proto
	protoc-c --proto_path=proto --c_out=$(BUILD)/proto $<
	sha256sum $< > $(BUILD)/proto/$*.proto.sha256

# Every C object waits for the generated headers (the first build cannot know
# which files include them); after that -MMD's .d files track real includes.
$(BUILD)/rel/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# tests/ in the release build (make check, e2e): their own headers too
$(BUILD)/rel/tests/%.o: tests/%.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -c $< -o $@

$(BUILD)/tst/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(TCFLAGS) -Itests -c $< -o $@

$(BUILD)/tst-v3/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(TCFLAGS_NOARCH) $(V3ARCH) -Itests -c $< -o $@

# The test-model writers are compiled without FMA contraction, so that a
# tiny model's bytes are the same from every build (release, sanitizer,
# x86-64-v3) and CPU: tests/test_tiny_llama.c checks its models against the
# hashes of the files llama.cpp was run on.
TESTUTIL_FP := $(foreach d,rel tst tst-v3,$(BUILD)/$(d)/tests/testutil_model.o $(BUILD)/$(d)/tests/testutil_gguf.o)
$(TESTUTIL_FP): CFLAGS += -ffp-contract=off
$(TESTUTIL_FP): TCFLAGS += -ffp-contract=off
$(TESTUTIL_FP): TCFLAGS_NOARCH += -ffp-contract=off

$(BUILD)/cuda/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/libselfspec.a: $(REL_OBJ)
	@rm -f $@; ar rcs $@ $^

$(BUILD)/libselfspec-test.a: $(TST_OBJ)
	@rm -f $@; ar rcs $@ $^

$(BUILD)/libselfspec-test-v3.a: $(V3_OBJ)
	@rm -f $@; ar rcs $@ $^

$(BIN)/selfspec: $(VERIFIER_OBJ) $(BUILD)/libselfspec.a
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $^ $(LIBS) -o $@

$(BIN)/selfspec-drafter: $(DRAFTER_OBJ) $(BUILD)/libselfspec.a
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $^ $(LIBS) -o $@

# The same drafter with its GPU path (CUDA IPC; the pipeline on a GPU starts
# it), so that the CPU drafter never loads the CUDA libraries.
$(BUILD)/rel/drafter/drafter-cuda.o: drafter/drafter.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DDRAFTER_CUDA -c $< -o $@

$(BIN)/selfspec-drafter-cuda: $(BUILD)/rel/drafter/drafter-cuda.o $(BUILD)/libselfspec.a
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $^ $(LIBS) -o $@

$(BUILD)/test/%: $(BUILD)/tst/tests/%.o $(TEST_SUPPORT_OBJ) $(BUILD)/libselfspec-test.a
	@mkdir -p $(dir $@)
	$(CC) $(TCFLAGS) $^ $(LIBS) -lcmocka -o $@

$(BUILD)/test-v3/%: $(BUILD)/tst-v3/tests/%.o $(TEST_SUPPORT_V3) $(BUILD)/libselfspec-test-v3.a
	@mkdir -p $(dir $@)
	$(CC) $(TCFLAGS_NOARCH) $(V3ARCH) $^ $(LIBS) -lcmocka -o $@

# ---- test tiers ----
# make check: the release build and the fast unit tests (tiny models made by
#   the tests themselves; no sanitizers, no network, no downloaded model).
# make test:  everything: the layer check, every unit test under ASan/UBSan,
#   the exactness tests again from the x86-64-v3 build, the GPU-check script's
#   own test, llama.cpp fixture checks, end-to-end tests on the real models.
#   It does not run set-up (`make setup`, which .ci/run does first).
# Both run their suites through tests/run_suites.py: each suite's verdict and
# time, then `N passed, N failed`. Unit tests run on one thread: the tiny
# test models gain nothing from two, and a busy machine makes spinning OpenMP
# workers very slow under the sanitizers.
SUITES    := python3 tests/run_suites.py
ONE       := OMP_NUM_THREADS=1
CHECK_TESTS := $(filter-out test_fixtures,$(patsubst tests/%.c,%,$(TEST_SRC)))
CHECK_BIN := $(patsubst %,$(BUILD)/check/%,$(CHECK_TESTS))
CHECK_SUPPORT := $(patsubst %.c,$(BUILD)/rel/%.o,$(TEST_SUPPORT))
CHECK_SEEDS := $(BUILD)/check/fuzz-seeds

$(BUILD)/check/%: $(BUILD)/rel/tests/%.o $(CHECK_SUPPORT) $(BUILD)/libselfspec.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ $(LIBS) -lcmocka -o $@

$(BUILD)/check/make_seeds: $(BUILD)/rel/tests/fuzz/make_seeds.o $(BUILD)/rel/tests/testutil_gguf.o $(BUILD)/libselfspec.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ $(LIBS) -o $@

$(CHECK_SEEDS)/.stamp: $(BUILD)/check/make_seeds
	@rm -rf $(CHECK_SEEDS); mkdir -p $(CHECK_SEEDS)
	$< $(CHECK_SEEDS)
	@touch $@

check: all $(CHECK_BIN) $(CHECK_SEEDS)/.stamp
	@$(SUITES) 'layers=python3 scripts/check_layers.py' \
	    $(foreach t,$(CHECK_BIN),'$(notdir $(t))=$(ONE) SELFSPEC_FUZZ_SEEDS=$(CHECK_SEEDS) $(t)')

# The GGUF fuzz seeds (small valid files of every metadata type, tensors,
# a llama model) are written by tests/fuzz/make_seeds.c at build time, not
# tracked; test_fuzz_corpus replays them with tests/fuzz/corpus/.
SEEDS_DIR := $(BUILD)/fuzz-seeds
$(BUILD)/make_seeds: $(BUILD)/tst/tests/fuzz/make_seeds.o $(BUILD)/tst/tests/testutil_gguf.o $(BUILD)/libselfspec-test.a
	$(CC) $(TCFLAGS) $^ $(LIBS) -o $@

$(SEEDS_DIR)/.stamp: $(BUILD)/make_seeds
	@rm -rf $(SEEDS_DIR); mkdir -p $(SEEDS_DIR)
	$< $(SEEDS_DIR)
	@touch $@

UNIT_SUITES := $(foreach t,$(TEST_BIN),'$(notdir $(t))=$(ONE) SELFSPEC_FUZZ_SEEDS=$(SEEDS_DIR) $(t)') \
               'test_gpu_check.sh=bash tests/test_gpu_check.sh'
# On a CPU without AVX-512 the native unit run already is the x86-64-v3 run.
NATIVE_AVX512 := $(shell $(CC) $(ARCH) -dM -E - </dev/null 2>/dev/null | grep -c __AVX512F__)
ifeq ($(NATIVE_AVX512),0)
V3_NEEDED :=
V3_SUITES := 'x86-64-v3=echo "this CPU has no AVX-512: the unit run above already ran the AVX2 kernels"'
else
V3_NEEDED := $(V3_BIN)
V3_SUITES := $(foreach t,$(V3_BIN),'$(notdir $(t))-v3=$(ONE) $(t)')
endif
E2E_SUITES := $(foreach t,$(E2E_BIN),'$(notdir $(t))=SELFSPEC_MODEL=$(MODEL) $(t)')
# Qwen2.5-Coder-1.5B against llama.cpp (tokens, logits, greedy) and greedy
# self-spec == plain on it. Needs the model (`make setup MODELS="smollm2 qwen"`,
# which .ci/run does); skipped with a message where it was not fetched.
# The logit test runs from the release build (1.5 B weights under ASan are slow).
ifneq ($(wildcard $(QWEN)),)
QWEN_SUITES := 'qwen-tokenizer=SELFSPEC_MODEL=$(QWEN) SELFSPEC_TOKEN_FIXTURE=tests/fixtures/qwen_tokens.json $(BUILD)/test/test_tokenizer' \
               'qwen-logits=SELFSPEC_MODEL=$(QWEN) SELFSPEC_LOGIT_FIXTURE=tests/fixtures/qwen_logits.json $(BUILD)/e2e/test_fixtures' \
               'qwen-selfspec=SELFSPEC_MODEL=$(QWEN) E2E_PROMPTS=2 E2E_EXTREME_PROMPTS=1 E2E_NEW=32 $(BUILD)/e2e/e2e_selfspec'
else
QWEN_SUITES := 'qwen=echo "SKIPPING the Qwen2.5-Coder-1.5B checks: $(QWEN) not fetched (make setup MODELS=\"smollm2 qwen\")"'
endif
# Gemma-3-270M (gemma3: local sliding-window layers, GeGLU, Q5_0 weights)
# against llama.cpp; greedy self-spec == plain on it; batch output (64
# requests at max-seqs 1, 7, 64; plain, auto, self-spec) == generate alone.
ifneq ($(wildcard $(GEMMA)),)
GEMMA_SUITES := 'gemma-tokenizer=SELFSPEC_MODEL=$(GEMMA) SELFSPEC_TOKEN_FIXTURE=tests/fixtures/gemma_tokens.json $(BUILD)/test/test_tokenizer' \
                'gemma-logits=SELFSPEC_MODEL=$(GEMMA) SELFSPEC_LOGIT_FIXTURE=tests/fixtures/gemma_logits.json $(BUILD)/e2e/test_fixtures' \
                'gemma-selfspec=SELFSPEC_MODEL=$(GEMMA) E2E_PROMPTS=2 E2E_EXTREME_PROMPTS=1 E2E_NEW=32 $(BUILD)/e2e/e2e_selfspec' \
                'gemma-batch=python3 tests/test_batch.py --model $(GEMMA)'
else
GEMMA_SUITES := 'gemma=echo "SKIPPING the Gemma-3-270M checks: $(GEMMA) not fetched (make setup MODELS=\"smollm2 qwen gemma3\")"'
endif
PY_SUITES := 'run_e2e.py=python3 tests/run_e2e.py --model $(MODEL)' \
             'test_pipeline.py=SELFSPEC_MODEL=$(MODEL) python3 tests/test_pipeline.py' \
             'test_batch.py=python3 tests/test_batch.py --model $(MODEL)' \
             'test_serve.py=python3 tests/test_serve.py --model $(MODEL)' \
             'test_worker.py=python3 tests/test_worker.py --model $(MODEL)' \
             'test_schema.py=python3 tests/test_schema.py --model $(MODEL)'

# End-to-end checks on the real model: release build, no sanitizers.
$(BUILD)/e2e/%: $(BUILD)/rel/tests/%.o $(BUILD)/rel/tests/oracle.o $(BUILD)/libselfspec.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ $(LIBS) -o $@

$(BUILD)/e2e/test_fixtures: $(BUILD)/rel/tests/test_fixtures.o $(BUILD)/libselfspec.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ $(LIBS) -lcmocka -o $@

test: all $(TEST_BIN) $(SEEDS_DIR)/.stamp $(V3_NEEDED) $(E2E_BIN) $(BUILD)/e2e/test_fixtures $(BUILD)/test/schema_walk
	@$(SUITES) --keep-going 'layers=python3 scripts/check_layers.py' $(UNIT_SUITES) $(V3_SUITES) \
	    $(E2E_SUITES) $(QWEN_SUITES) $(GEMMA_SUITES) $(PY_SUITES)

# Parts of `make test` alone.
unit: $(TEST_BIN) $(SEEDS_DIR)/.stamp
	@$(SUITES) $(UNIT_SUITES)
unit-v3: $(V3_NEEDED)
	@$(SUITES) $(V3_SUITES)
e2e: $(E2E_BIN)
	@$(SUITES) $(E2E_SUITES)
test-qwen: all $(BUILD)/test/test_tokenizer $(BUILD)/e2e/test_fixtures $(BUILD)/e2e/e2e_selfspec
	@$(SUITES) $(QWEN_SUITES)
test-gemma: all $(BUILD)/test/test_tokenizer $(BUILD)/e2e/test_fixtures $(BUILD)/e2e/e2e_selfspec
	@$(SUITES) $(GEMMA_SUITES)
gpu-check-test:
	@$(SUITES) 'test_gpu_check.sh=bash tests/test_gpu_check.sh'

# Each fuzzer links the layers it exercises, nothing above them: the GGUF
# fuzzer util+format, the batch-line fuzzer (fuzz_batchline) util+api, the
# request-body / redis-URL fuzzer (fuzz_oaibody) util+api+serve/redisq, the
# schema fuzzer (fuzz_schema) util+decode/jschema.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_LIB := $(wildcard common/util/*.c common/format/*.c)
FUZZ_API_LIB := $(wildcard common/util/*.c common/api/*.c)
FUZZ_CFLAGS := -std=c11 $(DEFS) -Icommon -g -O1 -fsanitize=fuzzer,address,undefined
fuzz: $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
$(BUILD)/fuzz/%: tests/fuzz/%.c $(FUZZ_LIB)
	@mkdir -p $(BUILD)/fuzz
	clang $(FUZZ_CFLAGS) $< $(FUZZ_LIB) -lm -o $@
$(BUILD)/fuzz/fuzz_batchline: tests/fuzz/fuzz_batchline.c $(FUZZ_API_LIB)
	@mkdir -p $(BUILD)/fuzz
	clang $(FUZZ_CFLAGS) $< $(FUZZ_API_LIB) -lcjson -lm -o $@
# the server's request bodies and the worker's redis URLs: util+api and serve/redisq
$(BUILD)/fuzz/fuzz_oaibody: tests/fuzz/fuzz_oaibody.c $(FUZZ_API_LIB) common/serve/redisq.c
	@mkdir -p $(BUILD)/fuzz
	clang $(FUZZ_CFLAGS) -pthread $< $(FUZZ_API_LIB) common/serve/redisq.c -lcjson -lhiredis -lm -o $@

# Random documents of the JSON matcher, validated by tests/test_schema.py
# with the jsonschema package (sanitizer build).
$(BUILD)/test/schema_walk: $(BUILD)/tst/tests/tools/schema_walk.o $(BUILD)/libselfspec-test.a
	@mkdir -p $(dir $@)
	$(CC) $(TCFLAGS) $^ $(LIBS) -o $@

# the JSON Schema compiler and matcher: util + decode/jschema
$(BUILD)/fuzz/fuzz_schema: tests/fuzz/fuzz_schema.c tests/fuzz/schema_walk.h common/decode/jschema.c $(wildcard common/util/*.c)
	@mkdir -p $(BUILD)/fuzz
	clang $(FUZZ_CFLAGS) -Itests $< common/decode/jschema.c $(wildcard common/util/*.c) -lcjson -lm -o $@

bench: all
	python3 scripts/bench_plain.py

clean:
	rm -rf $(BUILD) $(BIN)

$(BUILD)/bench_kernels: $(BUILD)/rel/scripts/bench_kernels.o $(BUILD)/libselfspec.a
	$(CC) $(CFLAGS) $^ $(LIBS) $(BLAS_LIBS) -o $@

$(BUILD)/bench_verify: $(BUILD)/rel/scripts/bench_verify.o $(BUILD)/libselfspec.a
	$(CC) $(CFLAGS) $^ $(LIBS) -o $@

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
