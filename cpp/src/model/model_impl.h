// The loaded model behind fusedrnn::Model (shared by Model copies and Streams; immutable).
#pragma once

#include <string>
#include <type_traits>
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

// Issue 19's options of layer w on the regularised kernel's arguments a (LstmLnForwardArgs or
// GruLnForwardArgs), in evaluation (zoneout's expectation, no dropout), as the Python layer
// runs it: Model::forward and Stream alike.
template <typename Scalar, class Args>
void set_regularised(Args& a, const ModelConfig& c, const LayerWeights& w) {
  auto p = [](const void* v) { return static_cast<const Scalar*>(v); };
  a.layer_norm = c.layer_norm, a.ln_eps = Scalar(c.ln_eps);
  a.ln_gamma_ih = p(w.ln_gamma_ih), a.ln_beta_ih = p(w.ln_beta_ih);
  a.ln_gamma_hh = p(w.ln_gamma_hh), a.ln_beta_hh = p(w.ln_beta_hh);
  a.zoneout_h = Scalar(c.zoneout_h);
  if constexpr (std::is_same_v<Args, LstmLnForwardArgs<Scalar>>) {
    a.ln_gamma_c = p(w.ln_gamma_c), a.ln_beta_c = p(w.ln_beta_c);
    a.zoneout_c = Scalar(c.zoneout_c);
    a.w_hr = c.proj_size > 0 ? p(w.w_hr) : nullptr;  // (Dims::P = proj_size in the call)
  }
}

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
