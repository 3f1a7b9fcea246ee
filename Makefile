# selfspec build.
#   make            build bin/selfspec (release, -O3 -march=native)
#   make run        set-up + build + generate a reply on the default model
#   make test       unit tests (ASan+UBSan build), fixture checks, e2e tests
#   make fuzz       build the libFuzzer targets (clang) into build/fuzz/
#   make setup      install dependencies and fetch the default model
CC      ?= gcc
ARCH    ?= -march=native
OPT     ?= -O3
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter -Wno-format-truncation
DEFS    := -D_GNU_SOURCE
INC     := -Icommon -Ibuild/proto
CFLAGS_BASE := -std=c11 -ffp-contract=fast $(WARN) $(DEFS) $(INC) -fopenmp -pthread
CFLAGS  := $(CFLAGS_BASE) $(OPT) $(ARCH) -g
TCFLAGS := $(CFLAGS_BASE) -O1 $(ARCH) -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -DSELFSPEC_TEST
LIBS    := -lopenblas -lutf8proc -lcjson -lzmq -lprotobuf-c -lm -lpthread -lrt
MODEL   ?= models/SmolLM2-135M-Instruct.Q4_1.gguf

COMMON_SRC := $(wildcard common/*.c)
PROTO_SRC  := $(wildcard proto/*.proto)
PROTO_C    := $(patsubst proto/%.proto,build/proto/%.pb-c.c,$(PROTO_SRC))
PROTO_H    := $(PROTO_C:.c=.h)
LIB_SRC    := $(COMMON_SRC) $(PROTO_C)
# CUDA backend (common/*.cu): built with nvcc when it is found (PATH, else
# /usr/local/cuda), else common/cuda_stub.c stands in. `make NVCC=` forces the
# stub. The CUDA objects are not sanitized and go into both libraries.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifneq ($(strip $(NVCC)),)
CUDA_HOME   ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
CUDA_LIBDIR ?= $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/targets/x86_64-linux/lib))
CUDA_ARCH   ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVFLAGS     := -O3 -std=c++17 $(CUDA_ARCH) $(DEFS) -Icommon -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-Werror
LIB_SRC     := $(filter-out common/cuda_stub.c,$(LIB_SRC))
CUDA_OBJ    := $(patsubst %.cu,build/cuda/%.o,$(wildcard common/*.cu))
LIBS        += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcublas -lcudart -lstdc++
endif
REL_OBJ    := $(patsubst %.c,build/rel/%.o,$(LIB_SRC)) $(CUDA_OBJ)
TST_OBJ    := $(patsubst %.c,build/tst/%.o,$(LIB_SRC)) $(CUDA_OBJ)
VERIFIER_SRC := $(wildcard verifier/*.c)
DRAFTER_SRC  := $(wildcard drafter/*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(patsubst tests/%.c,build/test/%,$(TEST_SRC))
E2E_SRC    := $(wildcard tests/e2e_*.c)
E2E_BIN    := $(patsubst tests/%.c,build/e2e/%,$(E2E_SRC))
TEST_SUPPORT := $(filter-out $(TEST_SRC) $(E2E_SRC),$(wildcard tests/*.c))

.PHONY: all run test unit e2e fuzz setup clean bench
all: bin/selfspec $(if $(DRAFTER_SRC),bin/selfspec-drafter)

setup:
	@scripts/setup.sh

run: setup all
	bin/selfspec generate --chat --stats -n 128 -p "Explain in three sentences why the sky is blue."

# generated sources are kept (make would delete them as intermediates)
.SECONDARY: $(PROTO_C) $(PROTO_H)

build/proto/%.pb-c.c build/proto/%.pb-c.h: proto/%.proto
	@mkdir -p build/proto
	protoc-c --proto_path=proto --c_out=build/proto $<

build/rel/%.o: %.c $(PROTO_H) $(wildcard common/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

build/tst/%.o: %.c $(PROTO_H) $(wildcard common/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(TCFLAGS) -c $< -o $@

build/cuda/%.o: %.cu $(wildcard common/*.h common/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

build/libselfspec.a: $(REL_OBJ)
	@rm -f $@; ar rcs $@ $^

build/libselfspec-test.a: $(TST_OBJ)
	@rm -f $@; ar rcs $@ $^

bin/selfspec: $(VERIFIER_SRC) build/libselfspec.a
	@mkdir -p bin
	$(CC) $(CFLAGS) -Iverifier $(VERIFIER_SRC) build/libselfspec.a $(LIBS) -o $@

bin/selfspec-drafter: $(DRAFTER_SRC) build/libselfspec.a
	@mkdir -p bin
	$(CC) $(CFLAGS) -Idrafter $(DRAFTER_SRC) build/libselfspec.a $(LIBS) -o $@

build/test/%: tests/%.c $(TEST_SUPPORT) build/libselfspec-test.a
	@mkdir -p build/test
	$(CC) $(TCFLAGS) -Itests $< $(TEST_SUPPORT) build/libselfspec-test.a $(LIBS) -lcmocka -o $@

# One thread: the tiny test models gain nothing from two, and a busy machine
# makes spinning OpenMP workers very slow under the sanitizers.
unit: $(TEST_BIN)
	@set -e; for t in $(TEST_BIN); do echo "== $$t"; OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $$t; done

# End-to-end checks on the real model: release build, no sanitizers.
build/e2e/%: tests/%.c build/libselfspec.a
	@mkdir -p build/e2e
	$(CC) $(CFLAGS) $< build/libselfspec.a $(LIBS) -o $@

e2e: $(E2E_BIN)
	@set -e; for t in $(E2E_BIN); do echo "== $$t"; SELFSPEC_MODEL=$(MODEL) $$t; done

test: setup all unit e2e
	python3 tests/run_e2e.py --model $(MODEL)
	SELFSPEC_MODEL=$(MODEL) python3 tests/test_pipeline.py

FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
fuzz: $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
build/fuzz/%: tests/fuzz/%.c $(COMMON_SRC)
	@mkdir -p build/fuzz
	clang -std=c11 $(DEFS) $(INC) -g -O1 -fsanitize=fuzzer,address,undefined $< $(COMMON_SRC) -fopenmp $(LIBS) -o $@

bench: all
	python3 scripts/bench_plain.py

clean:
	rm -rf build bin

build/bench_kernels: scripts/bench_kernels.c build/libselfspec.a
	$(CC) $(CFLAGS) $< build/libselfspec.a $(LIBS) -o $@
