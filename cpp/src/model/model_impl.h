// The loaded model behind fusedrnn::Model (shared by Model copies and Streams; immutable).
#pragma once

#include <string>
#include <vector>

#include "fusedrnn/model.h"
#include "internal.h"
#include "isa/table.h"

namespace fusedrnn {
namespace detail {

// One layer and direction: pointers into ModelImpl::storage (Scalar = the model's dtype).
struct LayerWeights {
  std::int64_t C = 0;  // input width of the layer
  const void* w_ih = nullptr;
  const void* w_hh = nullptr;
  const void* b_ih = nullptr;  // nullable (bias = false)
  const void* b_hh = nullptr;
  const void* w_hr = nullptr;  // LSTM projection, else null
  const void* w_peep = nullptr;  // LSTM peepholes, else null
  // Layer norm (ModelConfig::layer_norm), else null: gains and biases of the input and
  // recurrent products [G*H] (the biases with tfa only) and of the LSTM's cell [H].
  const void *ln_gamma_ih = nullptr, *ln_beta_ih = nullptr, *ln_gamma_hh = nullptr,
             *ln_beta_hh = nullptr, *ln_gamma_c = nullptr, *ln_beta_c = nullptr;
};

struct ModelImpl {
  ModelConfig config;
  std::string config_json;
  std::string metadata_json = "{}";
  JsonValue metadata;
  std::string fusedrnn_version;
  std::vector<Parameter> params;
  internal::AlignedArray<unsigned char> storage;  // every parameter, 64-byte aligned each
  std::vector<LayerWeights> layers;               // index layer * D + direction
  const void* embed = nullptr;                    // [vocab_size, embed_dim]
  const void* head_w = nullptr;                   // [output_size, D*R]
  const void* head_b = nullptr;                   // [output_size]
  // head_w packed for the active instruction set (isa::Kernels::pack), model dtype.
  internal::AlignedArray<unsigned char> head_packed;
};

}  // namespace detail
}  // namespace fusedrnn
