# amaranth: UnusedElaboratable=no
"""GlobalBuffer: fixed-priority grants and one-cycle read data against a Python model, random requests."""

import numpy as np
import pytest
from amaranth.lib.memory import MemoryData

from hw.core.global_buffer import GlobalBuffer
from tests.hw.stream_source import simulate

PORTS = (("ctrl", "params", "mask"), ("payload",))
DEPTH = 64


def run_random(seed: int, p_req: float, cycles: int = 300):
    assert GlobalBuffer.latency == 1  # the model below delivers a granted read's data one cycle later
    rng = np.random.default_rng(seed)
    init = [int(x) for x in rng.integers(0, 1 << 32, size=DEPTH, dtype=np.uint64)]
    dut = GlobalBuffer(MemoryData(shape=32, depth=DEPTH, init=init), ports=PORTS)
    log = {"grants": {name: 0 for port in PORTS for name in port}, "reads": 0}

    async def bench(ctx):
        pending = []  # (requester, address) granted last cycle: their data is due now
        for _ in range(cycles):
            reqs = {name: bool(rng.random() < p_req) for port in PORTS for name in port}
            addrs = {name: int(rng.integers(0, DEPTH)) for name in reqs}
            for name, req in reqs.items():
                member = getattr(dut, name)
                ctx.set(member.req, req)
                ctx.set(member.addr, addrs[name])
            # Grants are combinational: read them before the edge.
            grants = {name: ctx.get(getattr(dut, name).grant) for name in reqs}
            for requester, addr in pending:
                assert ctx.get(getattr(dut, requester).data) == init[addr], f"{requester} read of {addr}"
                log["reads"] += 1
            for port in PORTS:
                asking = [name for name in port if reqs[name]]
                want = asking[0] if asking else None
                assert [name for name in port if grants[name]] == ([want] if want else []), (port, reqs)
                # Every requester of a port sees the port's data.
                for name in port:
                    assert ctx.get(getattr(dut, name).data) == ctx.get(getattr(dut, port[0]).data)
            pending = [(name, addrs[name]) for name in reqs if grants[name]]
            for name in pending:
                log["grants"][name[0]] += 1
            await ctx.tick()

    simulate(dut, bench)
    return log


@pytest.mark.parametrize("seed, p_req", [(0, 0.5), (1, 0.2), (2, 0.9)])
def test_buffer_grants_by_priority_and_reads_after_one_cycle(seed, p_req):
    log = run_random(seed, p_req)
    assert log["reads"] > 100
    # The lowest-priority requester is served too (not starved at these request rates).
    assert log["grants"]["mask"] > 0 and log["grants"]["payload"] > 0


def test_buffer_image_can_be_replaced_before_elaboration():
    data = MemoryData(shape=32, depth=4, init=[1, 2, 3, 4])
    dut = GlobalBuffer(data, ports=(("a",),))
    data.init = [9, 8, 7, 6]

    async def bench(ctx):
        ctx.set(dut.a.req, 1)
        for addr in range(4):
            ctx.set(dut.a.addr, addr)
            await ctx.tick()
            assert ctx.get(dut.a.data) == 9 - addr

    simulate(dut, bench)


@pytest.mark.parametrize("make, error, message", [
    (lambda: GlobalBuffer([1, 2], ports=(("a",),)), TypeError, "data must be a MemoryData, not [1, 2]"),
    (lambda: GlobalBuffer(MemoryData(shape=16, depth=4, init=[]), ports=(("a",),)), ValueError,
     "data.shape must be unsigned(32), not 16"),
    (lambda: GlobalBuffer(MemoryData(shape=32, depth=1, init=[]), ports=(("a",),)), ValueError,
     "data.depth must be >= 2, not 1"),
    (lambda: GlobalBuffer(MemoryData(shape=32, depth=4, init=[]), ports=()), ValueError,
     "ports must be one or more non-empty lists of requester names, not ()"),
    (lambda: GlobalBuffer(MemoryData(shape=32, depth=4, init=[]), ports=(("a",), ())), ValueError,
     "ports must be one or more non-empty lists of requester names, not (('a',), ())"),
    (lambda: GlobalBuffer(MemoryData(shape=32, depth=4, init=[]), ports=(("a", "a"),)), ValueError,
     "requester names must be unique identifiers, not ['a', 'a']"),
    (lambda: GlobalBuffer(MemoryData(shape=32, depth=4, init=[]), ports=(("a b",),)), ValueError,
     "requester names must be unique identifiers, not ['a b']"),
])
def test_buffer_rejects_bad_parameters(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert str(info.value) == message


def test_load_port_writes_words_read_back():
    from hw.core.global_buffer import load_port_signature  # noqa: F401  (the signature the array drives)

    buf = GlobalBuffer(MemoryData(shape=32, depth=16, init=[7] * 16), ports=[["a"]], writable=True)
    writes = {3: 0xDEADBEEF, 9: 0x12345678, 15: 1}

    async def bench(ctx):
        for addr, word in writes.items():
            ctx.set(buf.load.en, 1)
            ctx.set(buf.load.addr, addr)
            ctx.set(buf.load.data, word)
            await ctx.tick()
        ctx.set(buf.load.en, 0)
        for addr in range(16):
            ctx.set(buf.a.req, 1)
            ctx.set(buf.a.addr, addr)
            await ctx.tick()
            assert ctx.get(buf.a.data) == writes.get(addr, 7), f"word {addr}"

    simulate(buf, bench)


def test_load_is_not_a_requester_name_of_a_writable_buffer():
    with pytest.raises(ValueError, match="load"):
        GlobalBuffer(MemoryData(shape=32, depth=16, init=[]), ports=[["load"]], writable=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_shared_load_port_blocks_the_first_port_only_while_it_loads(seed):
    """share_load: random loads and reads against a Python model of the memory. While a word is loaded the
    first port grants nobody (its address is the load's), the second grants as usual; every granted read
    returns the word as it stood before that cycle's load (a read of the word being loaded on the second
    port sees the old contents)."""
    rng = np.random.default_rng(seed)
    depth = 24  # not a power of two: addresses below it only (5 address bits)
    model = [int(x) for x in rng.integers(0, 1 << 32, size=depth, dtype=np.uint64)]
    ports = (("ctl", "eng0"), ("eng1",))
    dut = GlobalBuffer(MemoryData(shape=32, depth=depth, init=list(model)), ports=ports, writable=True,
                       share_load=True)
    names = [name for port in ports for name in port]
    seen = {"blocked": 0, "reads": 0, "loads": 0}

    async def bench(ctx):
        pending = []  # (requester, word expected) granted last cycle
        for _ in range(400):
            load = bool(rng.random() < 0.3)
            waddr, wdata = int(rng.integers(0, depth)), int(rng.integers(0, 1 << 32, dtype=np.uint64))
            ctx.set(dut.load.en, load)
            ctx.set(dut.load.addr, waddr)
            ctx.set(dut.load.data, wdata)
            reqs = {name: bool(rng.random() < 0.6) for name in names}
            addrs = {name: int(rng.integers(0, depth)) for name in names}
            for name in names:
                ctx.set(getattr(dut, name).req, reqs[name])
                ctx.set(getattr(dut, name).addr, addrs[name])
            grants = {name: ctx.get(getattr(dut, name).grant) for name in names}
            for requester, word in pending:
                assert ctx.get(getattr(dut, requester).data) == word, requester
                seen["reads"] += 1
            first = [n for n in ports[0] if reqs[n]]
            want0 = [] if load or not first else [first[0]]
            assert [n for n in ports[0] if grants[n]] == want0
            assert grants["eng1"] == reqs["eng1"]
            seen["blocked"] += load and bool(first)
            pending = [(n, model[addrs[n]]) for n in names if grants[n]]
            if load:
                model[waddr] = wdata
                seen["loads"] += 1
            await ctx.tick()

    simulate(dut, bench)
    assert seen["reads"] > 300 and seen["blocked"] > 50 and seen["loads"] > 80


def test_share_load_needs_a_writable_buffer():
    with pytest.raises(ValueError, match="share_load needs a writable buffer"):
        GlobalBuffer(MemoryData(shape=32, depth=16, init=[]), ports=[["a"]], share_load=True)
