"""Status codes of the array: why a run stopped (``status`` after ``done``).

The array reads the image's header and each layer's descriptor at run time (any image that fits the
buffers runs on the same bitstream) and refuses, with one of these codes, what it cannot run; it never hangs
on a bad image: a refused image ends the run (``done``) with its code, and a corrupt weight stream stops the
row decoders (their sticky ``error``) and ends the run with :attr:`Status.BAD_STREAM`. After an error the
array must be reset before the next run (the decoders' error is sticky).
"""

from amaranth.lib import enum


class Status(enum.Enum, shape=4):
    OK = 0
    #: Header word 0 is not ``MAGIC``.
    BAD_MAGIC = 1
    #: Header word 1 is not version 3 or 4 (the array reads the layer descriptors of versions 3 and 4).
    BAD_VERSION = 2
    #: A header or descriptor field this array cannot run: a map wider than a buffer word or than a tile,
    #: more rows than a buffer, a stride other than 1 or 2, a pool past 2 (1 is none), a fan-in past the patch,
    #: more channels than the channel tags, a buffer index out of range, a layer's ``in_bits`` other than the
    #: previous layer's ``out_bits`` (the header's ``input_bits`` for layer 0), a layer's ``in_buf``, ``c_in``,
    #: ``in_height`` or ``in_width`` other than the buffer and the map as stored the previous layer wrote (buffer
    #: 0 and the header's map for layer 0), a header map 256 or more rows high, a fan-in past ``MAX_FAN_IN``,
    #: a pooled FC past golden's bounds 9 or 6 (its input sums past 16 bits, its activation mass past
    #: ``ACT_SUM_BOUND``), layer kinds out of a network's order (a conv net's FC before its last layer, a conv as
    #: the scoring layer; a conv, a global pool or a map past 1 x 1 in an MLP), a version 3 layer's regions
    #: elsewhere than the format puts them (records, row pointers and stream after the descriptors and each
    #: other, the last stream ending at the header's ``words``), or fields that contradict each other.
    BAD_GEOMETRY = 3
    #: A row decoder found a corrupt weight stream (``hw/core/stream_decoder.py``: among its checks, a row whose
    #: decode does not end exactly at the next row pointer, or ``stream_bits``), a vertical layer's
    #: fields its plane decoder cannot run (``hw/array/plane_decoder.py``), or a row's requant record holds a
    #: multiplier ``M`` or ``M_r`` past ``MULT_BITS`` bits (outside the integer contract; the row command holds
    #: 17 bits and would run it truncated).
    BAD_STREAM = 4
    #: A version 4 (vertical) image run at a width it does not store: ``precision`` outside its widths, a
    #: ``table_row`` past its Eq. 12 table or a table width outside them, or no requant group for a layer's
    #: pair of code widths.
    BAD_PRECISION = 5
