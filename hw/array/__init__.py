"""The packed multiplier array (``docs/array_design.md``): engines of DSP48E1 segment lanes that broadcast
decoded weights of a version 3 image over a tile of output pixels, and the blocks around them."""
