# loom — every build goes through this file.
#   make              build/train and the tools (build/score, build/tokenize, build/prepare, ...)
#   make test         build and run every GoogleTest suite; ends with "N passed, N failed, N skipped"
#   make benchmark    the sft-alpaca workload of ../shared/docs/BENCHMARK.md (needs a GPU)
#   make GPU_ARCH=80  build the CUDA code for another architecture (80, 86, 89, 90, 100, 120)
#   make SANITIZE=address,undefined test
#                     everything built with those sanitizers into build-san-address-undefined/, and
#                     the suite run there (tools/sanitize_test.sh: any sanitizer report fails it)
#   make fuzz         libFuzzer targets for the readers of user files (tests/fuzz/), each run for
#                     FUZZ_SECONDS (default 60); fails when one finds a crash. Needs clang.
# Sources are found by folder: every .cpp/.cu in engine/ ops/ models/ dist/ data/ goes into
# build/libloom.a, except *_main.cpp files, each of which becomes build/<name>.

comma := ,
GPU_ARCH    ?= 90
SANITIZE    ?=
# A sanitizer build never mixes its objects with a plain one: each set of sanitizers has its folder.
BUILD       ?= $(if $(SANITIZE),build-san-$(subst $(comma),-,$(SANITIZE)),build)
CUDA_HOME   ?= /usr/local/cuda
DEPS_PREFIX ?=
CXX         ?= g++
NVCC        ?= $(CUDA_HOME)/bin/nvcc
export DEPS_PREFIX CUDA_HOME

VALID_ARCH := 80 86 89 90 100 120
ifeq ($(filter $(GPU_ARCH),$(VALID_ARCH)),)
$(error GPU_ARCH=$(GPU_ARCH) is not supported; use one of: $(VALID_ARCH))
endif

MPI_CFLAGS := $(shell mpicxx --showme:compile 2>/dev/null)
MPI_LIBS   := $(shell mpicxx --showme:link 2>/dev/null)
NCCL_LIBDIR := $(firstword $(wildcard $(CUDA_HOME)/lib $(CUDA_HOME)/targets/x86_64-linux/lib))
EXTRA_INC  := $(if $(DEPS_PREFIX),-I$(DEPS_PREFIX)/usr/include)
EXTRA_LIB  := $(if $(DEPS_PREFIX),-L$(DEPS_PREFIX)/usr/lib/x86_64-linux-gnu)

INCLUDES := -I. -I$(CUDA_HOME)/include $(EXTRA_INC) $(MPI_CFLAGS)
CXXFLAGS += -std=c++17 -O2 -g -fopenmp -Wall -Wextra -Wno-unused-parameter -MMD -MP $(INCLUDES)
# Hopper builds target sm_90a, the architecture-specific set with the warpgroup MMAs (wgmma) the
# Hopper attention kernels use (ops/wgmma.cuh); such a binary runs on sm_90 GPUs only, as any
# GPU_ARCH=90 build is meant to. LOOM_GPU_ARCH tells host code which kernels exist.
GPU_CODE  := $(if $(filter 90,$(GPU_ARCH)),90a,$(GPU_ARCH))
NVCCFLAGS := -std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -DLOOM_GPU_ARCH=$(GPU_ARCH) \
             -gencode arch=compute_$(GPU_CODE),code=sm_$(GPU_CODE) \
             -Xcompiler -fopenmp,-Wall,-Wno-unused-parameter -MMD -MP $(INCLUDES)
LDLIBS := -L$(CUDA_HOME)/lib64 $(if $(NCCL_LIBDIR),-L$(NCCL_LIBDIR) -Wl$(comma)-rpath$(comma)$(NCCL_LIBDIR)) \
          -Wl,-rpath,$(CUDA_HOME)/lib64 $(EXTRA_LIB) \
          -lyaml-cpp -lsentencepiece -l:libpcre2-8.a -l:libutf8proc.a \
          -lcublasLt -lcublas -lcudart -lnccl $(MPI_LIBS) -fopenmp -lpthread -ldl
# Sanitizers instrument the host code of .cu files too (nvcc hands each flag to the host compiler;
# one -Xcompiler per sanitizer, as -Xcompiler splits its argument at commas).
ifneq ($(SANITIZE),)
CXXFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
NVCCFLAGS += $(foreach s,$(subst $(comma), ,$(SANITIZE)),-Xcompiler -fsanitize=$(s)) -Xcompiler -fno-omit-frame-pointer
LDLIBS    += -fsanitize=$(SANITIZE)
endif
LIB_DIRS  := engine ops models dist data
LIB_CPP   := $(filter-out %_main.cpp,$(wildcard $(addsuffix /*.cpp,$(LIB_DIRS))))
LIB_CU    := $(wildcard $(addsuffix /*.cu,$(LIB_DIRS)))
MAIN_SRC  := $(wildcard engine/*_main.cpp tools/*_main.cpp)
TEST_SRC  := $(wildcard tests/*.cpp tests/*.cu)

obj = $(patsubst %,$(BUILD)/obj/%.o,$(1))
LIB_OBJ   := $(call obj,$(LIB_CPP) $(LIB_CU))
MAIN_OBJ  := $(call obj,$(MAIN_SRC))
TEST_OBJ  := $(call obj,$(TEST_SRC))
BINS      := $(patsubst %_main.cpp,$(BUILD)/%,$(notdir $(MAIN_SRC)))
LIB       := $(BUILD)/libloom.a
DEPS_OK   := $(BUILD)/.deps_ok

.PHONY: all test unit benchmark clean deps fuzz
all: $(BINS)

deps: $(DEPS_OK)
$(DEPS_OK): tools/check_deps.sh
	@bash tools/check_deps.sh
	@mkdir -p $(@D) && touch $@

$(BUILD)/obj/%.cpp.o: %.cpp | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu | $(DEPS_OK)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# Each binary is its *_main.cpp linked against the library.
define main_rule
$(BUILD)/$(patsubst %_main.cpp,%,$(notdir $(1))): $(call obj,$(1)) $(LIB)
	$(CXX) -o $$@ $$^ $(LDLIBS)
endef
$(foreach m,$(MAIN_SRC),$(eval $(call main_rule,$(m))))

$(BUILD)/loom_tests: $(TEST_OBJ) $(LIB)
	$(CXX) -o $@ $^ -L/usr/lib/x86_64-linux-gnu -lgtest $(LDLIBS)

# Tests read ../shared (tokenizers) and tests/fixtures; they run from the repository root.
# A sanitizer build runs them from a copy of the root whose build/ is $(BUILD), so that the programs
# the tests start (build/train, build/score, ...) are the sanitized ones too.
ifeq ($(SANITIZE),)
test: $(BUILD)/loom_tests $(BINS)
	@$(BUILD)/loom_tests
else
test: $(BUILD)/loom_tests $(BINS)
	@bash tools/sanitize_test.sh $(BUILD)
endif

# One suite alone, linked only against the sources it names (works while other folders are mid-change):
#   make unit T=config SRCS="engine/config.cpp ops/error.cpp"   -> runs build/unit/config
# T picks tests/$(T)_test.cpp and/or tests/$(T)_test.cu.
UNIT_TESTS = $(wildcard tests/$(T)_test.cpp tests/$(T)_test.cu)
unit: | $(DEPS_OK)
	@test -n "$(T)" || { echo "usage: make unit T=<suite> SRCS=\"<sources>\""; exit 2; }
	@$(MAKE) --no-print-directory $(BUILD)/unit/$(T) UNIT_OBJ="$(call obj,tests/main.cpp $(UNIT_TESTS) $(SRCS))"
	@$(BUILD)/unit/$(T)
$(BUILD)/unit/%: $(UNIT_OBJ)
	@mkdir -p $(@D)
	$(CXX) -o $@ $(UNIT_OBJ) -L/usr/lib/x86_64-linux-gnu -lgtest $(LDLIBS)

benchmark: $(BINS)
	@bash tools/benchmark.sh

clean:
	rm -rf $(BUILD)

# ---------------------------------------------------------------- fuzzing
# One libFuzzer target per reader of user files (tests/fuzz/<name>_fuzz.cpp), built with clang,
# ASan and UBSan into $(BUILD)/fuzz/<name>. The CPU sources readers are made of go into an archive,
# so the linker takes into each target only the objects its reader needs (no CUDA anywhere).
# tests/fuzz/run.sh makes the seed corpora from the repository's files and runs each target for
# FUZZ_SECONDS; a crash's input lands in $(BUILD)/fuzz/findings/, and the corpora grow across runs
# in $(BUILD)/fuzz/corpus/.   make fuzz FUZZ_SECONDS=300 FUZZ_TARGETS="tokenizer jsonl"
FUZZ_CXX      ?= clang++
FUZZ_SECONDS  ?= 60
FUZZ_TARGETS  ?= safetensors model_config tokenizer train_config jsonl
FUZZ_DIR      := $(BUILD)/fuzz
FUZZ_SAN      := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CXXFLAGS := -std=c++17 -O1 -g -fno-omit-frame-pointer -Wall -Wno-unknown-pragmas -MMD -MP $(FUZZ_SAN) $(INCLUDES)
FUZZ_LDLIBS   := $(EXTRA_LIB) -lyaml-cpp -lsentencepiece -l:libpcre2-8.a -l:libutf8proc.a -lpthread
FUZZ_CPU_SRC  := ops/error.cpp ops/files.cpp $(wildcard data/*.cpp) models/safetensors.cpp models/model_config.cpp \
                 engine/config.cpp
FUZZ_CPU_LIB  := $(FUZZ_DIR)/libloom_cpu.a
fuzz_obj = $(patsubst %,$(FUZZ_DIR)/obj/%.o,$(1))

fuzz: $(addprefix $(FUZZ_DIR)/,$(FUZZ_TARGETS))
	@bash tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# libFuzzer comes with clang's runtime libraries, a package of its own on Debian.
$(FUZZ_DIR)/.toolchain_ok:
	@command -v $(FUZZ_CXX) >/dev/null && test -e "$$($(FUZZ_CXX) -print-resource-dir)/lib/linux/libclang_rt.fuzzer-x86_64.a" || \
	  { echo "make fuzz needs clang and libFuzzer; on Debian 12: apt-get install clang libclang-rt-14-dev"; exit 1; }
	@mkdir -p $(@D) && touch $@

$(FUZZ_DIR)/obj/%.cpp.o: %.cpp | $(DEPS_OK) $(FUZZ_DIR)/.toolchain_ok
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_CPU_LIB): $(call fuzz_obj,$(FUZZ_CPU_SRC))
	@rm -f $@
	ar rcs $@ $^

define fuzz_rule
$(FUZZ_DIR)/$(1): $(call fuzz_obj,tests/fuzz/$(1)_fuzz.cpp tests/fuzz/fuzz_util.cpp) $(FUZZ_CPU_LIB)
	$(FUZZ_CXX) -o $$@ $$^ -fsanitize=fuzzer $(FUZZ_SAN) $(FUZZ_LDLIBS)
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call fuzz_rule,$(t))))
-include $(wildcard $(FUZZ_DIR)/obj/*/*.d $(FUZZ_DIR)/obj/*/*/*.d)

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(MAIN_OBJ:.o=.d)
