// Test helper: writes fusedrnn checkpoints (the safetensors layout of fusedrnn.io.save) from C++
// with random weights, so the C++ tests, the fuzz loop and the latency benchmark need no Python.
// Little-endian hosts only (the writer copies native bytes).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace testutil {

struct Tensor {
  std::string name;
  std::string dtype;  // "F32", "F64", "I64"
  std::vector<std::int64_t> shape;
  std::vector<unsigned char> bytes;
};

inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// 8-byte length, JSON header padded with spaces to a multiple of 8, data in tensor order.
inline std::vector<unsigned char> write_safetensors(
    const std::vector<Tensor>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    for (std::size_t i = 0; i < metadata.size(); ++i)
      h += (i ? "," : "") + json_string(metadata[i].first) + ":" + json_string(metadata[i].second);
    h += "}";
    first = false;
  }
  std::size_t off = 0;
  for (const Tensor& t : tensors) {
    h += first ? "" : ",";
    first = false;
    h += json_string(t.name) + ":{\"dtype\":\"" + t.dtype + "\",\"shape\":[";
    for (std::size_t i = 0; i < t.shape.size(); ++i)
      h += (i ? "," : "") + std::to_string(t.shape[i]);
    h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + t.bytes.size()) +
         "]}";
    off += t.bytes.size();
  }
  h += "}";
  while (h.size() % 8) h += ' ';
  std::vector<unsigned char> out(8 + h.size() + off);
  const std::uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[std::size_t(i)] = static_cast<unsigned char>(n >> (8 * i));
  std::memcpy(out.data() + 8, h.data(), h.size());
  std::size_t at = 8 + h.size();
  for (const Tensor& t : tensors) {
    if (!t.bytes.empty()) std::memcpy(out.data() + at, t.bytes.data(), t.bytes.size());
    at += t.bytes.size();
  }
  return out;
}

template <typename Scalar>
Tensor make_tensor(const std::string& name, std::vector<std::int64_t> shape,
                   const std::vector<Scalar>& v) {
  Tensor t;
  t.name = name;
  t.dtype = sizeof(Scalar) == 4 ? "F32" : "F64";
  t.shape = std::move(shape);
  t.bytes.resize(v.size() * sizeof(Scalar));
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

// A model description: RecurrentModel (bare = false) or a bare LSTM/GRU/RNN layer.
struct Spec {
  std::string cell = "lstm";  // lstm, gru, rnn
  bool bare = false;
  bool tokens = false;
  std::int64_t input_size = 5, vocab_size = 11, embed_dim = 4;
  std::int64_t hidden_size = 6, num_layers = 1, output_size = 3, proj_size = 0;
  bool bidirectional = false, peepholes = false, bias = true;
  std::string variant = "reset_after", nonlinearity = "tanh";
  bool float64 = false;

  std::int64_t gates() const { return cell == "lstm" ? 4 : cell == "gru" ? 3 : 1; }
  std::int64_t R() const { return proj_size ? proj_size : hidden_size; }
  std::int64_t D() const { return bidirectional ? 2 : 1; }
  std::string name() const {
    std::string s = (bare ? "bare-" : "") + cell;
    if (cell == "gru") s += "-" + variant;
    if (cell == "rnn") s += "-" + nonlinearity;
    s += tokens ? "-tok" : "-dense";
    s += "-L" + std::to_string(num_layers) + (bidirectional ? "-bi" : "");
    if (proj_size) s += "-proj" + std::to_string(proj_size);
    if (peepholes) s += "-peep";
    if (!bias) s += "-nobias";
    return s + (float64 ? "-f64" : "-f32");
  }
};

inline std::string config_json(const Spec& s) {
  const std::string dt = s.float64 ? "\"float64\"" : "\"float32\"";
  const std::string b = s.bidirectional ? "true" : "false";
  if (s.bare) {
    std::string t = s.cell == "lstm" ? "LSTM" : s.cell == "gru" ? "GRU" : "RNN";
    std::string c = "{\"type\":\"" + t + "\",\"input_size\":" + std::to_string(s.input_size) +
                    ",\"hidden_size\":" + std::to_string(s.hidden_size) +
                    ",\"num_layers\":" + std::to_string(s.num_layers) +
                    ",\"bias\":" + (s.bias ? "true" : "false") +
                    ",\"batch_first\":false,\"dropout\":0.0,\"bidirectional\":" + b;
    if (s.cell == "lstm")
      c += ",\"proj_size\":" + std::to_string(s.proj_size) +
           ",\"peepholes\":" + (s.peepholes ? "true" : "false") + ",\"forget_bias\":0.0";
    if (s.cell == "gru") c += ",\"variant\":\"" + s.variant + "\"";
    if (s.cell == "rnn") c += ",\"nonlinearity\":\"" + s.nonlinearity + "\"";
    return c + ",\"init\":\"pytorch\",\"dtype\":" + dt + ",\"seed\":0}";
  }
  return "{\"type\":\"RecurrentModel\",\"cell\":\"" + s.cell + "\",\"input_size\":" +
         (s.tokens ? "null" : std::to_string(s.input_size)) +
         ",\"vocab_size\":" + (s.tokens ? std::to_string(s.vocab_size) : "null") +
         ",\"embed_dim\":" + (s.tokens ? std::to_string(s.embed_dim) : "null") +
         ",\"hidden_size\":" + std::to_string(s.hidden_size) +
         ",\"num_layers\":" + std::to_string(s.num_layers) + ",\"bidirectional\":" + b +
         ",\"dropout\":0.0,\"output_size\":" + std::to_string(s.output_size) +
         ",\"proj_size\":" + std::to_string(s.proj_size) +
         ",\"peepholes\":" + (s.peepholes ? "true" : "false") +
         ",\"forget_bias\":0.0,\"variant\":\"" + s.variant + "\",\"nonlinearity\":\"" +
         s.nonlinearity + "\",\"init\":\"pytorch\",\"dtype\":" + dt + ",\"seed\":null}";
}

template <typename Scalar>
std::vector<Scalar> uniform(std::mt19937_64& rng, std::size_t n, double scale) {
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<Scalar> v(n);
  for (Scalar& e : v) e = Scalar(u(rng));
  return v;
}

template <typename Scalar>
std::vector<Tensor> model_tensors(const Spec& s, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const double k = 1.0 / std::sqrt(double(s.hidden_size));
  std::vector<Tensor> t;
  const std::int64_t G = s.gates(), H = s.hidden_size, R = s.R(), D = s.D();
  const std::string pre = s.bare ? "" : "rnn.";
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, double scale) {
    std::size_t n = 1;
    for (auto d : shape) n *= std::size_t(d);
    t.push_back(make_tensor<Scalar>(name, shape, uniform<Scalar>(rng, n, scale)));
  };
  if (!s.bare && s.tokens) add("embed.weight", {s.vocab_size, s.embed_dim}, 1.0);
  for (std::int64_t l = 0; l < s.num_layers; ++l)
    for (std::int64_t d = 0; d < D; ++d) {
      const std::string sfx = "_l" + std::to_string(l) + (d ? "_reverse" : "");
      const std::int64_t C = l ? D * R : (!s.bare && s.tokens ? s.embed_dim : s.input_size);
      add(pre + "weight_ih" + sfx, {G * H, C}, k);
      add(pre + "weight_hh" + sfx, {G * H, R}, k);
      if (s.bias) {
        add(pre + "bias_ih" + sfx, {G * H}, k);
        add(pre + "bias_hh" + sfx, {G * H}, k);
      }
      if (s.proj_size) add(pre + "weight_hr" + sfx, {s.proj_size, H}, k);
      if (s.peepholes) add(pre + "weight_peep" + sfx, {3, H}, k);
    }
  if (!s.bare) {
    add("head.weight", {s.output_size, D * R}, 1.0 / std::sqrt(double(D * R)));
    add("head.bias", {s.output_size}, 1.0 / std::sqrt(double(D * R)));
  }
  return t;
}

// A complete checkpoint of s with the given tensors: metadata as fusedrnn.save writes it.
inline std::vector<unsigned char> checkpoint_of(const Spec& s, const std::vector<Tensor>& t,
                                                const std::string& user_metadata = "{}") {
  return write_safetensors(t, {{"format", "fusedrnn"},
                               {"format_version", "1"},
                               {"fusedrnn_version", "0.1.0"},
                               {"model", config_json(s)},
                               {"metadata", user_metadata}});
}

// A complete checkpoint of s with random weights (model_tensors).
inline std::vector<unsigned char> make_checkpoint(const Spec& s, std::uint64_t seed,
                                                  const std::string& user_metadata = "{}") {
  return checkpoint_of(
      s, s.float64 ? model_tensors<double>(s, seed) : model_tensors<float>(s, seed),
      user_metadata);
}

}  // namespace testutil
