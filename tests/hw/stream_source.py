"""A cycle-by-cycle stream driver for Amaranth-simulator tests, shared by the hardware block tests."""


class Source:
    """Offers ``items`` on a stream, with a random number of idle cycles before each (seeded).

    Call :meth:`drive` before each ``ctx.tick()`` and :meth:`update` with the sampled ``valid`` and
    ``ready`` after it.
    """

    def __init__(self, port, items, rng, p_gap):
        self.port, self.items, self.rng, self.p_gap = port, list(items), rng, p_gap
        self.pos, self.gap = 0, self._draw()

    def _draw(self):
        gap = 0
        while self.rng.random() < self.p_gap:
            gap += 1
        return gap

    def drive(self, ctx):
        offer = self.gap == 0 and self.pos < len(self.items)
        ctx.set(self.port.valid, offer)
        if offer:
            ctx.set(self.port.payload, self.items[self.pos])

    def update(self, valid, ready):
        if valid and ready:
            self.pos += 1
            self.gap = self._draw()
        elif self.gap:
            self.gap -= 1
