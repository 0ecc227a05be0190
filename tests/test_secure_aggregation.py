"""Secure aggregation (Bonawitz et al. 2017): exact sums, dropout recovery, masked inputs look
uniform, the server holds only ring elements, and an attacker under it sees only the aggregate."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

import gialab
import gialab.runner
from gialab.defenses import WeightedMean, resolve_defenses
from gialab.defenses.secagg_encoding import RingEncoding
from gialab.defenses.secagg_prg import SeededRandomness
from gialab.defenses.secagg_protocol import (
    AdvertisedKeys, SecAggClient, SecAggServer, UnmaskingRequest, UnmaskingResponse, run_rounds,
)
from gialab.defenses.secagg_shamir import Share
from gialab.defenses.secure_aggregation import SecureAggregation, SecureAggregationParams, secure_sum
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate

LENGTH = 2000


def _vectors(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=3.0, size=LENGTH) for _ in range(n)], [int(c) for c in rng.integers(1, 20, size=n)]


@pytest.mark.parametrize(("ring_bits", "frac_bits"), [(64, 24), (32, 12)])
@pytest.mark.parametrize(("early", "late"), [((), ()), ((3,), ()), ((), (0,)), ((1, 4), ()), ((2,), (4,))])
def test_the_sum_is_exact_up_to_quantization_with_up_to_n_minus_t_dropouts(
    ring_bits: int, frac_bits: int, early: tuple[int, ...], late: tuple[int, ...]
) -> None:
    n, t = 5, 3
    vectors, counts = _vectors(n)
    encoding = RingEncoding(ring_bits, frac_bits)
    result = secure_sum(vectors, counts, threshold=t, encoding=encoding, seed=bytes(32),
                        drop_before_masking=early, drop_before_unmasking=late)
    contributors = [i for i in range(n) if i not in early]  # late dropouts' inputs did arrive
    assert result.contributors == tuple(contributors)
    expected = sum(vectors[i] * counts[i] for i in contributors)
    error = np.abs(result.weighted_sum - expected).max()
    assert error <= encoding.quantization_bound(len(contributors)) * (1 + 1e-9)
    assert error < len(contributors) * 2.0**-frac_bits
    assert result.total_examples == sum(counts[i] for i in contributors)


@pytest.mark.parametrize(("early", "late", "stage"), [
    ((0, 1), (), "masked input collection"), ((0,), (1,), "unmasking"), ((), (2, 3, 4), "unmasking"),
])
def test_more_than_n_minus_t_dropouts_abort_with_one_line(early, late, stage) -> None:
    vectors, counts = _vectors(5)
    with pytest.raises(GialabError, match=f"aborted at {stage}: .* fewer than threshold t=4") as info:
        secure_sum(vectors, counts, threshold=4, encoding=RingEncoding(64, 24), seed=bytes(32),
                   drop_before_masking=early, drop_before_unmasking=late)
    assert "\n" not in str(info.value) and "at most n - t = 1" in str(info.value)


def _protocol(n: int, t: int, encoding: RingEncoding, length: int = LENGTH, seed: int = 0):
    rng = np.random.default_rng(seed)
    inputs = [encoding.encode(rng.normal(size=length), n) for _ in range(n)]
    clients = [
        SecAggClient(i + 1, x, threshold=t, encoding=encoding,
                     randomness=SeededRandomness(hashlib.sha256(bytes([seed, i])).digest()))
        for i, x in enumerate(inputs)
    ]
    return inputs, clients, SecAggServer(t, encoding, length)


def _uniform_pvalues(words: np.ndarray, ring_bits: int) -> tuple[float, float]:
    """KS of the values against U[0, 2^k) and chi-square of their low bytes against uniform."""
    values = words.astype(np.float64) / 2.0**ring_bits
    ks = stats.kstest(values, "uniform").pvalue
    low = (words & np.uint64(0xFF)).astype(np.int64)
    return ks, stats.chisquare(np.bincount(low, minlength=256)).pvalue


@pytest.mark.parametrize("ring_bits", [64, 32])
def test_a_single_masked_input_is_indistinguishable_from_uniform(ring_bits: int) -> None:
    encoding = RingEncoding(ring_bits, 12)
    inputs, clients, server = _protocol(4, 3, encoding, length=20000)
    run_rounds(server, clients)
    for u, masked in server.masked.items():
        ks, chi = _uniform_pvalues(masked, ring_bits)
        assert ks > 1e-3 and chi > 1e-3, (u, ks, chi)
        assert int(masked.max()) < 2**ring_bits
    # The same tests catch an unmasked (merely encoded) input at once (its high bits are all 0 or 1).
    assert min(_uniform_pvalues(inputs[0], ring_bits)) < 1e-10


def test_the_server_holds_only_ring_elements_keys_and_shares() -> None:
    encoding = RingEncoding(64, 24)
    inputs, clients, server = _protocol(5, 3, encoding)
    ring_sum = run_rounds(server, clients, drop_before_masking=[2], drop_before_unmasking=[5])
    np.testing.assert_array_equal(ring_sum, sum(inputs[i] for i in (0, 2, 3, 4)))  # exact in the ring

    allowed = (int, str, bytes, Share, AdvertisedKeys, UnmaskingResponse, RingEncoding, np.uint64)

    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, path)
                walk(v, f"{path}[{k!r}]")
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        elif isinstance(value, np.ndarray):
            assert value.dtype == np.uint64, path  # ring elements, never floats
            assert not any(np.array_equal(value, x) for x in inputs), f"{path} is a client's input"
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            walk(vars(value), path)
        else:
            assert isinstance(value, allowed) and not isinstance(value, (float, torch.Tensor)), (path, type(value))

    walk(vars(server), "server")
    assert sorted(server.masked) == [1, 3, 4, 5] and sorted(server.responses) == [1, 3, 4]


def test_a_client_never_reveals_both_masks_of_one_client() -> None:
    encoding = RingEncoding(64, 24)
    _, clients, server = _protocol(4, 3, encoding, length=10)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inboxes = server.route_shares([c.share_keys(roster) for c in clients])
    server.collect_masked_inputs([c.masked_input(inboxes[c.index]) for c in clients])
    with pytest.raises(GialabError, match="refuses to reveal both masks of clients \\[2\\]"):
        clients[0].unmask(UnmaskingRequest(survivors=(1, 2, 3, 4), dropped=(2,)))


def _updates(n: int, seed: int = 0) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    return [
        ClientUpdate(cid, 0, (torch.randn(6, 5, generator=g), torch.randn(5, generator=g)), num_examples=cid + 1)
        for cid in range(n)
    ]


def _max_error(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b, strict=True))


def test_the_aggregator_is_registered_and_withdraws_individual_updates() -> None:
    stack = resolve_defenses([{"name": "secure_aggregation", "threshold": 3, "dropouts": 1}])
    assert isinstance(stack.aggregator, SecureAggregation) and stack.aggregate_only
    assert stack.aggregator.params.dropouts == 1


def test_the_aggregate_is_the_weighted_mean_and_repeats_with_the_seed() -> None:
    updates = _updates(4)
    aggregator = SecureAggregation()
    first = aggregator(updates, torch.Generator().manual_seed(3))
    again = aggregator(updates, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    plain = WeightedMean()(updates)
    # fixed-point error of the weighted sum over the total count, plus float32 rounding of the result
    assert _max_error(first, plain) < 4 * 0.5 * 2.0**-24 / 10 + 1e-6
    assert all(a.dtype == b.dtype and a.shape == b.shape for a, b in zip(first, plain, strict=True))


@pytest.mark.parametrize(("dropouts", "late"), [(1, 0), (0, 1), (1, 1)])
def test_with_dropouts_the_aggregate_is_the_weighted_mean_over_those_whose_input_arrived(dropouts, late) -> None:
    updates = _updates(5)
    out = SecureAggregation(SecureAggregationParams(threshold=3, dropouts=dropouts, late_dropouts=late))(
        updates, torch.Generator().manual_seed(0))
    matches = [subset for subset in itertools.combinations(updates, 5 - dropouts)
               if _max_error(out, WeightedMean()(list(subset))) < 1e-6]
    assert len(matches) == 1


def test_too_many_dropouts_in_the_aggregator_are_one_line_errors() -> None:
    aggregator = SecureAggregation(SecureAggregationParams(threshold=3, dropouts=2))
    with pytest.raises(GialabError, match="fewer than threshold t=3 \\(at most n - t = 1 may drop out\\)"):
        aggregator(_updates(4), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("threshold", "message"), [
    (5, "threshold t=5 exceeds the n=4 clients of the round; use 3..4"),
    (2, "threshold t=2 is not more than half of the n=4 clients; use 3..4"),
])
def test_a_threshold_outside_half_to_n_is_refused(threshold: int, message: str) -> None:
    with pytest.raises(GialabError, match=message):
        SecureAggregation(SecureAggregationParams(threshold=threshold))(_updates(4), torch.Generator())


def test_an_update_too_large_for_the_ring_is_refused_not_wrapped() -> None:
    aggregator = SecureAggregation(SecureAggregationParams(ring_bits=32, frac_bits=16))
    updates = [dataclasses.replace(u, tensors=tuple(x * 1e4 for x in u.tensors)) for u in _updates(4)]
    with pytest.raises(GialabError, match="holds at most .* per client for 4 clients; raise ring_bits"):
        aggregator(updates, torch.Generator())


def test_under_secure_aggregation_the_attacker_sees_only_the_aggregate(out_dir, monkeypatch) -> None:
    seen = []

    def spy(transcript, truth, **kwargs):
        observation = observe(transcript, truth, **kwargs)
        seen.append((transcript, observation))
        return observation

    observe = gialab.runner.observe
    monkeypatch.setattr(gialab.runner, "observe", spy)
    result = gialab.run("cocktail-party", out=out_dir, set={
        "clients": 4, "batch_size": 1, "attack.batch_size": 4, "defenses": ["secure_aggregation"]})
    assert result.summary["defenses"] == ["secure_aggregation"]
    transcript, observation = seen[-1]
    assert observation.updates == {} and "observe_individual" not in observation.capabilities
    assert observation.aggregate is transcript.aggregate
    plain = WeightedMean()(list(transcript.updates.values()))
    assert _max_error(transcript.aggregate, plain) < 1e-6


def test_the_cli_refuses_an_attack_needing_single_updates_and_a_threshold_above_the_clients(cli, out_dir) -> None:
    result = cli("run", "fc-leakage", "--set", "clients=4", "--set", "defenses=[secure_aggregation]",
                 "--out", str(out_dir))
    assert result.code == 2 and "needs capability observe_individual" in result.err
    result = cli("run", "cocktail-party", "--set", "clients=4", "--set", "batch_size=1", "--set", "attack.batch_size=4",
                 "--set", "defenses=[{name: secure_aggregation, threshold: 5}]", "--out", str(out_dir))
    assert result.code == 2, result.err
    assert "threshold t=5 exceeds the n=4 clients" in result.err and len(result.err.strip().splitlines()) == 1
    result = cli("run", "cocktail-party", "--set",
                 "defenses=[{name: secure_aggregation, frac_bits: 40, ring_bits: 32}]", "--out", str(out_dir))
    assert result.code == 2 and "frac_bits 40 leaves no integer bits" in result.err
