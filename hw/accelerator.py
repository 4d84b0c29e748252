"""The accelerator: runs a packed mixed-precision network from its global buffer, ``batch`` images at a time.

It is composed of named components joined with ``wiring.connect`` (each is tested on its own in
tests/hw/core/)::

                       +--> sequencer (header, descriptors; issues jobs) --- load / run / emit jobs ---+
    GlobalBuffer ------+--> engine fetchers (params, mask: port A after the sequencer; payload: port B)|
    (image, BRAM)                                                                                      v
    i --> InputLoader --> ActivationBank (2 ping-pong buffers, a lane per image) <--> LayerEngine
                                                                                       |  (decoder, MacLane,
                                                             ScoreStreamer <-----------+   requantizer)
                                                             (score memory) --> o

* :class:`~hw.core.global_buffer.GlobalBuffer`: the image words, two read ports shared by priority;
* :class:`~hw.core.sequencer.LayerSequencer`: reads the header and each layer's descriptor at run time
  (docs/image_format.md, typed by the field table of model/export/format.py), so one bitstream runs any image
  that fits its memories, DoReFa and signed layers alike; it loads a batch, runs the layers ping-ponging
  between the activation buffers, and streams the scores;
* :class:`~hw.core.loader.InputLoader`: ``batch`` images' codes from ``i`` into activation buffer 0;
* :class:`~hw.core.activations.ActivationBank`: the two activation buffers;
* :class:`~hw.core.engine.LayerEngine`: the datapath of one layer (fetchers, weight decoder, packed DSP48E1
  MAC lane, requantizer); a different datapath with the same ports can replace it;
* :class:`~hw.core.scores.ScoreStreamer`: the last layer's scores, out of ``o`` image by image.

A corrupt image (one that bypassed ``model.export.image.unpack``, e.g. loaded into :attr:`Accelerator.image`
after construction) stops the core with ``error`` high and ``error_code`` saying why
(:class:`~hw.core.job.ErrorCode`); the core then takes no more input and sends no more scores until reset. One
field it does not check: a requant multiplier ``M`` past 17 bits (the reader refuses it) runs with its low 17
bits (``hw/core/requant.py``; the array ends such a run with BAD_STREAM).
"""

from amaranth import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import MemoryData
from amaranth.lib.wiring import In, Out, connect, flipped
from amaranth.utils import ceil_log2

from hw.core.activations import ActivationBank
from hw.core.engine import LayerEngine
from hw.core.global_buffer import GlobalBuffer
from hw.core.job import ErrorCode
from hw.core.loader import InputLoader
from hw.core.mac_lane import check_lane_batch
from hw.core.scores import OUTPUT_LAYOUT, ScoreStreamer
from hw.core.sequencer import LayerSequencer
from model.errors import UserError
from model.export.format import WORD_BITS
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN
from model.export.image import MASK_VERSION, unpack

#: Read ports of the global buffer and their requesters, by priority: the sequencer reads only while the
#: engine is idle; the parameter fetcher needs a word per three outputs' worth of weights, the mask
#: fetcher at most one a cycle; the payload bit stream has a port of its own.
BUFFER_PORTS = (("sequencer", "params", "mask"), ("payload",))


class Accelerator(wiring.Component):
    """Mixed-precision network accelerator with the image in its global buffer.

    Parameters
    ----------
    image : sequence of int
        The packed image words (model/export/image.py); they initialise the global buffer.
    buffer_depth : int or None
        Global buffer depth in words (a power of two); default: the image rounded up.
    act_depth : int or None
        Depth of each activation buffer; default: the widest layer of the image, rounded up to a power
        of two. Any image whose layers fit these depths runs on the same hardware.
    batch : int
        Images computed together (1, or even up to 16): each decoded weight multiplies all of them on
        packed DSP48E1 lanes (hw/core/mac_lane.py). The input stream must carry a multiple of ``batch``
        images; a host pads the last group.

    Members
    -------
    i : In(stream.Signature(unsigned(8)))
        Input activation codes of one image after another, ``n_in`` of layer 0 each.
    o : Out(stream.Signature(OUTPUT_LAYOUT))
        Class scores (``2^-8`` units, model/export/golden.py), ``last`` on the final class of an image.
    error : Out(1)
        The core stopped on a corrupt image (sticky until reset; see the module docstring).
    error_code : Out(ErrorCode)
        Why (``NONE`` while ``error`` is low).

    Raises
    ------
    ValueError
        For a depth that is not a power of two or too small, or an unsupported ``batch``.
    """

    def __init__(self, image, *, buffer_depth: int | None = None, act_depth: int | None = None,
                 batch: int = 1):
        words = [int(w) for w in image]
        net = unpack(words, where="accelerator image")
        if words[1] > MASK_VERSION:
            raise UserError(f"accelerator image: field 'version' is {words[1]}; this core reads versions 1 and"
                            f" {MASK_VERSION} (fully connected; model.export.image.core_words packs them)")
        widest = max(max(layer.n_in, layer.n_out) for layer in net.layers)
        if buffer_depth is None:
            buffer_depth = 1 << ceil_log2(max(len(words), 2))
        if act_depth is None:
            act_depth = 1 << ceil_log2(max(widest, 2))
        if buffer_depth & (buffer_depth - 1) or buffer_depth < len(words):
            raise ValueError(f"buffer_depth must be a power of two >= {len(words)} words, not {buffer_depth!r}")
        if act_depth & (act_depth - 1) or act_depth < widest or act_depth > MAX_FAN_IN:
            raise ValueError(f"act_depth must be a power of two in [{widest}, {MAX_FAN_IN}], not {act_depth!r}")
        check_lane_batch(batch)
        self._batch = batch
        self._net = net
        self._image = MemoryData(shape=WORD_BITS, depth=buffer_depth, init=words)
        self._act_depth = act_depth
        super().__init__({
            "i": In(stream.Signature(unsigned(MAX_ACT_BITS))),
            "o": Out(stream.Signature(OUTPUT_LAYOUT)),
            "error": Out(1),
            "error_code": Out(ErrorCode),
        })

    @property
    def network(self):
        """The integer network the image holds (what the golden model runs)."""
        return self._net

    @property
    def image(self) -> MemoryData:
        """The global buffer's contents. Its ``init`` may be replaced before elaboration by another image
        that fits the same depths; the hardware checks what it reads, not ``unpack``."""
        return self._image

    @property
    def batch(self) -> int:
        """Images computed together; the input stream must carry a multiple of ``batch`` images."""
        return self._batch

    @property
    def buffer_depth(self) -> int:
        return self._image.depth

    @property
    def act_depth(self) -> int:
        return self._act_depth

    def elaborate(self, platform):
        m = Module()
        batch, depth = self._batch, self._act_depth
        m.submodules.buffer = buffer = GlobalBuffer(self._image, ports=BUFFER_PORTS)
        m.submodules.sequencer = sequencer = LayerSequencer(addr_width=buffer.addr_width, act_depth=depth)
        m.submodules.loader = loader = InputLoader(batch=batch, depth=depth)
        m.submodules.acts = acts = ActivationBank(batch=batch, depth=depth)
        m.submodules.engine = engine = LayerEngine(batch=batch, addr_width=buffer.addr_width, act_depth=depth)
        m.submodules.scores = scores = ScoreStreamer(batch=batch, depth=depth)

        connect(m, sequencer=sequencer.bus, buffer=buffer.sequencer)
        connect(m, engine=engine.param_bus, buffer=buffer.params)
        connect(m, engine=engine.mask_bus, buffer=buffer.mask)
        connect(m, engine=engine.payload_bus, buffer=buffer.payload)
        connect(m, sequencer=sequencer.load, loader=loader.ctl)
        connect(m, sequencer=sequencer.run, engine=engine.ctl)
        connect(m, sequencer=sequencer.emit, scores=scores.ctl)
        connect(m, accelerator=flipped(self.i), loader=loader.i)
        connect(m, loader=loader.write, acts=acts.load)
        connect(m, engine=engine.acts, acts=acts.read)
        connect(m, engine=engine.act_write, acts=acts.write)
        connect(m, engine=engine.scores, scores=scores.write)
        connect(m, scores=scores.o, accelerator=flipped(self.o))
        m.d.comb += [self.error.eq(sequencer.error), self.error_code.eq(sequencer.error_code)]
        return m
