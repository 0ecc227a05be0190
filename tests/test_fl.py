"""The FL protocol: FedSGD and FedAvg updates, weighting, per-client models, sampling, privacy of truth."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gialab.defenses import WeightedMean
from gialab.fl import Client, ClientUpdate, FLSetup, Protocol, ServerPlan, fedavg_update, fedsgd_update


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_fedsgd_is_the_batch_mean_gradient() -> None:
    model, (x, y) = tiny_model(), data(4)
    update = fedsgd_update(model, F.cross_entropy, x, y)
    per_sample = [fedsgd_update(model, F.cross_entropy, x[i : i + 1], y[i : i + 1]) for i in range(4)]
    for k, tensor in enumerate(update):
        assert torch.allclose(tensor, sum(g[k] for g in per_sample) / 4, atol=1e-6)


def test_fedavg_one_full_batch_step_is_lr_times_gradient() -> None:
    model, (x, y) = tiny_model(), data(4)
    grad = fedsgd_update(model, F.cross_entropy, x, y)
    delta = fedavg_update(tiny_model(), F.cross_entropy, x, y, FLSetup(algorithm="fedavg", learning_rate=0.5))
    for g, d in zip(grad, delta):
        assert torch.allclose(d, 0.5 * g, atol=1e-6)


def test_fedavg_unrolls_epochs_and_mini_batches() -> None:
    setup = FLSetup(algorithm="fedavg", local_epochs=2, local_batch_size=2, learning_rate=0.1)
    model, (x, y) = tiny_model(), data(4)
    start = [p.detach().clone() for p in model.parameters()]
    manual = tiny_model()
    for _ in range(2):
        for i in (0, 2):
            grads = fedsgd_update(manual, F.cross_entropy, x[i : i + 2], y[i : i + 2])
            with torch.no_grad():
                for p, g in zip(manual.parameters(), grads):
                    p.sub_(0.1 * g)
    delta = fedavg_update(model, F.cross_entropy, x, y, setup)
    for s, p, d in zip(start, manual.parameters(), delta):
        assert torch.allclose(d, s - p.detach(), atol=1e-6)
    assert any(d.abs().sum() > 0 for d in delta)


def test_works_for_any_model_and_loss() -> None:
    model = nn.Linear(3, 1)
    x, y = torch.rand(5, 3), torch.rand(5, 1)
    client = Client(0, x, y)
    protocol = Protocol(model, [client], FLSetup(), batch_size=5, loss_fn=F.mse_loss)
    transcript, truth = protocol.run_round()
    assert transcript.update_kind == "gradient"
    assert torch.equal(truth.batches[0].images, x)


def test_weighted_mean_counts_examples() -> None:
    a = ClientUpdate(0, 0, (torch.tensor([1.0]),), 1)
    b = ClientUpdate(1, 0, (torch.tensor([4.0]),), 3)
    assert torch.allclose(WeightedMean()([a, b])[0], torch.tensor([13.0 / 4]))


def test_server_can_send_each_client_its_own_model() -> None:
    model = tiny_model(0)
    other = tiny_model(1)
    x, y = data(4)
    clients = [Client(0, x[:2], y[:2]), Client(1, x[2:], y[2:])]
    protocol = Protocol(model, clients, FLSetup(), batch_size=2)
    transcript, truth = protocol.run_round(ServerPlan(per_client={1: other}))
    expected = fedsgd_update(tiny_model(1), F.cross_entropy, truth.batches[1].images, truth.batches[1].labels)
    for got, want in zip(transcript.updates[1].tensors, expected):
        assert torch.allclose(got, want, atol=1e-6)
    assert transcript.models[1] is not transcript.models[0]


def test_sampling_is_seeded_and_logged() -> None:
    x, y = data(20)
    def rounds(seed: int) -> list[tuple[int, ...]]:
        clients = [Client(i, x[2 * i : 2 * i + 2], y[2 * i : 2 * i + 2]) for i in range(10)]
        protocol = Protocol(tiny_model(), clients, FLSetup(clients_per_round=3), batch_size=2, seed=seed)
        for _ in range(4):
            protocol.run_round()
        return protocol.participation_log
    log = rounds(7)
    assert log == rounds(7) and log != rounds(8)
    assert all(len(p) == 3 for p in log) and len(set(log)) > 1


def test_transcript_keeps_the_model_as_sent() -> None:
    x, y = data(2)
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    protocol = Protocol(model, [Client(0, x, y)], FLSetup(learning_rate=1.0), batch_size=2)
    transcript, _ = protocol.run_round()
    after_step = list(model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after_step, before))  # the server stepped
    for sent, b in zip(transcript.models[0].parameters(), before):
        assert torch.equal(sent, b)  # the transcript still shows what was sent
