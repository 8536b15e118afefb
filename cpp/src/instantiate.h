// Explicit instantiations of the kernels for one Scalar, shared by each instruction-set copy
// (in namespace fusedrnn::isa_*) and by the public dispatching functions (namespace fusedrnn).
#pragma once

#define FUSEDRNN_INSTANTIATE_LSTM(Scalar)                                                        \
  template void lstm_forward<Scalar>(const Dims&, const Options&, const Scalar*, const Scalar*,   \
                                     const Scalar*, const Scalar*, const Scalar*, const Scalar*,  \
                                     const Scalar*, const Scalar*, const Scalar*,                 \
                                     const std::int64_t*, Scalar*, Scalar*, Scalar*, Scalar*,     \
                                     Scalar*);                                                    \
  template void lstm_backward<Scalar>(const Dims&, const Options&, const Scalar*, const Scalar*,  \
                                      const Scalar*, const Scalar*, const Scalar*,                \
                                      const std::int64_t*, const Scalar*, const Scalar*,          \
                                      const Scalar*, const Scalar*, Scalar*, Scalar*, Scalar*,    \
                                      Scalar*, Scalar*, Scalar*, Scalar*, Scalar*, Scalar*,       \
                                      Scalar*);

#define FUSEDRNN_INSTANTIATE_GRU(Scalar)                                                        \
  template void gru_forward<Scalar>(const Dims&, const Options&, GruVariant, const Scalar*,     \
                                    const Scalar*, const Scalar*, const Scalar*, const Scalar*, \
                                    const Scalar*, const std::int64_t*, Scalar*, Scalar*,       \
                                    Scalar*, Scalar*);                                          \
  template void gru_backward<Scalar>(const Dims&, const Options&, GruVariant, const Scalar*,    \
                                     const Scalar*, const Scalar*, const std::int64_t*,         \
                                     const Scalar*, const Scalar*, const Scalar*, Scalar*,      \
                                     Scalar*, Scalar*, Scalar*, Scalar*, Scalar*, Scalar*);

#define FUSEDRNN_INSTANTIATE_RNN(Scalar)                                                        \
  template void rnn_forward<Scalar>(const Dims&, const Options&, Nonlinearity, const Scalar*,   \
                                    const Scalar*, const Scalar*, const Scalar*, const Scalar*, \
                                    const Scalar*, const std::int64_t*, Scalar*, Scalar*,       \
                                    Scalar*, Scalar*);                                          \
  template void rnn_backward<Scalar>(const Dims&, const Options&, Nonlinearity, const Scalar*,  \
                                     const Scalar*, const Scalar*, const std::int64_t*,         \
                                     const Scalar*, const Scalar*, const Scalar*, Scalar*,      \
                                     Scalar*, Scalar*, Scalar*, Scalar*, Scalar*, Scalar*);
