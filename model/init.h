// Seeded random initialisation of a V4 model's weights (no checkpoint needed): for training from
// scratch and for tests that build models from a config alone.
//
// Two schemes, both walking VisitParams so every parameter of the config gets a value:
//  - kTransformers: DeepseekV4PreTrainedModel._init_weights (transformers 5.17): matrices, the
//    embedding, the head, routed experts and mHC `fn` ~ N(0, std); RMSNorm weights 1; mHC base 0
//    and scale 1; attention sinks, compressor/indexer `ape` and the router's selection bias 0.
//    One deviation: transformers zeroes tid2eid (real tables come from checkpoints), which would
//    send every token to expert 0 k times; here each row holds k distinct random expert ids.
//  - kExercise: scripts/make_model_fixtures.py's randomize(), which makes every term of the
//    forward matter (non-zero sinks, position biases and mHC bases; sharp attention; varied
//    routing): embedding N(0, 1); head N(0, 1/H); mHC fn N(0, 1/(n·H)), base N(0, 0.5²), scale
//    U(0.5, 1.5); sinks N(0, 1); ape N(0, 0.5²); norms 1 + N(0, 0.1²); routed w1/w3 N(0, 16/H),
//    w2 N(0, 0.25/I); router bias N(0, 0.3²); every other matrix N(0, 1/fan_in).
// Values are a pure function of (config, scheme, seed): parameter i of the VisitParams walk draws
// from core::Rng(seed, i), so the same seed gives the same model on every machine.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "model/config.h"
#include "model/forward.h"
#include "model/weights.h"

namespace v4rl::model {

enum class InitScheme { kTransformers, kExercise };

struct InitOptions {
  InitScheme scheme = InitScheme::kTransformers;
  // Standard deviation of kTransformers' normals (the config's initializer_range).
  // Default: 0.02.
  double std = 0.02;
  uint64_t seed = 0;
  // Also initialise the MTP blocks. Default: true.
  bool include_mtp = true;
};

// Every parameter of `config` (already validated) as an f32 CPU tensor; tid2eid as i32 [V, k].
ModelWeights InitWeights(const ModelConfig& config, const InitOptions& options);

// Model::Create around InitWeights.
Model RandomModel(const ModelConfig& config, const InitOptions& options);

}  // namespace v4rl::model
