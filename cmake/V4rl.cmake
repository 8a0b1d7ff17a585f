# Helpers every folder's CMakeLists.txt uses, so targets get the same flags and layout.
#
#   v4rl_library(NAME SRCS a.cc b.cc [CUDA_SRCS k.cu] DEPS other_lib ...)
#     -> static library v4rl_NAME, includes rooted at the repository (#include "core/tensor.h").
#   v4rl_test(NAME SRCS t.cc DEPS lib ... [LABELS integration|gpu|slow] [TIMEOUT s])
#     -> gtest executable NAME registered with ctest under LABELS.

set(V4RL_WARNINGS -Wall -Wextra -Werror=unused-result -Wno-unused-parameter)

function(v4rl_apply_flags target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${V4RL_WARNINGS}>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall --expt-relaxed-constexpr>)
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/generated)
endfunction()

function(v4rl_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;CUDA_SRCS;DEPS" ${ARGN})
  set(srcs ${ARG_SRCS})
  if(V4RL_WITH_CUDA)
    list(APPEND srcs ${ARG_CUDA_SRCS})
  endif()
  add_library(v4rl_${name} STATIC ${srcs})
  v4rl_apply_flags(v4rl_${name})
  target_link_libraries(v4rl_${name} PUBLIC ${ARG_DEPS})
endfunction()

function(v4rl_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  v4rl_apply_flags(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} v4rl_testing GTest::gtest GTest::gmock GTest::gtest_main)
  add_test(NAME ${name} COMMAND ${name})
  set(timeout 300)
  if(ARG_TIMEOUT)
    set(timeout ${ARG_TIMEOUT})
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${timeout}
    ENVIRONMENT "V4RL_SOURCE_DIR=${PROJECT_SOURCE_DIR};V4RL_BINARY_DIR=${PROJECT_BINARY_DIR}")
  if(ARG_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()

function(v4rl_bench name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  v4rl_apply_flags(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} benchmark::benchmark)
endfunction()
