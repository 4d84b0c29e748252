"""bench export on a small network: rows, the round trip it checks, and its floor."""

from model.bench.export import MIXES, PACK_SECONDS, floors, measure, random_network, run_export_bench


def test_measure_reports_the_memory_of_a_small_network():
    row = measure("ticket", sizes=(40, 30, 5))
    assert row["weights"] == 40 * 30 + 30 * 5 and row["mix"] == "ticket"
    assert row["bytes"] % 4 == 0 and row["seconds"] > 0 and row["unpack_seconds"] > 0
    assert row["payload_bytes"] + row["metadata_bytes"] + row["param_bytes"] == row["bytes"]
    assert row["metadata_bits_per_weight"] == 8 * row["metadata_bytes"] / row["weights"]


def test_result_and_floor():
    result = run_export_bench(sizes=(20, 10, 3), progress=False)
    assert [r["mix"] for r in result["mixes"]] == list(MIXES)
    assert result["weights"] == result["mixes"][0]["weights"] == 230
    # The floor on set times (the measured one is the bench's to judge, not a test's).
    assert floors({**result, "seconds": PACK_SECONDS - 1})["pack_seconds"]["holds"]
    assert not floors({**result, "seconds": PACK_SECONDS + 1})["pack_seconds"]["holds"]


def test_random_network_draws_the_mix():
    net = random_network(MIXES["ticket"], sizes=(400, 300, 2))
    widths = net.layers[0].widths
    assert abs((widths == 0).mean() - 0.6) < 0.01 and abs((widths == 4).mean() - 0.33) < 0.01
