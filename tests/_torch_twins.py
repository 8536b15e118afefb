"""Independent twins of the regularised / normalised LSTM written with torch operations (issue
19): a TorchScript LayerNorm-LSTM cell in the style of PyTorch's benchmarks/fastrnns
custom_lstms.LayerNormLSTMCell (both placements), and a zoneout loop around torch.nn.LSTMCell.
Used by the parity tests and by bench/lstm_ln.py."""
from typing import List, Tuple

import torch
from torch import Tensor, jit, nn


class LayerNormLSTMCell(jit.ScriptModule):
    """custom_lstms.LayerNormLSTMCell, plus haste's placement (carry_normalised=False: LN of the
    products without their own bias, a bias added, the un-normalised c carried)."""

    def __init__(self, input_size: int, hidden_size: int, carry_normalised: bool, eps: float,
                 dtype=torch.float32):
        super().__init__()
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.randn(4 * H, input_size, dtype=dtype))
        self.weight_hh = nn.Parameter(torch.randn(4 * H, H, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(4 * H, dtype=dtype))
        self.gamma_i = nn.Parameter(torch.ones(4 * H, dtype=dtype))
        self.beta_i = nn.Parameter(torch.zeros(4 * H, dtype=dtype))
        self.gamma_h = nn.Parameter(torch.ones(4 * H, dtype=dtype))
        self.beta_h = nn.Parameter(torch.zeros(4 * H, dtype=dtype))
        self.gamma_c = nn.Parameter(torch.ones(H, dtype=dtype))
        self.beta_c = nn.Parameter(torch.zeros(H, dtype=dtype))
        self.carry_normalised = carry_normalised
        self.eps = eps
        self.H = H

    @jit.script_method
    def forward(self, input: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        hx, cx = state
        G = [4 * self.H]
        igates = torch.layer_norm(torch.mm(input, self.weight_ih.t()), G, self.gamma_i,
                                  self.beta_i, self.eps)
        hgates = torch.layer_norm(torch.mm(hx, self.weight_hh.t()), G, self.gamma_h,
                                  self.beta_h, self.eps)
        gates = igates + hgates + self.bias
        ingate, forgetgate, cellgate, outgate = gates.chunk(4, 1)
        ingate = torch.sigmoid(ingate)
        forgetgate = torch.sigmoid(forgetgate)
        cellgate = torch.tanh(cellgate)
        outgate = torch.sigmoid(outgate)
        c = (forgetgate * cx) + (ingate * cellgate)
        cn = torch.layer_norm(c, [self.H], self.gamma_c, self.beta_c, self.eps)
        hy = outgate * torch.tanh(cn)
        cy = cn if self.carry_normalised else c
        return hy, (hy, cy)


class LSTMLayer(jit.ScriptModule):
    """custom_lstms.LSTMLayer: the cell unrolled over the steps."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    @jit.script_method
    def forward(self, input: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        inputs = input.unbind(0)
        outputs = jit.annotate(List[Tensor], [])
        for i in range(len(inputs)):
            out, state = self.cell(inputs[i], state)
            outputs += [out]
        return torch.stack(outputs), state


def zoneout_lstm(cell: nn.LSTMCell, x, h, c, zh, zc):
    """Zoneout (Krueger et al.) around torch.nn.LSTMCell: h_t = z_h h + (1 - z_h) h̃,
    c_t = z_c c + (1 - z_c) c̃, masks [T, N, H] (training) or probabilities (evaluation)."""
    ys = []
    for t in range(x.shape[0]):
        ht, ct = cell(x[t], (h, c))
        a = zh[t] if torch.is_tensor(zh) and zh.dim() == 3 else zh
        b = zc[t] if torch.is_tensor(zc) and zc.dim() == 3 else zc
        h = a * h + (1 - a) * ht
        c = b * c + (1 - b) * ct
        ys.append(h)
    return torch.stack(ys), h, c


class LayerNormGRUCell(jit.ScriptModule):
    """haste's LayerNormGRU cell in TorchScript (reset_after): LN of the input and of the
    recurrent product (gains and biases of their own), then the biases b_ih, b_hh, the recurrent
    bias inside the reset product as torch.nn.GRUCell's."""

    def __init__(self, input_size: int, hidden_size: int, eps: float, dtype=torch.float32):
        super().__init__()
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.randn(3 * H, input_size, dtype=dtype))
        self.weight_hh = nn.Parameter(torch.randn(3 * H, H, dtype=dtype))
        self.bias_ih = nn.Parameter(torch.randn(3 * H, dtype=dtype))
        self.bias_hh = nn.Parameter(torch.randn(3 * H, dtype=dtype))
        self.gamma_i = nn.Parameter(torch.ones(3 * H, dtype=dtype))
        self.beta_i = nn.Parameter(torch.zeros(3 * H, dtype=dtype))
        self.gamma_h = nn.Parameter(torch.ones(3 * H, dtype=dtype))
        self.beta_h = nn.Parameter(torch.zeros(3 * H, dtype=dtype))
        self.eps = eps
        self.H = H

    @jit.script_method
    def forward(self, input: Tensor, hx: Tensor) -> Tensor:
        G = [3 * self.H]
        gi = torch.layer_norm(torch.mm(input, self.weight_ih.t()), G, self.gamma_i,
                              self.beta_i, self.eps) + self.bias_ih
        gh = torch.layer_norm(torch.mm(hx, self.weight_hh.t()), G, self.gamma_h,
                              self.beta_h, self.eps) + self.bias_hh
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * hx


class GRULayer(jit.ScriptModule):
    """The GRU cell unrolled over the steps."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    @jit.script_method
    def forward(self, input: Tensor, h: Tensor) -> Tuple[Tensor, Tensor]:
        inputs = input.unbind(0)
        outputs = jit.annotate(List[Tensor], [])
        for i in range(len(inputs)):
            h = self.cell(inputs[i], h)
            outputs += [h]
        return torch.stack(outputs), h


def zoneout_gru(cell: nn.GRUCell, x, h, zh):
    """Zoneout around torch.nn.GRUCell: h_t = z_h h + (1 - z_h) h̃ (zh: a mask [T, N, H] or
    the probability, the evaluation expectation)."""
    ys = []
    for t in range(x.shape[0]):
        z = zh[t] if isinstance(zh, torch.Tensor) else zh
        h = z * h + (1 - z) * cell(x[t], h)
        ys.append(h)
    return torch.stack(ys), h
