import pytest
import torch

from ensemble.model import ModelConfig, TokenRNN


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lstm-ln"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_forward_equals_repeated_step(cell, layers):
    torch.manual_seed(0)
    model = TokenRNN(37, cell.removesuffix("-ln"), layers, hidden=24, embedding=8, layer_norm=cell == "lstm-ln").eval()
    tokens = torch.randint(0, 37, (3, 20))
    with torch.no_grad():
        full, full_state = model(tokens)
        state, stepped = None, []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            stepped.append(logits)
    stepped = torch.stack(stepped, dim=1)
    assert torch.allclose(full, stepped, atol=1e-5)
    for a, b in zip(full_state.tensors(), state.tensors()):
        assert torch.allclose(a, b, atol=1e-5)


def test_plain_rnn_is_elman():
    """h_t = tanh(U x_t + V h_{t-1} + b), logits = W h_t + c."""
    torch.manual_seed(1)
    model = TokenRNN(11, "rnn", 1, hidden=6, embedding=5).eval()
    r = model.rnn
    tokens = torch.tensor([[3, 7, 1, 0]])
    h = torch.zeros(6)
    expected = []
    for t in tokens[0]:
        x = model.embed.weight[t]
        h = torch.tanh(r.weight_ih_l0 @ x + r.weight_hh_l0 @ h + r.bias_ih_l0 + r.bias_hh_l0)
        expected.append(model.head.weight @ h + model.head.bias)
    with torch.no_grad():
        logits, _ = model(tokens)
    assert torch.allclose(logits[0], torch.stack(expected), atol=1e-5)


def test_layer_norm_lstm_is_what_its_docstring_says():
    """Each gate normalised on its own (mean 0, biased variance 1), then gain and shift;
    the cell normalised before its tanh; c itself kept unnormalised."""
    torch.manual_seed(3)
    H = 5
    model = TokenRNN(11, "lstm", 1, hidden=H, embedding=4, layer_norm=True).eval()
    r = model.rnn
    with torch.no_grad():
        for p in r.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    assert not hasattr(r, "bias_ih_l0")
    norm = lambda a: (a - a.mean()) / torch.sqrt(a.var(unbiased=False) + 1e-5)  # noqa: E731
    tokens = torch.tensor([[3, 7, 1, 0]])
    h, c, expected = torch.zeros(H), torch.zeros(H), []
    for t in tokens[0]:
        a = r.weight_ih_l0 @ model.embed.weight[t] + r.weight_hh_l0 @ h
        a = torch.cat([norm(a[k * H : (k + 1) * H]) for k in range(4)]) * r.ln_gates_weight_l0 + r.ln_gates_bias_l0
        i, f, g, o = a.split(H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(norm(c) * r.ln_cell_weight_l0 + r.ln_cell_bias_l0)
        expected.append(model.head.weight @ h + model.head.bias)
    with torch.no_grad():
        logits, state = model(tokens)
    assert torch.allclose(logits[0], torch.stack(expected), atol=1e-5)
    assert torch.allclose(state.c[0, 0], c, atol=1e-5)
    fresh = TokenRNN(11, "lstm", 1, hidden=H, embedding=4, layer_norm=True).rnn
    assert torch.all(fresh.ln_gates_bias_l0[H : 2 * H] == 1) and torch.all(fresh.ln_gates_bias_l0[:H] == 0)


def test_layer_norm_lstm_backward_is_the_gradient():
    """The hand-written backward (`_LayerNormLSTMLayer`) against finite differences in
    float64, with gradients flowing in through the outputs y, h_T and c_T, and against
    autograd's own through the plain step-by-step loop in float32."""
    import torch.nn.functional as F

    from ensemble.model import _LayerNormLSTMLayer

    torch.manual_seed(5)
    B, T, H = 3, 5, 4
    d = torch.double
    args = [torch.randn(B, T, 4 * H, dtype=d), torch.randn(B, H, dtype=d), torch.randn(B, H, dtype=d),
            torch.randn(4 * H, H, dtype=d) * 0.5, 1 + 0.3 * torch.randn(4, H, dtype=d), 0.3 * torch.randn(4, H, dtype=d),
            1 + 0.3 * torch.randn(H, dtype=d), 0.3 * torch.randn(H, dtype=d)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(_LayerNormLSTMLayer.apply, args)

    def loop(gx, h, c, w_hh, gain, shift, cell_gain, cell_shift):
        out = []
        for t in range(gx.shape[1]):
            a = (gx[:, t] + F.linear(h, w_hh)).view(B, 4, H)
            i, f, g, o = (F.layer_norm(a, (H,), eps=1e-5) * gain + shift).unbind(1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), cell_gain, cell_shift, 1e-5))
            out.append(h)
        return torch.stack(out, 1), h, c

    weights = [torch.randn(B, T, H), torch.randn(B, H), torch.randn(B, H)]  # a loss that reads every output
    grads = []
    for fn in (_LayerNormLSTMLayer.apply, loop):
        leaves = [a.detach().float().requires_grad_() for a in args]
        outs = fn(*leaves)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        grads.append([leaf.grad for leaf in leaves])
    for ours, autograds in zip(*grads):
        assert torch.allclose(ours, autograds, atol=1e-5, rtol=1e-4)


def test_layer_norm_dropout_only_between_layers_and_only_in_training():
    torch.manual_seed(4)
    model = TokenRNN(11, "lstm", 2, hidden=16, embedding=4, dropout=0.5, layer_norm=True)
    tokens = torch.randint(0, 11, (2, 6))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens)[0], model(tokens)[0])
    model.train()
    model.drop.p = 0.0  # the output's dropout off: what differs below is the recurrent stack's
    with torch.no_grad():
        assert not torch.equal(model(tokens)[0], model(tokens)[0])
    one = TokenRNN(11, "lstm", 1, hidden=16, embedding=4, dropout=0.5, layer_norm=True).train()
    one.drop.p = 0.0
    with torch.no_grad():  # one layer: nothing between layers to drop
        assert torch.equal(one(tokens)[0], one(tokens)[0])
    model.set_dropout(0.0)
    with torch.no_grad():
        assert torch.equal(model(tokens)[0], model(tokens)[0])


def test_state_rows_step_together_as_alone():
    torch.manual_seed(2)
    model = TokenRNN(20, "lstm", 2, hidden=8, embedding=4).eval()
    with torch.no_grad():
        _, bank = model.step(torch.tensor([5, 6, 7, 8]), model.initial_state(4))
        # stepping rows together equals stepping them alone
        together_logits, together = model.step(torch.tensor([1, 2]), bank.rows([1, 2]))
        alone_logits, alone = model.step(torch.tensor([2]), bank.rows(2))
    assert torch.allclose(together_logits[1], alone_logits[0], atol=1e-6)
    assert torch.allclose(together.rows(1).h, alone.h, atol=1e-6)
    keep = torch.tensor([True, False, True, True])
    reset = bank.reset_rows(keep)
    assert torch.all(reset.h[:, 1] == 0) and torch.equal(reset.h[:, 2], bank.h[:, 2])
    assert bank.rows([0, 3]).batch_size == 2


def test_config_validation():
    with pytest.raises(ValueError, match="layers"):
        ModelConfig(10, layers=4)
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(10, cell="transformer")
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"vocab_size": 10, "heads": 3})
    with pytest.raises(ValueError, match="lstm cell only"):
        ModelConfig(10, cell="gru", layer_norm=True)
    assert "layer_norm" not in ModelConfig(10).to_dict()  # older versions read plain models' folders
    ln = ModelConfig(10, layer_norm=True)
    assert ModelConfig.from_dict(ln.to_dict()) == ln
